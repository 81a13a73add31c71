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
