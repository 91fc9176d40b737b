//! `[tls]`: `https://` and `wss://` on the one listener with certificates from a test CA; the
//! certificate reloaded while connections stay up; a bad certificate refused on reload; a
//! handshake that never finishes closed at the header-read timeout; plain HTTP answered.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use herald_testkit::prelude::*;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for the watcher to act before it fails.
const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

/// One line's value in the node's `/metrics`, fetched over HTTPS.
async fn metric(server: &TestServer, ca: &TestCa, line_prefix: &str) -> Option<f64> {
    let text = https_get(server.addr, ca.client_config(), "/metrics")
        .await
        .body;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.strip_prefix(' ')?.parse().ok())
}

/// Polls until a new connection is served `leaf` (the watcher's reload is the barrier the
/// test then builds on), or fails after [`RELOAD_DEADLINE`].
async fn until_served(server: &TestServer, ca: &TestCa, leaf: &[u8]) {
    let deadline = tokio::time::Instant::now() + RELOAD_DEADLINE;
    while https_get(server.addr, ca.client_config(), "/healthz")
        .await
        .leaf
        != leaf
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within {RELOAD_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two wss clients subscribed to `room`; `a` publishes and `b` receives it.
async fn publish_reaches(a: &mut Client, b: &mut Client, text: &str) {
    a.publish("room", json!({ "text": text }), &format!("p-{text}"))
        .await;
    let m = b.recv().await;
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(m["data"]["text"], text, "{m}");
}

async fn subscribed(server: &TestServer, ca: &TestCa, sub: &str) -> Client {
    let mut c = wss_client(
        server.addr,
        ca.client_config(),
        &format!("token={}", token(sub)),
    )
    .await;
    assert_eq!(c.recv().await["type"], "welcome");
    c.subscribe("room").await;
    c
}

#[tokio::test]
async fn https_and_wss_share_the_listener_with_a_test_ca() {
    let ca = TestCa::new();
    let first = ca.issue(90);
    let dir = TlsDir::new(&ca, &first);
    let server = TestServer::start_with(dir.config(0)).await;

    let health = https_get(server.addr, ca.client_config(), "/healthz").await;
    assert_eq!(health.status, 200, "{}", health.head);
    assert_eq!(health.leaf, first.leaf_der);

    // A browser offers h2 first; Herald serves HTTP/1.1 only (WebSocket upgrades need it).
    let mut browser_like = (*ca.client_config()).clone();
    browser_like.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tls = tls_connect(server.addr, std::sync::Arc::new(browser_like))
        .await
        .unwrap();
    let (_, conn) = tls.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));

    let mut alice = subscribed(&server, &ca, "alice").await;
    let mut bob = subscribed(&server, &ca, "bob").await;
    // Bob's arrival reaches Alice first.
    assert_eq!(alice.recv().await["type"], "presence");
    publish_reaches(&mut alice, &mut bob, "over wss").await;

    // 90 days, give or take the seconds this test took.
    let expiry = metric(&server, &ca, "herald_tls_certificate_expiry_seconds")
        .await
        .unwrap();
    assert!((expiry - 90.0 * 86_400.0).abs() < 120.0, "{expiry}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_tls12_only_client_is_served_and_a_client_without_the_ca_is_refused() {
    let ca = TestCa::new();
    let dir = TlsDir::new(&ca, &ca.issue(30));
    let server = TestServer::start_with(dir.config(0)).await;

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(dir.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tls_connect(server.addr, std::sync::Arc::new(tls12))
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    let stranger = TestCa::new();
    assert!(tls_connect(server.addr, stranger.client_config())
        .await
        .is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections_and_keeps_the_old_ones() {
    let ca = TestCa::new();
    let first = ca.issue(90);
    let dir = TlsDir::new(&ca, &first);
    let server = TestServer::start_with(dir.config(100)).await;
    let mut alice = subscribed(&server, &ca, "alice").await;

    let second = ca.issue(30);
    dir.install(&second);
    until_served(&server, &ca, &second.leaf_der).await;

    // Alice's connection, negotiated under the first certificate, still carries traffic both
    // ways with Bob, who connected under the second.
    let mut bob = subscribed(&server, &ca, "bob").await;
    assert_eq!(alice.recv().await["type"], "presence");
    publish_reaches(&mut alice, &mut bob, "from before the reload").await;
    publish_reaches(&mut bob, &mut alice, "from after the reload").await;

    let expiry = metric(&server, &ca, "herald_tls_certificate_expiry_seconds")
        .await
        .unwrap();
    assert!((expiry - 30.0 * 86_400.0).abs() < 120.0, "{expiry}");
    let ok = metric(&server, &ca, "herald_tls_reloads_total{result=\"ok\"}").await;
    assert!(ok >= Some(1.0), "{ok:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_certificate_on_reload_keeps_the_old_one_and_a_good_one_later_is_taken() {
    let ca = TestCa::new();
    let first = ca.issue(90);
    let dir = TlsDir::new(&ca, &first);
    let server = TestServer::start_with(dir.config(100)).await;
    let mut alice = subscribed(&server, &ca, "alice").await;

    // Not PEM at all.
    replace(&dir.cert(), b"-----BEGIN CERTIFICATE-----\nnot base64!\n");
    let deadline = tokio::time::Instant::now() + RELOAD_DEADLINE;
    while metric(&server, &ca, "herald_tls_reloads_total{result=\"error\"}").await < Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed reload counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A valid certificate whose key is not the one in key.pem.
    let other = ca.issue(10);
    replace(&dir.cert(), other.chain_pem.as_bytes());
    while metric(&server, &ca, "herald_tls_reloads_total{result=\"error\"}").await < Some(2.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mismatched key was not refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still = https_get(server.addr, ca.client_config(), "/healthz").await;
    assert_eq!(still.status, 200);
    assert_eq!(
        still.leaf, first.leaf_der,
        "the old certificate stays in service"
    );
    let mut bob = subscribed(&server, &ca, "bob").await;
    assert_eq!(alice.recv().await["type"], "presence");
    publish_reaches(&mut bob, &mut alice, "still up").await;
    let expiry = metric(&server, &ca, "herald_tls_certificate_expiry_seconds")
        .await
        .unwrap();
    assert!((expiry - 90.0 * 86_400.0).abs() < 120.0, "{expiry}");

    // Fixed files are picked up: the watcher did not give up.
    let third = ca.issue(60);
    dir.install(&third);
    until_served(&server, &ca, &third.leaf_der).await;
    server.shutdown().await;
}

/// Waits until the server closes `socket`, or `within` passes.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_handshake_that_never_finishes_is_closed_and_others_are_served_meanwhile() {
    let ca = TestCa::new();
    let dir = TlsDir::new(&ca, &ca.issue(30));
    let mut config = dir.config(0);
    config.limits.http_header_read_timeout_ms = 1_000;
    let server = TestServer::start_with(config).await;

    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    // A handshake record header announcing 512 bytes, then nothing.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();

    // Meanwhile the listener serves others: this request completes while both stalled
    // sockets are still open (a stalled accept loop would serve it only after closing them).
    let health = https_get(server.addr, ca.client_config(), "/healthz").await;
    assert_eq!(health.status, 200);
    for socket in [&silent, &partial] {
        let still_open = socket.try_read(&mut [0u8; 16]);
        assert!(
            matches!(&still_open, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{still_open:?}"
        );
    }

    for socket in [&mut silent, &mut partial] {
        assert!(closed_within(socket, Duration::from_secs(5)).await);
    }
    let closed = metric(
        &server,
        &ca,
        "herald_tcp_closed_early_total{reason=\"tls_handshake_timeout\"}",
    )
    .await;
    assert_eq!(closed, Some(2.0));
    server.shutdown().await;
}

/// Plain HTTP to the TLS port, read to the end.
async fn plain_get(server: &TestServer, path: &str) -> String {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n\r\n",
        server.addr.port()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    // The server closes after its one answer.
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_refused_or_redirected() {
    let ca = TestCa::new();
    let dir = TlsDir::new(&ca, &ca.issue(30));
    let server = TestServer::start_with(dir.config(0)).await;
    let refused = plain_get(&server, "/healthz").await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.contains("use https:// or wss://"), "{refused}");
    let counted = metric(
        &server,
        &ca,
        "herald_tcp_closed_early_total{reason=\"plain_http_on_tls\"}",
    )
    .await;
    assert_eq!(counted, Some(1.0));
    server.shutdown().await;

    let mut config = dir.config(0);
    config.tls.plain_http = herald_server::config::PlainHttp::Redirect;
    let server = TestServer::start_with(config).await;
    let redirected = plain_get(&server, "/v1/usage?x=1").await;
    assert!(redirected.starts_with("HTTP/1.1 308"), "{redirected}");
    let location = format!(
        "location: https://127.0.0.1:{}/v1/usage?x=1",
        server.addr.port()
    );
    assert!(
        redirected.to_lowercase().contains(&location),
        "{redirected}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_pair_that_does_not_load_stops_the_node_from_starting() {
    let ca = TestCa::new();
    let dir = TlsDir::new(&ca, &ca.issue(30));
    // The key of another certificate.
    replace(&dir.key(), ca.issue(30).key_pem.as_bytes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = herald_server::run(listener, dir.config(0), std::future::pending())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not the private key"), "{e}");

    let mut config = dir.config(0);
    config.tls.cert = Some(dir.dir.join("missing.pem"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = herald_server::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
}

/// `openssl s_client` against the node with extra `args`; its output.
async fn s_client(server: &TestServer, ca: &std::path::Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &server.addr.to_string(), "-CAfile"])
        .arg(ca)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl (Debian's openssl package) runs the cipher-policy test");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An independent TLS stack checks the policy: TLS 1.1 and CBC suites are refused by the server
/// (a handshake-failure alert; the client is told to allow them at security level 0), TLS 1.2
/// with ECDHE-AES-GCM and TLS 1.3 are served.
#[tokio::test]
async fn the_policy_refuses_tls11_and_cbc_and_serves_tls12_gcm_and_tls13() {
    let ca = TestCa::new();
    let dir = TlsDir::new(&ca, &ca.issue(30));
    let server = TestServer::start_with(dir.config(0)).await;
    for refused in [
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"][..],
        &[
            "-tls1_2",
            "-cipher",
            "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384@SECLEVEL=0",
        ],
    ] {
        let out = s_client(&server, &dir.ca(), refused).await;
        assert!(
            out.contains("alert handshake failure") && out.contains("Cipher is (NONE)"),
            "{refused:?} was not refused by the server:\n{out}"
        );
    }
    for (served, cipher) in [
        (
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"][..],
            "Cipher is ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (&["-tls1_3"], "Cipher is TLS_AES_256_GCM_SHA384"),
    ] {
        let out = s_client(&server, &dir.ca(), served).await;
        assert!(
            out.contains(cipher) && out.contains("Verify return code: 0 (ok)"),
            "{served:?} was not served:\n{out}"
        );
    }
    server.shutdown().await;
}
