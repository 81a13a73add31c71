//! `deltacache generate`: man pages and shell completions made from the clap definitions.

use std::collections::BTreeSet;

use clap::CommandFactory;

use crate::support::run;

/// `deltacache-root-init` and the like for every visible subcommand, nested ones included.
fn page_names(command: &clap::Command, prefix: &str, names: &mut BTreeSet<String>) {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{prefix}-{}", sub.get_name());
        page_names(sub, &name, names);
        names.insert(name);
    }
}

#[test]
fn man_pages_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let output = run(&["generate", "man", "--out", out.to_str().unwrap()]);
    assert!(output.status.success(), "{output:?}");

    let command = deltacache::cli::Cli::command();
    let mut expected = BTreeSet::new();
    page_names(&command, "deltacache", &mut expected);
    assert!(expected.contains("deltacache-serve"));
    assert!(expected.contains("deltacache-root-init"));
    expected.insert("deltacache".to_owned());
    let written: BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .map(|name| name.strip_suffix(".1").expect("section 1 pages").to_owned())
        .collect();
    assert_eq!(written, expected);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("{} man pages", expected.len())),
        "{stdout}"
    );

    // The main page names every subcommand (roff escapes `-` as `\-`) and the global flag.
    let main = std::fs::read_to_string(out.join("deltacache.1"))
        .unwrap()
        .replace("\\-", "-");
    assert!(main.contains(".TH deltacache 1 "), "{main}");
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        assert!(
            main.contains(&format!("deltacache-{}(1)", sub.get_name())),
            "deltacache.1 does not name {}",
            sub.get_name()
        );
    }
    assert!(main.contains("--log-format"));
    let serve = std::fs::read_to_string(out.join("deltacache-serve.1"))
        .unwrap()
        .replace("\\-", "-");
    for flag in ["--bundle", "--state-dir", "--config", "--log-format"] {
        assert!(serve.contains(flag), "deltacache-serve.1 lacks {flag}");
    }
}

#[test]
fn completion_scripts_complete_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let output = run(&["generate", "completions", shell]);
        assert!(output.status.success(), "{shell}: {output:?}");
        let script = String::from_utf8(output.stdout).unwrap();
        // fish names long flags without their dashes (`-l log-format`).
        for word in ["serve", "build-base", "log-format", "state-dir"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let output = run(&["generate", "completions", "tcsh"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tcsh") && stderr.contains("bash"),
        "{stderr}"
    );
}

/// The bash script loads and completes: `deltacache se<TAB>` offers `serve`, and
/// `--log-format <TAB>` the formats.
#[test]
fn bash_completion_loads_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("deltacache.bash");
    std::fs::write(&script, run(&["generate", "completions", "bash"]).stdout).unwrap();
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(
            r#"set -e
source "$1"
complete -p deltacache
COMP_WORDS=(deltacache se); COMP_CWORD=1
_deltacache deltacache se deltacache
echo "subcommands: ${COMPREPLY[*]}"
COMP_WORDS=(deltacache serve --log-format ""); COMP_CWORD=3
_deltacache deltacache "" --log-format
echo "formats: ${COMPREPLY[*]}""#,
        )
        .arg("bash")
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("-F _deltacache deltacache"), "{stdout}");
    assert!(stdout.contains("subcommands: serve\n"), "{stdout}");
    assert!(stdout.contains("formats: text json\n"), "{stdout}");
}
