//! Compatibility tests: the OFFICIAL Metered SDKs, unmodified, against an in-process Herald.
//!
//! Each test starts Herald on 127.0.0.1:0 and runs one scenario script as a child process:
//! `node tests/compat/js/X.mjs` (`@metered-ca/realtime` 1.2.0 with the `ws` package) or
//! `tests/compat/py/.venv/bin/python tests/compat/py/X.py` (`metered-realtime[webrtc]` 1.0.2).
//! The connection details travel in environment variables (`HERALD_URL`, `HERALD_APP`,
//! `HERALD_SK_ID`, `HERALD_SK_SECRET`, `HERALD_PK`); the scripts mint their own HS256 JWTs.
//! A script exits 0 when every assertion held. Its stdout/stderr (including a raw frame trace
//! on the JS side) is printed when it fails or runs out of time.
//!
//! The SDKs are installed by `bash tests/compat/install.sh`; without them these tests FAIL.
// The shared harness is not clippy-clean under -D warnings (field_reassign_with_default in
// test_config); allowed here so this file passes `cargo clippy --all-targets -- -D warnings`.

use herald_testkit::prelude::*;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

/// Hard deadline for one scenario process; it is killed after this.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn compat_dir() -> PathBuf {
    workspace_root().join("tests/compat")
}

fn install_hint(what: &str, path: &Path) -> String {
    format!(
        "{what} is not installed ({} is missing). Run `bash tests/compat/install.sh` from the \
         workspace root first; the SDK compatibility tests need the official SDKs.",
        path.display()
    )
}

#[derive(Clone, Copy, Debug)]
enum Sdk {
    Js,
    Py,
}

impl Sdk {
    /// The interpreter and script path for `script`, or a panic telling how to install.
    fn command(self, script: &str) -> Command {
        let dir = compat_dir();
        match self {
            Sdk::Js => {
                let sdk = dir.join("js/node_modules/@metered-ca/realtime/package.json");
                let ws = dir.join("js/node_modules/ws/package.json");
                for p in [&sdk, &ws] {
                    assert!(p.exists(), "{}", install_hint("The JS SDK", p));
                }
                let mut cmd = Command::new("node");
                cmd.arg(dir.join("js").join(script));
                cmd
            }
            Sdk::Py => {
                let python = dir.join("py/.venv/bin/python");
                assert!(
                    python.exists(),
                    "{}",
                    install_hint("The Python SDK venv", &python)
                );
                let mut cmd = Command::new(python);
                cmd.arg("-u").arg(dir.join("py").join(script));
                cmd
            }
        }
    }
}

/// What one scenario process did.
struct Outcome {
    label: String,
    /// `None` when the process was killed at the hard timeout.
    status: Option<ExitStatus>,
    /// The hard timeout it ran under.
    timeout: Duration,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn report(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("KILLED after the {}s hard timeout", self.timeout.as_secs()),
        };
        format!(
            "{}: {status} after {:.1}s\n----- stdout -----\n{}\n----- stderr -----\n{}\n------------------",
            self.label,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// Reads a child pipe to the end.
async fn drain(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut buf).await;
    }
    buf
}

/// The output of a pipe reader once the child is gone (bounded, in case a grandchild still
/// holds the pipe open).
async fn collect(reader: JoinHandle<Vec<u8>>) -> String {
    let abort = reader.abort_handle();
    match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(buf)) => String::from_utf8_lossy(&buf).into_owned(),
        Ok(Err(e)) => format!("<output reader failed: {e}>"),
        Err(_) => {
            abort.abort();
            "<output still open 5 s after the process ended>".to_string()
        }
    }
}

/// Spawns one scenario against `server` and waits for it, killing it after
/// [`SCENARIO_TIMEOUT`]. The output read so far is kept either way.
async fn run_one(server: &TestServer, sdk: Sdk, script: &str) -> Outcome {
    run_one_within(server, sdk, script, SCENARIO_TIMEOUT).await
}

/// [`run_one`] with its own hard timeout, for scenarios that wait out SDK backoff floors.
async fn run_one_within(server: &TestServer, sdk: Sdk, script: &str, timeout: Duration) -> Outcome {
    run_one_with_env(server, sdk, script, timeout, &[]).await
}

