//! `build-base` through the real binary: a good build, and every kind of bad input refused
//! with the line number and no bundle left behind.

use super::support::{run, sample_items, write_jsonl};

fn check_refused(name: &str, input: &str, expected_fragments: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.jsonl");
    std::fs::write(&path, input).unwrap();
    let out = dir.path().join("bundle");
    let output = run(&[
        "build-base",
        "--input",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{name}: build succeeded");
    for fragment in expected_fragments {
        assert!(
            stderr.contains(fragment),
            "{name}: {stderr:?} lacks {fragment:?}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "items.jsonl")
        .collect();
    assert!(leftovers.is_empty(), "{name}: left {leftovers:?} behind");
}

#[test]
fn bad_input_is_refused_with_line_numbers_and_leaves_nothing() {
    let good = r#"{"id":"a","text":"alpha beta"}"#;
    check_refused(
        "malformed",
        &format!("{good}\n{{not json\n"),
        &["line 2", "not a JSON object"],
    );
    check_refused(
        "missing id",
        &format!("{good}\n{{\"text\":\"x\"}}\n"),
        &["line 2", "missing id field \"id\""],
    );
    check_refused(
        "numeric id",
        "{\"id\":3,\"text\":\"x\"}\n",
        &["line 1", "non-empty string"],
    );
    check_refused(
        "missing text",
        &format!("{good}\n\n{{\"id\":\"b\"}}\n"),
        &["line 3", "missing text field"],
    );
    check_refused(
        "duplicate",
        &format!("{good}\n{good}\n"),
        &["line 2", "duplicate id \"a\"", "first on line 1"],
    );
    check_refused("empty", "", &["holds no items"]);
    check_refused(
        "only stop words",
        r#"{"id":"a","text":"the and of"}"#,
        &["empty vocabulary"],
    );
}

#[test]
fn existing_output_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("items.jsonl");
    write_jsonl(&input, &sample_items());
    let out = dir.path().join("bundle");
    std::fs::create_dir(&out).unwrap();
    let output = run(&[
        "build-base",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
}

#[test]
fn good_build_writes_a_verifiable_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("catalogue.jsonl");
    write_jsonl(&input, &sample_items());
    let out = dir.path().join("bundle");
    let output = run(&[
        "build-base",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--seq",
        "7",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bundle = deltacache::bundle::Bundle::open(&out).unwrap();
    assert_eq!(bundle.manifest.dataset, "catalogue");
    assert_eq!(bundle.manifest.seq, 7);
    assert_eq!(bundle.manifest.n_items, 6);
    assert!(
        bundle
            .manifest
            .files
            .keys()
            .any(|f| f.starts_with("db/") && f.ends_with(".ldb"))
    );
    bundle.verify_files().unwrap();
    // Flipping one byte of a table is caught by the digest check.
    let table = bundle
        .manifest
        .files
        .keys()
        .find(|f| f.ends_with(".ldb"))
        .unwrap();
    let path = out.join(table);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let error = format!("{:#}", bundle.verify_files().unwrap_err());
    assert!(
        error.contains(table) && error.contains("does not match its manifest"),
        "{error}"
    );
}

/// Runs `build-base` on `items` written to `dir/input_name`, into `dir/bundle`, with `extra`.
fn build_named(
    dir: &std::path::Path,
    input_name: &str,
    items: &[serde_json::Value],
    extra: &[&str],
) -> (std::process::Output, std::path::PathBuf) {
    let input = dir.join(input_name);
    write_jsonl(&input, items);
    let out = dir.join("bundle");
    let mut args = vec![
        "build-base",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    (run(&args), out)
}

fn manifest(bundle: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_dated_input_name_is_not_taken_as_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let (output, out) = build_named(dir.path(), "items-2026-12-02.jsonl", &sample_items(), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a dated stem became the dataset");
    assert!(
        stderr.contains("\"items-2026-12-02\" holds a number")
            && stderr.contains("--dataset items"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is left behind");
    let (output, out) = build_named(
        dir.path(),
        "items-2026-12-02.jsonl",
        &sample_items(),
        &["--dataset", "items"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(manifest(&out)["dataset"], "items");
    // A stem without digits is still a default.
    let other = tempfile::tempdir().unwrap();
    let (output, out) = build_named(other.path(), "catalogue.jsonl", &sample_items(), &[]);
    assert!(output.status.success());
    assert_eq!(manifest(&out)["dataset"], "catalogue");
}

#[test]
fn filter_fields_are_trimmed_and_a_field_no_item_carries_is_refused_by_name() {
    let items: Vec<serde_json::Value> = sample_items()
        .into_iter()
        .map(|mut item| {
            item["metadata"] = serde_json::json!({"language": "en"});
            item
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (output, out) = build_named(
        dir.path(),
        "items.jsonl",
        &items,
        &["--filter-fields", "category, price "],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        manifest(&out)["filter_fields"],
        serde_json::json!(["category", "price"])
    );
    for (fields, expected) in [
        (
            "category,metadata.language",
            &[
                "--filter-fields \"metadata.language\"",
                "top-level fields only",
                "\"language\"",
            ][..],
        ),
        (
            "category, Category",
            &[
                "--filter-fields \"Category\"",
                "no item of",
                "case-sensitive",
            ][..],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (output, out) = build_named(
            dir.path(),
            "items.jsonl",
            &items,
            &["--filter-fields", fields],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{fields}: built");
        for fragment in expected {
            assert!(
                stderr.contains(fragment),
                "{fields}: {stderr:?} lacks {fragment:?}"
            );
        }
        assert!(!out.exists(), "{fields}: nothing is left behind");
    }
    // The default field is reported, not refused, when no item carries it.
    let bare: Vec<serde_json::Value> = sample_items()
        .into_iter()
        .map(|item| serde_json::json!({"id": item["id"], "text": item["text"]}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (output, _) = build_named(dir.path(), "items.jsonl", &bare, &[]);
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("no item carries filter field \"category\" (the default)"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn max_features_zero_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (output, out) = build_named(
        dir.path(),
        "items.jsonl",
        &sample_items(),
        &["--max-features", "0"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--max-features 0 keeps no term")
            && !stderr.contains("vocabulary")
            && !stderr.contains("stop word"),
        "{stderr}"
    );
    assert!(!out.exists());
}
