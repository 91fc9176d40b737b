//! The `herald` binary end to end: config printing and errors, token minting, and a dev-mode
//! `serve` that a client connects to and that shuts down gracefully on SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use herald_protocol::jwt::UnverifiedToken;
use tokio_tungstenite::tungstenite::Message;

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herald-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn config_default_prints_a_file_that_checks() {
    let out = herald().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("max_channels_per_connection = 100"));
    let dir = temp_dir("check");
    let path = dir.join("herald.toml");
    std::fs::write(&path, &text).unwrap();
    let out = herald()
        .args(["config", "check", "--config"])
        .arg(&path)
        .arg("--dev-keys")
        .arg(dir.join("keys.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_errors_name_the_field_and_exit_non_zero() {
    let dir = temp_dir("bad");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[limits]\nrate_burst = 0.0\n").unwrap();
    let out = herald()
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("limits.rate_burst"), "{stderr}");
}

#[test]
fn token_is_signed_with_the_dev_key() {
    let dir = temp_dir("token");
    let keys = dir.join("keys.json");
    let out = herald()
        .args([
            "token",
            "--sub",
            "alice",
            "--channels",
            "room/*,lobby",
            "--peer-metadata",
            r#"{"username":"Alice"}"#,
        ])
        .arg("--dev-keys")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&keys).unwrap()).unwrap();
    let parsed = UnverifiedToken::parse(token.trim()).unwrap();
    assert_eq!(parsed.kid(), stored["secretKeyId"].as_str().unwrap());
    let claims = parsed
        .verify(stored["secret"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.channels.unwrap(), vec!["room/*", "lobby"]);
    assert_eq!(
        claims.peer_metadata.unwrap().get(),
        r#"{"username":"Alice"}"#
    );

    let bad = herald()
        .args(["token", "--sub", "a", "--peer-metadata", "[1]"])
        .arg("--dev-keys")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[tokio::test]
async fn dev_mode_serve_accepts_a_client_and_exits_zero_on_sigterm() {
    let dir = temp_dir("serve");
    let mut child = herald()
        .args(["serve", "--listen", "127.0.0.1:0", "--dev-keys"])
        .arg(dir.join("keys.json"))
        .env("HERALD_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The banner names the bound origin and the publishable key.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut origin = None;
    let mut pk = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.split("WebSocket at ").nth(1) {
            origin = Some(rest.trim_end_matches("/v1").to_string());
        }
        if let Some(rest) = line.trim().strip_prefix("publishable key") {
            pk = Some(rest.trim().to_string());
            break;
        }
    }
    let (origin, pk) = (origin.unwrap(), pk.unwrap());
    assert!(pk.starts_with("pk_"), "{pk}");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{origin}/v1?key={pk}"))
        .await
        .unwrap();
    let welcome = ws.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains(r#""type":"welcome""#));

    // A token from `herald token` and one from `POST /v1/tokens` both connect to this server.
    let cli_token = herald()
        .args(["token", "--sub", "cli-peer", "--dev-keys"])
        .arg(dir.join("keys.json"))
        .output()
        .unwrap();
    assert!(cli_token.status.success());
    let cli_token = String::from_utf8(cli_token.stdout).unwrap();
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("keys.json")).unwrap()).unwrap();
    let auth = format!(
        "Bearer {}:{}",
        keys["secretKeyId"].as_str().unwrap(),
        keys["secret"].as_str().unwrap()
    );
    let http_origin = origin.replacen("ws://", "http://", 1);
    let minted: serde_json::Value = reqwest::Client::new()
        .post(format!("{http_origin}/v1/tokens"))
        .header("authorization", auth)
        .body(r#"{"peerId":"rest-peer"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (token, peer) in [
        (cli_token.trim(), "cli-peer"),
        (minted["token"].as_str().unwrap(), "rest-peer"),
    ] {
        let (mut client, _) =
            tokio_tungstenite::connect_async(format!("{origin}/v1?token={token}"))
                .await
                .unwrap();
        let welcome: serde_json::Value =
            serde_json::from_str(client.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
        assert_eq!(
            (welcome["type"].as_str(), welcome["peerId"].as_str()),
            (Some("welcome"), Some(peer))
        );
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut saw_going_away = false;
    let close_code = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => saw_going_away |= t.as_str().contains("going_away"),
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("unexpected end: {other:?}"),
        }
    };
    assert!(saw_going_away);
    assert_eq!(close_code, Some(1001));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "herald did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dev_mode_refuses_a_non_loopback_address_without_dev_public() {
    let dir = temp_dir("public");
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let out = herald()
            .args(["serve", "--listen", listen, "--dev-keys"])
            .arg(dir.join("keys.json"))
            .env_remove("HERALD_DEV_PUBLIC")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{listen}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refusing to run dev mode"), "{err}");
        assert!(err.contains("POST /dev/token"), "{err}");
        assert!(err.contains("--dev-public"), "{err}");
    }
    // The keys it wrote are for its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("keys.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn dev_public_lets_dev_mode_listen_on_every_interface() {
    let dir = temp_dir("public-ok");
    let mut child = herald()
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--dev-public",
            "--dev-keys",
        ])
        .arg(dir.join("keys.json"))
        .env("HERALD_LOG_LEVEL", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("running in dev mode"), "{first}");
    child.kill().unwrap();
    child.wait().unwrap();
}