/// [`run_one_within`] with extra environment variables for the script.
async fn run_one_with_env(
    server: &TestServer,
    sdk: Sdk,
    script: &str,
    timeout: Duration,
    extra_env: &[(&str, PathBuf)],
) -> Outcome {
    let label = format!("{sdk:?} {script}");
    let mut cmd = sdk.command(script);
    cmd.envs(extra_env.iter().map(|(k, v)| (*k, v.as_os_str())));
    cmd.current_dir(workspace_root())
        .env("HERALD_URL", server.origin())
        .env("HERALD_APP", APP)
        .env("HERALD_SK_ID", SK_ID)
        .env("HERALD_SK_SECRET", SK_SECRET)
        .env("HERALD_PK", PK)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("{label}: could not start the scenario process: {e}"),
    };
    let stdout = tokio::spawn(drain(child.stdout.take()));
    let stderr = tokio::spawn(drain(child.stderr.take()));
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => panic!("{label}: waiting for the scenario failed: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            None
        }
    };
    let elapsed = started.elapsed();
    Outcome {
        label,
        status,
        timeout,
        stdout: collect(stdout).await,
        stderr: collect(stderr).await,
        elapsed,
    }
}

/// Asserts the scenario exited 0; otherwise panics with its full output.
fn check(out: &Outcome) {
    assert!(out.passed(), "scenario failed\n{}", out.report());
    println!("{}: passed in {:.1}s", out.label, out.elapsed.as_secs_f64());
    if std::env::var_os("HERALD_COMPAT_SHOW").is_some() {
        println!("{}", out.report());
    }
}

/// Runs one scenario against a fresh Herald.
async fn scenario(sdk: Sdk, script: &str) {
    let server = TestServer::start().await;
    let out = run_one(&server, sdk, script).await;
    check(&out);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// JS: @metered-ca/realtime 1.2.0 in Node with `ws`
// ---------------------------------------------------------------------------------------------

/// 1. Roster snapshot then deltas with names/avatars from peerMetadata; `left` on close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_roster_snapshot_deltas_and_left() {
    scenario(Sdk::Js, "roster.mjs").await;
}

/// 2, 4, 8. Broadcast chat with/without includeSenderMetadata, no echo; typing indicator on a
/// separate channel; spoofed `from` inside data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_chat_typing_and_spoofed_from() {
    scenario(Sdk::Js, "chat.mjs").await;
}

/// 3. Direct messages with fromMetadata; peer_not_found for offline peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_direct_messages() {
    scenario(Sdk::Js, "direct.mjs").await;
}

/// 5. Three channels on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_three_channels_one_connection() {
    scenario(Sdk::Js, "multichannel.mjs").await;
}

/// 6. Auto-resubscribe after Herald closes with 4002 ahead of a short token's exp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_resubscribe_after_token_expiry_close() {
    scenario(Sdk::Js, "resubscribe.mjs").await;
}

/// 7. Publishable-key connection: UUID peerId, expiresAt null, no metadata anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_publishable_key_connection() {
    scenario(Sdk::Js, "pk.mjs").await;
}

/// 9. Two MeteredPeers (stub RTCPeerConnection): peer-joined with metadata, direct data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_metered_peers_in_one_room() {
    scenario(Sdk::Js, "metered_peer.mjs").await;
}

// ---------------------------------------------------------------------------------------------
// Python: metered-realtime 1.0.2 with the `webrtc` extra
// ---------------------------------------------------------------------------------------------

/// 1. Roster snapshot then deltas with names/avatars; `left` on close and on unsubscribe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_roster_snapshot_deltas_and_left() {
    scenario(Sdk::Py, "roster.py").await;
}

/// 2, 4, 8. Broadcast chat, typing channel, spoofed `from`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_chat_typing_and_spoofed_from() {
    scenario(Sdk::Py, "chat.py").await;
}

/// 3. Direct messages with sender metadata; peer_not_found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_direct_messages() {
    scenario(Sdk::Py, "direct.py").await;
}

/// 5. Three channels on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_three_channels_one_connection() {
    scenario(Sdk::Py, "multichannel.py").await;
}

/// 6. Auto-resubscribe after Herald closes with 4002 ahead of a short token's exp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_resubscribe_after_token_expiry_close() {
    scenario(Sdk::Py, "resubscribe.py").await;
}

/// 7. Publishable-key connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_publishable_key_connection() {
    scenario(Sdk::Py, "pk.py").await;
}

/// 9. Two MeteredPeers (aiortc) in one room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_metered_peers_in_one_room() {
    scenario(Sdk::Py, "metered_peer.py").await;
}

/// 10. `1500.0` arrives as a float: data is forwarded verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_data_passthrough_keeps_number_spelling() {
    scenario(Sdk::Py, "passthrough.py").await;
}

/// 11. JSON nested 5,000 levels deep is refused, so an SDK subscriber's reader survives: no
/// reconnect, no presence flap, same peer id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_subscriber_survives_deeply_nested_publishes() {
    scenario(Sdk::Py, "deep_payload.py").await;
}

// ---------------------------------------------------------------------------------------------
// Cross-SDK
// ---------------------------------------------------------------------------------------------

