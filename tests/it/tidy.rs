//! Repository-wide rules checked by reading the source tree, in the style of
//! rust-analyzer's tidy tests: each failure names the file, the line and the rule.
//!
//! - Layers: a module of `src/` uses only modules below it (ARCHITECTURE.md, "Layers").
//! - Every source file opens with a `//!` comment saying what it is.
//! - No function is longer than [`MAX_FUNCTION_LINES`] lines unless a comment in or just
//!   above it says why (`long:` followed by the reason).
//! - Every metric name used in `src/` is described in `telemetry::METRICS` (its `# HELP`) and
//!   listed in README.md, and every described metric is used.

use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of a lower layer and its own
/// submodules; never one of the same or a higher layer.
const LAYERS: &[&[&str]] = &[
    &[
        "clock",
        "digest",
        "failpoint",
        "lock_file",
        "progress",
        "secret_file",
        "telemetry",
    ],
    &["durable"],
    &["db"],
    &["search"],
    &["bundle"],
    &["delta_store"],
    &["tuf"],
    &["delta"],
    &["pinecone"],
    &["state"],
    &["catalog"],
    &["sync"],
    &["http"],
    &["server"],
    &["config", "demo"],
    &["cli"],
];

/// Longer functions need a reason written beside them.
const MAX_FUNCTION_LINES: usize = 80;

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`None` for lib.rs and main.rs), and
/// its module path (`["db", "leveldb"]` for `src/db/leveldb.rs`).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && stem != "lib" && stem != "main" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

/// The crate-level module a path written in `file` (module path `here`) names, if it leaves
/// the file's own top-level module: `crate::x::..` or enough `super::` to reach the root.
fn named_top_module(here: &[String], path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix("crate::") {
        return rest.split("::").next().map(str::to_owned);
    }
    // Each `super` climbs one module: from `x` (x.rs or x/mod.rs) to the root, from `x::y`
    // to `x`.
    let mut depth = here.len();
    let mut rest = path;
    while let Some(after) = rest.strip_prefix("super::") {
        depth = depth.saturating_sub(1);
        rest = after;
    }
    if rest.len() == path.len() || depth > 0 {
        return None;
    }
    // `use super::*` in an inline `mod tests` names its own file's module.
    rest.split("::")
        .next()
        .filter(|m| !m.is_empty() && *m != "*")
        .map(str::to_owned)
}

/// Paths used in one line of code: `crate::..` and `super::..` sequences, and the items of
/// a `use crate::{a, b}` group.
fn paths_in(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let begin = from + at;
            let before = code[..begin].chars().next_back();
            from = begin + start.len();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let path: String = code[begin..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if let Some(group) = code[begin + path.len()..].strip_prefix('{')
                && path == "crate::"
            {
                let group = group.split('}').next().unwrap_or("");
                for item in group.split(',') {
                    let item = item.trim();
                    if !item.is_empty() {
                        found.push(format!("crate::{item}"));
                    }
                }
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Every layering violation in `files` (paths relative to `src/`, with their text), as
/// `file:line: rule` messages.
fn layering_violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut violations = Vec::new();
    for (relative, text) in files {
        let here = module_path(relative);
        let Some(own) = here.first() else { continue };
        let Some(own_layer) = layer_of(own) else {
            violations.push(format!(
                "src/{}:1: module `{own}` is in no layer: add it to LAYERS in tests/it/tidy.rs and to ARCHITECTURE.md",
                relative.display()
            ));
            continue;
        };
        for (line_idx, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for path in paths_in(line) {
                let Some(target) = named_top_module(&here, &path) else {
                    continue;
                };
                if &target == own {
                    continue;
                }
                let allowed = layer_of(&target).is_some_and(|layer| layer < own_layer);
                if !allowed {
                    violations.push(format!(
                        "src/{}:{}: `{own}` may not use `{target}` ({path}): a module uses only lower layers (ARCHITECTURE.md, \"Layers\"); move the type down or pass what is needed in",
                        relative.display(),
                        line_idx + 1
                    ));
                }
            }
        }
    }
    violations
}

/// Functions longer than [`MAX_FUNCTION_LINES`] without a `long:` reason beside them.
fn long_functions(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (relative, text) in files {
        let lines: Vec<&str> = text.lines().collect();
        for (start, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "async fn ",
                "pub async fn ",
                "pub(super) fn ",
                "pub(crate) fn ",
            ]
            .iter()
            .any(|p| code.starts_with(p));
            if !is_fn {
                continue;
            }
            let Some(length) = body_length(&lines[start..]) else {
                continue;
            };
            let reason_above = lines[..start]
                .iter()
                .rev()
                .take_while(|l| {
                    let t = l.trim_start();
                    t.starts_with("//") || t.starts_with("#[")
                })
                .any(|l| l.contains("long:"));
            let reason_inside = lines[start..start + length]
                .iter()
                .any(|l| l.trim_start().starts_with("//") && l.contains("long:"));
            if length > MAX_FUNCTION_LINES && !reason_above && !reason_inside {
                found.push(format!(
                    "src/{}:{}: function is {length} lines (more than {MAX_FUNCTION_LINES}): split it, or say why in a `// long: ...` comment",
                    relative.display(),
                    start + 1
                ));
            }
        }
    }
    found
}

/// Lines from a `fn` line to its closing brace, or `None` for a declaration without body.
fn body_length(lines: &[&str]) -> Option<usize> {
    let mut depth = 0i64;
    let mut opened = false;
    for (idx, line) in lines.iter().enumerate() {
        let code = strip_literals(line);
        for c in code.chars() {
            match c {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => depth -= 1,
                _ => {}
            }
        }
        if opened && depth <= 0 {
            return Some(idx + 1);
        }
        if !opened && code.trim_end().ends_with(';') {
            return None;
        }
    }
    None
}

/// A line without its comment and string or char literals (so braces in them do not count).
fn strip_literals(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == '"' {
                        break;
                    }
                }
            }
            '\'' => {
                // A char literal ('{', '\n'); a lifetime ('a) has no closing quote nearby.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with('\\') && rest.chars().nth(2) == Some('\'') {
                    chars.nth(2);
                } else if rest.chars().nth(1) == Some('\'') {
                    chars.nth(1);
                }
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

