//! What the Debian package installs (dist/, crates/cli/Cargo.toml's cargo-deb metadata) fits
//! together: the unit runs the binary and the config the package puts in place, as the user the
//! maintainer script creates, with the hardening an operator expects; systemd accepts the unit;
//! and the packaged config, pointed at test certificates, serves `/healthz` over TLS and
//! reloads its certificate on SIGHUP (what `systemctl reload herald` sends).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use herald_testkit::prelude::*;
use serde_json::json;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn unit() -> String {
    std::fs::read_to_string(root().join("dist/herald.service")).unwrap()
}

/// Every `Key=value` of the unit, in order (a key may repeat).
fn directives(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn one(directives: &[(String, String)], key: &str) -> String {
    let values: Vec<_> = directives.iter().filter(|(k, _)| k == key).collect();
    assert_eq!(values.len(), 1, "{key} once in the unit: {values:?}");
    values[0].1.clone()
}

/// Where the package puts `source` (an asset of `[package.metadata.deb]`), as an absolute path.
fn installed_path(source: &str) -> String {
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("crates/cli/Cargo.toml")).unwrap())
            .unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    let asset = assets
        .iter()
        .find(|a| a[0].as_str() == Some(source))
        .unwrap_or_else(|| panic!("{source} is not a package asset"));
    let dest = asset[1].as_str().unwrap();
    // A destination ending in `/` is a directory: the file keeps its name.
    if dest.ends_with('/') {
        let name = Path::new(source).file_name().unwrap().to_str().unwrap();
        format!("/{dest}{name}")
    } else {
        format!("/{dest}")
    }
}

#[test]
fn the_unit_runs_the_packaged_binary_and_config_as_the_packaged_user() {
    let d = directives(&unit());
    let exec = one(&d, "ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[0], installed_path("target/release/herald"));
    assert_eq!(args[1..3], ["serve", "--config"]);
    assert_eq!(args[3], installed_path("../../dist/herald.toml"));

    let manifest = std::fs::read_to_string(root().join("crates/cli/Cargo.toml")).unwrap();
    assert!(manifest.contains(r#"conf-files = ["/etc/herald/herald.toml"]"#));
    let postinst = std::fs::read_to_string(root().join("dist/debian/postinst")).unwrap();
    let user = one(&d, "User");
    assert!(
        postinst.contains(&format!("--group --home /var/lib/{user}")),
        "{postinst}"
    );
    assert!(postinst.contains("#DEBHELPER#"));
    assert_eq!(one(&d, "Group"), user);

    let state = format!("/var/lib/{}", one(&d, "StateDirectory"));
    assert_eq!(one(&d, "ReadWritePaths"), state);
    assert_eq!(one(&d, "WorkingDirectory"), state);
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("LimitNOFILE", "1048576"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ] {
        assert_eq!(one(&d, key), value, "{key}");
    }
}

#[test]
fn the_packaged_config_as_is_is_refused_until_its_secret_is_set() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["config", "check", "--config"])
        .arg(root().join("dist/herald.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("apps[0].secret_keys[0].secret"), "{err}");
    assert!(err.contains("placeholder"), "{err}");
}

#[test]
fn systemd_accepts_the_unit() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("systemd-analyze is not installed; the unit was checked by parsing only");
        return;
    }
    // `verify` checks that ExecStart exists: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("herald-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("herald.service");
    let text = unit().replace("/usr/bin/herald", env!("CARGO_BIN_EXE_herald"));
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Unknown keys are only warnings to systemd: any output at all fails the test.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

/// The packaged config with `[tls]` uncommented and pointed at `dir`, on an ephemeral loopback
/// port, reloading on SIGHUP only, with the secret postinst would generate.
fn packaged_config_with_tls(dir: &TlsDir) -> PathBuf {
    let text = std::fs::read_to_string(root().join("dist/herald.toml")).unwrap();
    assert!(text.contains("listen = \"0.0.0.0:8080\""));
    let text = text
        .replace("listen = \"0.0.0.0:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("@GENERATED_AT_INSTALL@", "0123456789abcdef0123456789abcdef")
        .replace("# [tls]", "[tls]\nwatch_interval_ms = 0")
        .replace(
            "# cert = \"/etc/herald/tls/fullchain.pem\"",
            &format!("cert = {:?}", dir.cert()),
        )
        .replace(
            "# key = \"/etc/herald/tls/privkey.pem\"",
            &format!("key = {:?}", dir.key()),
        )
        .replace("# plain_http", "plain_http");
    let path = dir.dir.join("herald.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A `herald serve` child, killed if the test ends without stopping it.
struct Herald(Child);

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `herald serve` and reads its bound address from the JSON log.
fn serve(config: &Path) -> (Herald, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("HERALD_LOG_FORMAT")
        .env_remove("HERALD_LISTEN")
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Herald(child);
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if entry["fields"]["message"] == "herald listening" {
            let addr = entry["fields"]["listen"].as_str().unwrap().parse().unwrap();
            // Keep reading, so the server's later log lines do not hit a closed pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return (child, addr);
        }
    }
    panic!("herald exited before listening");
}

fn signal(child: &Herald, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn mint(config: &Path, sub: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["token", "--sub", sub, "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn the_packaged_config_serves_tls_and_reloads_its_certificate_on_sighup() {
    let ca = TestCa::new();
    let first = ca.issue(90);
    let dir = TlsDir::new(&ca, &first);
    let config = packaged_config_with_tls(&dir);
    let (mut child, addr) = serve(&config);

    let health = https_get(addr, ca.client_config(), "/healthz").await;
    assert_eq!(health.status, 200, "{}", health.head);
    assert_eq!(health.leaf, first.leaf_der);
    let mut alice = wss_client(
        addr,
        ca.client_config(),
        &format!("token={}", mint(&config, "alice")),
    )
    .await;
    assert_eq!(alice.recv().await["type"], "welcome");
    alice.subscribe("room").await;

    // With watch_interval_ms = 0 only SIGHUP reloads: the new certificate is served once the
    // signal is handled, and not before it is sent.
    let second = ca.issue(30);
    dir.install(&second);
    assert_eq!(
        https_get(addr, ca.client_config(), "/healthz").await.leaf,
        first.leaf_der
    );
    signal(&child, "HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while https_get(addr, ca.client_config(), "/healthz").await.leaf != second.leaf_der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut bob = wss_client(
        addr,
        ca.client_config(),
        &format!("token={}", mint(&config, "bob")),
    )
    .await;
    assert_eq!(bob.recv().await["type"], "welcome");
    bob.subscribe("room").await;
    assert_eq!(alice.recv().await["type"], "presence");
    bob.publish("room", json!({"text": "after the reload"}), "p1")
        .await;
    let m = alice.recv().await;
    assert_eq!(m["data"]["text"], "after the reload", "{m}");

    signal(&child, "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "herald did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}
