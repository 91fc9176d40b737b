//! The demo app at `/` and `POST /dev/token`: served only when switched on, with a strict CSP;
//! tokens signed with the first app's first secret key, carrying `{username, avatarUrl, color}`;
//! inputs validated; a clear 403 when dev tokens are off.
#![allow(clippy::unwrap_used)]
use base64::Engine as _;
use herald_testkit::prelude::*;
use serde_json::{json, Value};

async fn post_token(server: &TestServer, body: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/dev/token", server.addr))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn start(demo: bool, dev_tokens: bool) -> TestServer {
    let mut config = test_config();
    config.web.demo = demo;
    config.web.dev_tokens = dev_tokens;
    TestServer::start_with(config).await
}

fn claims_of(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut decode = || {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next().unwrap())
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    (decode(), decode())
}

#[tokio::test]
async fn dev_tokens_are_refused_with_a_clear_message_when_off() {
    let server = start(true, false).await;
    let (status, body) = post_token(&server, r#"{"username":"Ana"}"#).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "dev_tokens_disabled");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("disabled on this server"), "{message}");
    assert!(message.contains("dev_tokens"), "{message}");
}

#[tokio::test]
async fn a_dev_token_connects_with_its_peer_metadata() {
    let server = start(true, true).await;
    let (status, body) = post_token(
        &server,
        r##"{"username":"  Ana <b>  ","avatarUrl":"https://example.com/ana.png","color":"#DB2777"}"##,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let peer_id = body["peerId"].as_str().unwrap().to_string();
    assert!(
        peer_id.starts_with("u-") && peer_id.len() == 14,
        "{peer_id}"
    );
    let meta = json!({"username": "Ana <b>", "avatarUrl": "https://example.com/ana.png", "color": "#db2777"});
    assert_eq!(body["peerMetadata"], meta);
    let token = body["token"].as_str().unwrap();
    let (header, claims) = claims_of(token);
    assert_eq!(
        header["kid"], SK_ID,
        "the first app's first secret key signs"
    );
    assert_eq!(claims["sub"], peer_id.as_str());
    assert_eq!(claims["peerMetadata"], meta);
    assert_eq!(claims["exp"], body["expiresAt"]);
    let ttl = claims["exp"].as_i64().unwrap() - now();
    assert!((3590..=3600).contains(&ttl), "{ttl}");

    // The token works, and others see the metadata in presence.
    let mut bob = server.client("bob").await;
    bob.subscribe("demo/lobby").await;
    let mut ana = Client::connect(&server.token_url(token)).await;
    let welcome = ana.recv().await;
    assert_eq!(welcome["peerId"], peer_id.as_str());
    ana.subscribe("demo/lobby").await;
    let delta = bob.recv().await;
    assert_eq!(delta["joined"][0]["peerId"], peer_id.as_str());
    assert_eq!(delta["joined"][0]["metadata"], meta);

    // A refresh that proves the peer id with the previous token keeps it; without a colour one
    // is picked.
    let (status, again) = post_token(
        &server,
        &json!({"username": "Ana", "peerId": peer_id, "previousToken": token}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["peerId"], peer_id.as_str());
    let color = again["peerMetadata"]["color"].as_str().unwrap();
    assert!(color.len() == 7 && color.starts_with('#'), "{color}");
    assert!(again["peerMetadata"].get("avatarUrl").is_none());
}

#[tokio::test]
async fn dev_token_inputs_are_validated() {
    let server = start(true, true).await;
    let long_name = "x".repeat(41);
    let cases = [
        json!({"username": ""}),
        json!({"username": "   "}),
        json!({"username": long_name}),
        json!({"username": "a\u{7}b"}),
        json!({"username": 7}),
        json!({}),
        json!({"username": "Ana", "avatarUrl": "javascript:alert(1)"}),
        json!({"username": "Ana", "avatarUrl": "data:image/png;base64,AAAA"}),
        json!({"username": "Ana", "avatarUrl": "//evil.example/a.png"}),
        json!({"username": "Ana", "color": "red"}),
        json!({"username": "Ana", "peerId": "has space"}),
        json!({"username": "Ana", "peerId": "x".repeat(65)}),
    ];
    for case in cases {
        let (status, body) = post_token(&server, &case.to_string()).await;
        assert_eq!(status, 400, "{case} -> {body}");
        assert_eq!(body["error"], "invalid_request", "{case}");
    }
    let (status, _) = post_token(&server, "not json").await;
    assert_eq!(status, 400);
    let huge = json!({"username": "Ana", "pad": "x".repeat(5000)}).to_string();
    let (status, _) = post_token(&server, &huge).await;
    assert_eq!(status, 413);
    // 40 characters is fine, even when they are not ASCII.
    let (status, body) =
        post_token(&server, &json!({"username": "é".repeat(40)}).to_string()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_a_strict_csp() {
    let server = start(true, false).await;
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("http://{}/", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(
        csp.contains(&format!(
            "connect-src 'self' ws://{0} wss://{0};",
            server.addr
        )),
        "{csp}"
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/app/app.js"></script>"#));
    for (file, content_type) in [
        ("app.js", "text/javascript"),
        ("herald-client.js", "text/javascript"),
        ("call.js", "text/javascript"),
        ("ui.js", "text/javascript"),
        ("app.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let resp = http
            .get(format!("http://{}/app/{file}", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{file}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(content_type),
            "{file}"
        );
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    }
    let resp = http
        .get(format!("http://{}/app/missing.js", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn demo_off_serves_no_page() {
    let server = start(false, true).await;
    for path in ["/", "/app/app.js"] {
        let resp = reqwest::get(format!("http://{}{path}", server.addr))
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
    }
    // The token endpoint is its own switch.
    let (status, _) = post_token(&server, r#"{"username":"Ana"}"#).await;
    assert_eq!(status, 200);
}