/// 9. A JS MeteredPeer and a Python MeteredPeer in one room, both processes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_and_py_metered_peers_interoperate() {
    let server = TestServer::start().await;
    let (js, py) = tokio::join!(
        run_one(&server, Sdk::Js, "interop_peer.mjs"),
        run_one(&server, Sdk::Py, "interop_peer.py"),
    );
    // Show both sides when either fails: the cause is often on the other one.
    assert!(
        js.passed() && py.passed(),
        "cross-SDK room failed\n{}\n\n{}",
        js.report(),
        py.report()
    );
    check(&js);
    check(&py);
    server.shutdown().await;
}

/// RFC 6455 closing handshake: the SDK's `close()` should see its 1000 echoed, not 1006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_close_completes_the_closing_handshake() {
    scenario(Sdk::Js, "clean_close.mjs").await;
}

/// 6 with MeteredPeer: after Herald's 4002 close the JS MeteredPeer reconnects, reconciles
/// against the snapshot (no peer-left for survivors) and per-peer data flows again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_metered_peer_reconciles_after_token_expiry_close() {
    scenario(Sdk::Js, "metered_peer_reconnect.mjs").await;
}

/// 6 with MeteredPeer (Python): the same reconcile after a 4002 close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_metered_peer_reconciles_after_token_expiry_close() {
    scenario(Sdk::Py, "metered_peer_reconnect.py").await;
}

// ---------------------------------------------------------------------------------------------
// REST control plane (spec §13) driving the SDKs, and the 4010 slow-backoff floor (spec §7.2)
// ---------------------------------------------------------------------------------------------

/// The SDK's tokenProvider fetches `POST /v1/tokens` (with peerMetadata, channels, permissions);
/// the SDK connects, another client sees its presence with that metadata, and a 4002 rotation
/// fetches a fresh REST token whose new metadata reaches the REST peers list, while the other
/// client sees no flap (the reconnect comes within the grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_rest_token_provider() {
    scenario(Sdk::Js, "rest_tokens.mjs").await;
}

/// The same through the Python SDK (urllib in a worker thread as the token endpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_rest_token_provider() {
    scenario(Sdk::Py, "rest_tokens.py").await;
}

/// `POST /v1/channels/news%2Flive/publish` reaches SDK subscribers from "system" (or `from`),
/// with the REST peerMetadata as fromMetadata only for the opted-in one; `GET …/peers` lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_rest_publish_and_peers() {
    scenario(Sdk::Js, "rest_publish.mjs").await;
}

/// The same through the Python SDK (also: a REST `1500.0` arrives as a float).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_rest_publish_and_peers() {
    scenario(Sdk::Py, "rest_publish.py").await;
}

/// `DELETE /v1/peers/:id` closes every connection of the peer with 4020; the SDK goes to
/// `closed` and does not reconnect (no tokenProvider call, no connection for 3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_rest_kick_is_terminal() {
    scenario(Sdk::Js, "rest_kick.mjs").await;
}

/// The same through the Python SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_rest_kick_is_terminal() {
    scenario(Sdk::Py, "rest_kick.py").await;
}

/// A kicked MeteredPeer emits its fatal `error` (admin_disconnect) then `left`; the other peer
/// sees `peer-left`; nothing reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_rest_kick_metered_peer() {
    scenario(Sdk::Js, "rest_kick_peer.mjs").await;
}

/// The same with Python MeteredPeers (FatalError, then Left; PeerLeft on the other side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_rest_kick_metered_peer() {
    scenario(Sdk::Py, "rest_kick_peer.py").await;
}

/// Hard deadline for the 4010 scenario: it waits out the SDK's 30 s floor (its own watchdog is 70 s).
const QUOTA_SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// The app allows one connection. A's short token expires (4002); B takes the only slot before A
/// reconnects, so A's reconnect is refused with 4010; B leaves; A's next attempt comes no sooner
/// than the SDK's 30 s floor after the 4010, is welcomed and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_quota_4010_slow_backoff() {
    let mut config = test_config();
    let app = config
        .apps
        .iter_mut()
        .find(|a| a.id == APP)
        .expect("the test app");
    app.max_connections = 1;
    let server = TestServer::start_with(config).await;
    let out = run_one_within(
        &server,
        Sdk::Js,
        "quota_4010_backoff.mjs",
        QUOTA_SCENARIO_TIMEOUT,
    )
    .await;
    check(&out);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Occupancy mode of large rooms: capped snapshots and count frames
// ---------------------------------------------------------------------------------------------

/// Runs `script` against a Herald that caps `stadium-*` at 2 members.
async fn occupancy_scenario(sdk: Sdk, script: &str) {
    let server = TestServer::start_with(config_with(|c| {
        c.presence.channels = vec![herald_server::config::PresenceChannels {
            patterns: vec!["stadium-*".into()],
            max_roster: 2,
        }];
    }))
    .await;
    check(&run_one(&server, sdk, script).await);
    server.shutdown().await;
}

