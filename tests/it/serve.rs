//! The real binary over real HTTP on 127.0.0.1:0.

use super::support::{Daemon, build_bundle, file_digests, post_search, run, sample_items};

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_over_http_and_leaves_the_bundle_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let before = file_digests(&bundle);
    let state = dir.path().join("state");
    // The config file sets everything; the --listen flag overrides its listen key.
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "bundle = {:?}\nstate-dir = {:?}\nlisten = \"127.0.0.1:1\"\nreader-shards = 3\n",
            bundle.to_str().unwrap(),
            state.to_str().unwrap()
        ),
    )
    .unwrap();
    let client = reqwest::Client::new();
    for round in 0..2 {
        let daemon = Daemon::start(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        daemon.wait_ready(&client).await;
        let response = client
            .post(format!("{}/search", daemon.url))
            .json(&serde_json::json!({"query_text": "espresso crema", "top_k": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-data-version"], "0");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["results"][0]["id"], "kit-1", "round {round}");
        assert_eq!(body["results"][0]["metadata"], sample_items()[4]);
        let status = daemon.status(&client).await;
        assert_eq!(status["n_items"], 6);
        let exit = daemon.terminate();
        assert!(
            exit.success(),
            "SIGTERM must stop the daemon cleanly, got {exit:?}"
        );
    }
    // One version was made on the first start and reused on the second; reader clones are gone.
    assert_eq!(
        std::fs::read_dir(state.join("versions")).unwrap().count(),
        1
    );
    assert_eq!(std::fs::read_dir(state.join("readers")).unwrap().count(), 0);
    assert_eq!(
        file_digests(&bundle),
        before,
        "the baked bundle must never change"
    );
}

#[test]
fn config_errors_name_the_key_or_flag() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "bundel = \"/x\"\n").unwrap();
    let output = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bundel") && stderr.contains(config.to_str().unwrap()),
        "{stderr}"
    );

    let output = run(&["serve", "--state-dir", "/tmp/x"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("no bundle: pass --bundle"));

    let output = run(&[
        "serve",
        "--bundle",
        dir.path().to_str().unwrap(),
        "--state-dir",
        dir.path().join("s").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("manifest.json"),
        "a directory that is not a bundle is refused by name"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_its_built_in_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    let (_, body) = post_search(
        &client,
        &daemon.url,
        serde_json::json!({"query_text": "fast key value database", "top_k": 3}),
    )
    .await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        results
            .iter()
            .all(|r| r["metadata"]["category"] == "database"),
        "{body}"
    );
    let item: serde_json::Value = client
        .get(format!("{}/items/demo-0001", daemon.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(item["id"], "demo-0001");
    assert!(daemon.terminate().success());
}

/// `/metrics` counts the words of queries the model knows and those it does not (stop
/// words are neither), which is what tells an operator to roll the model.
#[tokio::test(flavor = "multi_thread")]
async fn query_words_outside_the_vocabulary_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let daemon = super::support::serve_local(&bundle, &dir.path().join("state"));
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    for query in ["espresso crema", "the quantum walrus espresso"] {
        let (status, _) = post_search(
            &client,
            &daemon.url,
            serde_json::json!({"query_text": query}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let count = |vocabulary: &'static str| {
        let series = format!("deltacache_query_terms_total{{vocabulary=\"{vocabulary}\"}}");
        let (daemon, client) = (&daemon, &client);
        async move { daemon.metric(client, &series).await }
    };
    assert_eq!(count("known").await, 3.0);
    assert_eq!(count("unknown").await, 2.0);
}

/// `/metrics` gives every metric a `# HELP` line (what `promtool check metrics` asks), says
/// the daemon is ready, reports the room on the state dir's filesystem, and exports the
/// counters alerts watch at 0 before anything happened.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_describe_themselves_and_report_readiness_and_the_state_dir_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let daemon = super::support::serve_local(&bundle, &dir.path().join("state"));
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    let text = client
        .get(format!("{}/metrics", daemon.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let types: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(types.len() > 5, "{text}");
    for name in &types {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "{name} has no HELP line:\n{text}"
        );
    }
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(value("deltacache_ready"), 1.0);
    assert_eq!(value("deltacache_join_misses_total"), 0.0);
    let available = value("deltacache_state_dir_filesystem_available_bytes");
    let size = value("deltacache_state_dir_filesystem_size_bytes");
    assert!(
        available > 0.0 && available <= size,
        "{available} of {size}"
    );
    // Without a delta store there is no sync to count.
    assert!(!text.contains("deltacache_sync_failures_total"), "{text}");
}

/// Runs `serve` with `args` (and `env`) to its exit, which must be a refusal: returns stdout
/// and stderr.
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> (String, String) {
    let output = std::process::Command::new(super::support::binary())
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!output.status.success(), "serve {args:?} was not refused");
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_missing_bundle_or_a_locked_state_dir_is_refused_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let missing = dir.path().join("no-bundle");
    let serve = |bundle: &std::path::Path| {
        serve_refused(
            &[
                "--bundle",
                bundle.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            &[],
        )
    };
    let (stdout, stderr) = serve(&missing);
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        stderr.contains("no-bundle/manifest.json")
            && stderr.contains("a bundle written by build-base"),
        "{stderr}"
    );
    let bundle = build_bundle(dir.path(), &sample_items());
    let daemon = super::support::serve_local(&bundle, &state);
    let (stdout, stderr) = serve(&bundle);
    assert!(!stdout.contains("listening on"), "{stdout}");
    assert!(
        stderr.contains("another deltacache process is using it") && stderr.contains("--state-dir"),
        "{stderr}"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn a_follow_interval_under_the_floor_is_refused_from_flag_environment_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let state = dir.path().join("state");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "follow-interval = \"0s\"\n").unwrap();
    let base = [
        "--bundle",
        bundle.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--store",
        "file:///nonexistent-store",
        "--trusted-root",
        "/nonexistent-root.json",
    ];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }
    for (args, env, source) in [
        (
            with(&base, &["--follow-interval", "0s"]),
            vec![],
            "--follow-interval is 0s",
        ),
        (
            with(&base, &[]),
            vec![("DELTACACHE_FOLLOW_INTERVAL", "500ms")],
            "DELTACACHE_FOLLOW_INTERVAL is 500ms",
        ),
        (
            with(&base, &["--config", config.to_str().unwrap()]),
            vec![],
            "`follow-interval` in",
        ),
    ] {
        let (stdout, stderr) = serve_refused(&args, &env);
        assert!(!stdout.contains("listening on"), "{stdout}");
        assert!(
            stderr.contains(source)
                && stderr.contains("under the floor of 1s")
                && stderr.contains("1s or more"),
            "{source}: {stderr}"
        );
    }
    assert!(!state.exists(), "nothing was touched");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sync_failure_fail_exits_without_claiming_to_serve() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let trust = super::support::Trust::new(dir.path());
    let store = format!("file://{}", dir.path().join("store").display());
    let remote = deltacache::delta_store::RemoteSettings::default();
    trust.init_store(&store, &remote).await;
    super::support::publish_changes(
        &dir.path().join("changes.jsonl"),
        &store,
        &trust.key,
        &bundle,
        remote,
        &[serde_json::json!({"op": "put", "item": {"id": "n", "text": "new item", "category": "x"}})],
    )
    .await;
    // A bundle of another dataset: its boot-time sync is refused.
    let other_dir = tempfile::tempdir().unwrap();
    let input = other_dir.path().join("items.jsonl");
    super::support::write_jsonl(&input, &sample_items());
    let other = other_dir.path().join("bundle");
    assert!(
        run(&[
            "build-base",
            "--input",
            input.to_str().unwrap(),
            "--out",
            other.to_str().unwrap()
        ])
        .status
        .success()
    );
    let state = dir.path().join("state");
    let (_, stderr) = serve_refused(
        &[
            "--bundle",
            other.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--trusted-root",
            trust.root.to_str().unwrap(),
            "--on-sync-failure",
            "fail",
        ],
        &[("RUST_LOG", "info")],
    );
    assert!(
        stderr.contains("--on-sync-failure is fail: exiting without serving")
            && stderr.contains("`build-base --dataset sample`")
            && !stderr.contains("last good")
            && !stderr.contains("keeps serving")
            && !stderr.contains("still serving"),
        "{stderr}"
    );
}
