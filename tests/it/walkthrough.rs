//! README's "Operating: a catalogue from build to rollback" walkthrough, run as written:
//! the shell block is taken from README.md and run by bash with the binary on `PATH`, in an
//! empty folder, with `PORT` set to a free port.

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::support::binary;

const HEADING: &str = "### Operating: a catalogue from build to rollback";

/// The first `sh` block after the walkthrough's heading.
fn walkthrough_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let at = readme
        .find(HEADING)
        .unwrap_or_else(|| panic!("README.md has no heading {HEADING:?}"));
    let start = readme[at..].find("```sh\n").expect("a ```sh block") + at + 6;
    let end = readme[start..].find("```\n").expect("the block's end") + start;
    readme[start..end].to_owned()
}

/// Kills the walkthrough's process group (the daemon it starts in the background too) when
/// the test ends, whatever happened.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe { libc::kill(-self.0, libc::SIGKILL) };
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("walkthrough.sh");
    std::fs::write(&script, walkthrough_block()).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(binary(), bin.join("deltacache")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new("timeout")
        .args(["300", "bash", "-euo", "pipefail"])
        .arg(&script)
        .current_dir(&work)
        .env("PATH", path)
        .env("PORT", port.to_string())
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env_remove("RUST_LOG")
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bash");
    let _group = Group(child.id() as i32);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let serve_log = std::fs::read_to_string(work.join("serve.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "the walkthrough failed ({}):\n{stdout}\n{stderr}\nserve.log:\n{serve_log}",
        output.status
    );
    for expected in [
        "published seq 1",
        "ok seq 1",
        r#"{"results":[{"id":"db-3""#,
        "published seq 2",
        "pinned",
        r#""relational database with SQL""#,
        "unpinned",
        "compacted bundle bundle-2: dataset catalogue, seq 2, 3 items",
    ] {
        assert!(
            stdout.contains(expected),
            "the walkthrough's output lacks {expected:?}:\n{stdout}\n{stderr}"
        );
    }
    // The daemon was stopped by the walkthrough itself and left a consistent state dir.
    assert!(work.join("bundle-2/manifest.json").is_file());
    assert!(work.join("state/current").exists());
}
