//! Names the git commit in `herald --version`. A build from a checkout reads
//! `git rev-parse --short HEAD`; a build without git, or from a tarball (even one unpacked inside
//! some other repository), says "unknown" rather than failing. A packager may set
//! `HERALD_GIT_COMMIT` to name the commit the tarball was cut from.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Reruns the build script when a git file changes. A file that does not exist is not watched:
/// cargo would take it as always changed and rebuild every time.
fn watch(dir: &Path, git_path: &str) {
    if let Some(p) = git(dir, &["rev-parse", "--git-path", git_path]) {
        let p = dir.join(p);
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=HERALD_GIT_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = Path::new(&dir);
    let commit = std::env::var("HERALD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // Only a repository that tracks this crate's own manifest describes this build.
            git(dir, &["ls-files", "--error-unmatch", "Cargo.toml"])?;
            let commit = git(dir, &["rev-parse", "--short", "HEAD"])?;
            // Rebuild when HEAD moves: HEAD itself, the branch it names, and packed refs.
            for path in ["HEAD", "packed-refs"] {
                watch(dir, path);
            }
            if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
                watch(dir, &branch);
            }
            Some(commit)
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HERALD_GIT_COMMIT={commit}");
}
