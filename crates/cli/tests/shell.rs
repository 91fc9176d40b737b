//! `herald --version`, `herald completions` and `herald man`: the version names the commit the
//! binary was built from, and the completions and man pages cover every subcommand.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

const SUBCOMMANDS: [&str; 5] = ["serve", "token", "config", "completions", "man"];

fn herald(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn version_names_the_git_commit_of_the_build() {
    let (ok, out) = herald(&["--version"]);
    assert!(ok);
    let manifest = env!("CARGO_MANIFEST_DIR");
    let git = Command::new("git")
        .args(["-C", manifest, "rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    // Built from this checkout: its commit; built without git: "unknown".
    let commit = git.unwrap_or_else(|| "unknown".to_string());
    let want = format!("herald {} ({commit})\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(out, want);
}

#[test]
fn bash_completions_parse_and_name_every_subcommand() {
    let (ok, script) = herald(&["completions", "bash"]);
    assert!(ok);
    assert!(script.contains("complete -F _herald"), "{script}");
    for sub in SUBCOMMANDS {
        assert!(script.contains(sub), "{sub} missing");
    }
    // The script is valid bash (parsed, not run).
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    bash.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(bash.wait().unwrap().success());
}

#[test]
fn zsh_and_fish_completions_name_every_subcommand() {
    let (ok, zsh) = herald(&["completions", "zsh"]);
    assert!(ok);
    assert!(zsh.starts_with("#compdef herald"), "{zsh}");
    let (ok, fish) = herald(&["completions", "fish"]);
    assert!(ok);
    for sub in SUBCOMMANDS {
        assert!(zsh.contains(sub), "zsh: {sub} missing");
        assert!(
            fish.contains(&format!("-a \"{sub}\"")),
            "fish: {sub} missing"
        );
    }
    let (ok, _) = herald(&["completions", "tcsh"]);
    assert!(!ok, "an unknown shell is refused");
}

#[test]
fn man_pages_cover_the_command_and_each_subcommand() {
    let (ok, page) = herald(&["man"]);
    assert!(ok);
    assert!(page.contains(".TH herald 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"));
    for sub in SUBCOMMANDS {
        assert!(
            page.contains(&format!("herald\\-{sub}(1)")),
            "{sub} missing"
        );
    }
    let (ok, serve) = herald(&["man", "serve"]);
    assert!(ok);
    assert!(serve.contains(".TH herald-serve 1"), "{serve}");
    assert!(
        serve.contains("\\-\\-listen"),
        "serve's flags are on its page"
    );
    let (ok, _) = herald(&["man", "nope"]);
    assert!(!ok, "an unknown subcommand has no page");
}