fn missing_module_docs(files: &[(PathBuf, String)]) -> Vec<String> {
    files
        .iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(relative, _)| {
            format!(
                "src/{}:1: a source file opens with a `//!` comment saying what it is",
                relative.display()
            )
        })
        .collect()
}

fn source_files() -> Vec<(PathBuf, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

/// The `"deltacache_..."` string literals of `text` (metric names), with their line numbers.
fn metric_names_in(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for piece in line.split('"').skip(1).step_by(2) {
            let is_name = piece.starts_with("deltacache_")
                && piece.len() > "deltacache_".len()
                && piece.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if is_name {
                out.push((n + 1, piece.to_owned()));
            }
        }
    }
    out
}

/// Metric names used but not described or not in the README, and described ones not used.
fn undocumented_metrics(files: &[(PathBuf, String)], readme: &str) -> Vec<String> {
    let described: Vec<&str> = deltacache::telemetry::METRICS
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    let mut problems = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for (path, text) in files {
        if path.ends_with("telemetry.rs") {
            continue;
        }
        for (line, name) in metric_names_in(text) {
            if !described.contains(&name.as_str()) {
                problems.push(format!(
                    "src/{}:{line}: metric {name} is not in telemetry::METRICS: add it with its HELP text",
                    path.display()
                ));
            }
            used.insert(name);
        }
    }
    for name in described {
        if !used.contains(name) {
            problems.push(format!(
                "src/telemetry.rs: {name} is described in METRICS but no code sets it: remove it"
            ));
        }
        if !readme.contains(&format!("`{name}")) {
            problems.push(format!(
                "README.md: metric {name} is not in the metrics list (\"## Operations\"): add it"
            ));
        }
    }
    problems
}

#[test]
fn metrics_are_described_and_documented() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let problems = undocumented_metrics(&source_files(), &readme);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_undescribed_metric_is_named_with_its_file_and_line() {
    let files = vec![(
        PathBuf::from("x.rs"),
        "//! x\nfn f() {\n    metrics::counter!(\"deltacache_made_up_total\").increment(1);\n}\n"
            .to_owned(),
    )];
    let problems = undocumented_metrics(&files, "");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("src/x.rs:3: metric deltacache_made_up_total")),
        "{problems:?}"
    );
}

#[test]
fn modules_use_only_lower_layers() {
    let violations = layering_violations(&source_files());
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn every_source_file_says_what_it_is() {
    let missing = missing_module_docs(&source_files());
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn long_functions_say_why() {
    let long = long_functions(&source_files());
    assert!(long.is_empty(), "{}", long.join("\n"));
}

#[test]
fn a_wrong_import_is_named_with_its_file_line_and_rule() {
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_owned());
    let files = vec![
        file(
            "db/leveldb.rs",
            "//! x\nuse super::migrate::SCHEMA_VERSION;\nuse crate::sync::Syncer;\n",
        ),
        file("search/mod.rs", "//! x\nuse super::db::leveldb::open_db;\n"),
        file(
            "state/apply.rs",
            "//! x\nfn f() { let _ = super::super::catalog::Catalog::open; }\n",
        ),
        file("bundle/mod.rs", "//! x\nuse crate::{clock, sync};\n"),
        file(
            "sync/mod.rs",
            "//! x\nuse crate::state::StateDir; // fine\n",
        ),
    ];
    let violations = layering_violations(&files);
    assert_eq!(violations.len(), 3, "{violations:#?}");
    assert!(violations[0].starts_with("src/db/leveldb.rs:3: `db` may not use `sync`"));
    assert!(violations[1].starts_with("src/state/apply.rs:2: `state` may not use `catalog`"));
    assert!(violations[2].starts_with("src/bundle/mod.rs:2: `bundle` may not use `sync`"));
    assert!(violations[0].contains("ARCHITECTURE.md"));
}

#[test]
fn a_long_function_without_a_reason_is_named() {
    let body: String = (0..85).map(|i| format!("    let _x{i} = {i};\n")).collect();
    let plain = format!("//! x\nfn long() {{\n{body}}}\n");
    let excused = format!("//! x\n// long: one table of cases\nfn long() {{\n{body}}}\n");
    let files = vec![
        (PathBuf::from("a.rs"), plain),
        (PathBuf::from("b.rs"), excused),
    ];
    let long = long_functions(&files);
    assert_eq!(long.len(), 1, "{long:#?}");
    assert!(
        long[0].starts_with("src/a.rs:2: function is 87 lines"),
        "{long:?}"
    );
}
