//! Log formats: `--log-format json` (and `log-format` in the config file, and
//! `DELTACACHE_LOG_FORMAT`) writes only JSON lines on stderr, and a request's lines carry the
//! request id that the answer echoes in `x-request-id`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::support::{Daemon, build_bundle, run, sample_items};

/// A daemon started with `args` at `RUST_LOG=info` (one line per request), and its stderr
/// lines as they come.
fn start_logging(args: &[&str], env: &[(&'static str, String)]) -> (Daemon, Receiver<String>) {
    let mut command = Daemon::command(args, env);
    command.env("RUST_LOG", "info").stderr(Stdio::piped());
    let (mut daemon, _) = Daemon::spawn(command);
    let stderr = daemon.child.stderr.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    (daemon, received)
}

/// Reads lines until one contains `needle` (bounded by a deadline); returns every line read.
fn lines_until(received: &Receiver<String>, needle: &str, seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = received
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line with {needle:?}; lines so far: {seen:#?}"));
        seen.push(line.clone());
        if line.contains(needle) {
            return line;
        }
    }
}

/// Every line is one JSON object with a timestamp, level, target and `fields.message`.
fn assert_json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    assert!(!lines.is_empty(), "no log line at all");
    lines
        .iter()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            for key in ["timestamp", "level", "target"] {
                assert!(value[key].is_string(), "no {key} in {line}");
            }
            assert!(
                value["timestamp"]
                    .as_str()
                    .unwrap()
                    .parse::<jiff::Timestamp>()
                    .is_ok(),
                "timestamp is not RFC 3339: {line}"
            );
            assert!(
                value["fields"]["message"].is_string(),
                "no fields.message in {line}"
            );
            value
        })
        .collect()
}

async fn search(client: &reqwest::Client, url: &str, request_id: Option<&str>) -> String {
    let mut request = client
        .post(format!("{url}/search"))
        .json(&serde_json::json!({"query_text": "espresso crema", "top_k": 2}));
    if let Some(id) = request_id {
        request = request.header("x-request-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_json_lines_and_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let state = dir.path().join("state");
    let (daemon, received) = start_logging(
        &[
            "serve",
            "--log-format",
            "json",
            "--bundle",
            bundle.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let client = reqwest::Client::new();
    daemon.wait_ready(&client).await;
    let mut seen = Vec::new();

    // A client's id is kept, echoed and logged with the request.
    let sent = "client-chosen-id-7f3a";
    assert_eq!(search(&client, &daemon.url, Some(sent)).await, sent);
    let line = lines_until(&received, sent, &mut seen);
    let logged: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(logged["span"]["request_id"], sent, "{line}");
    assert_eq!(logged["span"]["name"], "request", "{line}");
    assert_eq!(logged["span"]["uri"], "/search", "{line}");
    assert_eq!(logged["span"]["method"], "POST", "{line}");
    assert_eq!(logged["fields"]["status"], 200, "{line}");

    // Without one, the daemon makes one: a per-process prefix and a counter, distinct per
    // request.
    let made = search(&client, &daemon.url, None).await;
    let again = search(&client, &daemon.url, None).await;
    assert_ne!(made, again);
    let (prefix, _) = made.split_once('-').expect("PREFIX-COUNTER");
    assert_eq!(prefix.len(), 16, "{made}");
    assert!(again.starts_with(prefix), "{made} then {again}");
    let line = lines_until(&received, &again, &mut seen);
    assert!(
        line.contains(&format!("\"request_id\":\"{again}\"")),
        "{line}"
    );

    let exit = daemon.terminate();
    assert!(exit.success(), "{exit:?}");
    seen.extend(received.iter());
    let values = assert_json_lines(&seen);
    assert!(
        values.iter().any(|v| v["level"] == "INFO"),
        "no INFO line: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_format_is_a_config_key_and_the_flag_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = build_bundle(dir.path(), &sample_items());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "bundle = {:?}\nstate-dir = {:?}\nlog-format = \"json\"\n",
            bundle.to_str().unwrap(),
            dir.path().join("state").to_str().unwrap()
        ),
    )
    .unwrap();
    let client = reqwest::Client::new();
    for (flag, json) in [(None, true), (Some("text"), false)] {
        let mut args = vec![
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        if let Some(format) = flag {
            args.extend(["--log-format", format]);
        }
        let (daemon, received) = start_logging(&args, &[]);
        daemon.wait_ready(&client).await;
        let id = search(&client, &daemon.url, None).await;
        let mut seen = Vec::new();
        lines_until(&received, &id, &mut seen);
        assert!(daemon.terminate().success());
        seen.extend(received.iter());
        if json {
            assert_json_lines(&seen);
        } else {
            assert!(
                seen.iter().all(|line| !line.starts_with('{')),
                "--log-format text must win over the config file's json: {seen:#?}"
            );
            assert!(
                seen.iter()
                    .any(|line| line.contains(&format!("request_id={id}"))),
                "text lines carry the request id too: {seen:#?}"
            );
        }
    }
}

#[test]
fn a_bad_log_format_is_refused_naming_the_flag_or_key_and_the_choices() {
    let output = run(&[
        "--log-format",
        "xml",
        "status",
        "--state-dir",
        "/nonexistent",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--log-format") && stderr.contains("text, json"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "log-format = \"xml\"\n").unwrap();
    let output = run(&["serve", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("log-format")
            && stderr.contains("`text`")
            && stderr.contains("`json`")
            && stderr.contains(config.to_str().unwrap()),
        "{stderr}"
    );
}

/// With JSON logs, even the error that ends a command is a JSON line.
#[test]
fn the_final_error_is_a_json_line_under_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(crate::support::binary())
        .args(["status", "--state-dir"])
        .arg(dir.path().join("missing"))
        .env("DELTACACHE_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<String> = stderr.lines().map(str::to_owned).collect();
    let values = assert_json_lines(&lines);
    let last = values.last().unwrap();
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{stderr}"
    );
}