/// Above the cap: the JS SignallingClient's roster and the MeteredPeer's peers are the capped
/// snapshot; count frames (empty deltas plus `occupancy`) cause no error, leave or reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_survives_occupancy_frames() {
    occupancy_scenario(Sdk::Js, "occupancy.mjs").await;
}

/// The same through the Python SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_survives_occupancy_frames() {
    occupancy_scenario(Sdk::Py, "occupancy.py").await;
}

// ---------------------------------------------------------------------------------------------
// TLS: the SDKs over wss:// with certificates from a test CA. The JS scripts' `ws` sockets trust
// the CA given in HERALD_CA_FILE (their webSocketFactory); the Python SDK's default SSL
// context reads SSL_CERT_FILE. Nothing else about the SDKs changes.
// ---------------------------------------------------------------------------------------------

/// Runs `script` against a Herald serving `wss://` (certificate files watched every 100 ms),
/// with the live and a staged second pair named in the environment for reload scenarios.
async fn tls_scenario(sdk: Sdk, script: &str) {
    let ca = TestCa::new();
    let dir = TlsDir::new(&ca, &ca.issue(90));
    let (next_cert, next_key) = dir.stage("next", &ca.issue(30));
    let server = TestServer::start_with(dir.config(100)).await;
    let env = [
        ("HERALD_CA_FILE", dir.ca()),
        ("SSL_CERT_FILE", dir.ca()),
        ("HERALD_TLS_CERT", dir.cert()),
        ("HERALD_TLS_KEY", dir.key()),
        ("HERALD_TLS_NEXT_CERT", next_cert),
        ("HERALD_TLS_NEXT_KEY", next_key),
    ];
    let out = run_one_with_env(&server, sdk, script, SCENARIO_TIMEOUT, &env).await;
    check(&out);
    server.shutdown().await;
}

/// The chat scenario (connect, subscribe, publish with and without sender metadata, receive)
/// unchanged, over wss://.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_chat_over_wss() {
    tls_scenario(Sdk::Js, "chat.mjs").await;
}

/// The same through the Python SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_chat_over_wss() {
    tls_scenario(Sdk::Py, "chat.py").await;
}

/// A certificate renewal mid-run: the connected SDK client keeps its socket, a new one is
/// served the new certificate, and messages go both ways between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_survives_a_certificate_reload() {
    tls_scenario(Sdk::Js, "tls_reload.mjs").await;
}

/// The same through the Python SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_survives_a_certificate_reload() {
    tls_scenario(Sdk::Py, "tls_reload.py").await;
}

// ---------------------------------------------------------------------------------------------
// Channel history: rewind on subscribe, seen through SDKs that know nothing of it
// ---------------------------------------------------------------------------------------------

/// `chat/*` keeps history and rewinds 20, with a rate bucket that lets one publisher send its
/// few hundred messages at once.
fn chat_history(c: &mut herald_server::Config) {
    c.limits.rate_per_second = 10_000.0;
    c.limits.rate_burst = 10_000.0;
    c.history.channels = vec![herald_server::config::HistoryChannels {
        patterns: vec!["chat/*".into()],
        max_messages: 1000,
        max_age_secs: 3600,
        rewind: 20,
    }];
}

/// Runs `script` against a Herald where `chat/*` keeps history ([`chat_history`]).
async fn history_scenario(sdk: Sdk, script: &str) {
    let server = TestServer::start_with(config_with(chat_history)).await;
    check(&run_one(&server, sdk, script).await);
    server.shutdown().await;
}

/// [`history_scenario`] on a node of the Redis engine (history in a Redis stream).
async fn redis_history_scenario(sdk: Sdk, script: &str) {
    let cluster = herald_testkit::cluster::Cluster::redis_with(2, chat_history).await;
    check(&run_one(cluster.node(1), sdk, script).await);
}

/// A JS subscriber after 30 messages gets exactly the last 20 in order, then live ones, none
/// twice; with a publisher running during the subscribe, no gap and no duplicate at the seam.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_history_rewind_then_live_without_gap_or_duplicate() {
    history_scenario(Sdk::Js, "history.mjs").await;
}

/// The same through the Python SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_history_rewind_then_live_without_gap_or_duplicate() {
    history_scenario(Sdk::Py, "history.py").await;
}

/// The JS scenario on the Redis engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_history_on_redis_rewind_then_live_without_gap_or_duplicate() {
    redis_history_scenario(Sdk::Js, "history.mjs").await;
}

/// The Python scenario on the Redis engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_history_on_redis_rewind_then_live_without_gap_or_duplicate() {
    redis_history_scenario(Sdk::Py, "history.py").await;
}
