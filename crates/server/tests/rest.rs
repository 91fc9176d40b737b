//! The REST control plane (spec §13) against a real server: every endpoint's success path and
//! every documented error status.
#![allow(clippy::unwrap_used)]
use herald_protocol::jwt::UnverifiedToken;
use herald_testkit::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const AUTH: &str = "Bearer sk_id_test:sk_secret_test_0123456789abcdef";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &TestServer) -> Api {
        Api {
            base: format!("http://{}", server.addr),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(AUTH), Some(body.to_string()))
            .await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(AUTH), None).await
    }
}

fn assert_error(got: (StatusCode, Value), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "{:?}", got.1);
    assert_eq!(got.1["error"], code, "{:?}", got.1);
    assert!(got.1["message"].is_string());
}

#[tokio::test]
async fn every_401_cause_gets_the_same_response() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let causes = [
        None,
        Some("Basic abc"),
        Some("Bearer "),
        Some("Bearer sk_id_test"),
        Some("Bearer sk_id_test:wrong"),
        Some("Bearer sk_id_nope:sk_secret_test_0123456789abcdef"),
        Some("Bearer pk_live_test"),
        Some("Bearer not-a-secret"),
    ];
    let mut bodies = Vec::new();
    for auth in causes {
        let (status, body) = api.call(Method::GET, "/v1/usage", auth, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    // The legacy single-string secret works.
    let (status, _) = api
        .call(
            Method::GET,
            "/v1/usage",
            Some("Bearer sk_secret_test_0123456789abcdef"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn minted_tokens_connect_and_carry_the_requested_claims() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let (status, body) = api
        .post(
            "/v1/tokens",
            json!({"peerId": "u_alice", "channels": ["room/*"], "permissions": ["subscribe", "presence"],
                   "expiresInSec": 600, "metadata": {"k": 1}, "peerMetadata": {"username": "Alice"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap();
    let exp = body["expiresAt"].as_i64().unwrap();
    assert!((exp - now() - 600).abs() <= 2);
    let parsed = UnverifiedToken::parse(token).unwrap();
    assert_eq!(parsed.kid(), SK_ID);
    let claims = parsed.verify(SK_SECRET.as_bytes()).unwrap();
    assert_eq!(claims.sub, "u_alice");
    assert!(claims.iat.is_some());

    let mut c = Client::connect(&server.token_url(token)).await;
    let welcome = c.recv().await;
    assert_eq!(welcome["peerId"], "u_alice");
    assert_eq!(welcome["expiresAt"], exp);
    assert_eq!(welcome["metadata"], json!({"k": 1}));
    c.subscribe("room/1").await;
    let err = c
        .request(
            json!({"type": "publish", "channel": "room/1", "data": 1}),
            "p",
        )
        .await;
    assert_eq!(err["code"], "action_not_permitted");
    let err = c
        .request(json!({"type": "subscribe", "channel": "lobby"}), "s")
        .await;
    assert_eq!(err["code"], "channel_not_authorized");
}

#[tokio::test]
async fn token_request_validation() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let cases = [
        (json!({}), 400, "invalid_request"),
        (json!({"peerId": ""}), 400, "invalid_request"),
        (json!({"peerId": "zoë"}), 400, "invalid_request"),
        (json!({"peerId": 5}), 400, "invalid_request"),
        (
            json!({"peerId": "a", "expiresInSec": 86401}),
            400,
            "invalid_request",
        ),
        (
            json!({"peerId": "a", "expiresInSec": 0}),
            400,
            "invalid_request",
        ),
        (
            json!({"peerId": "a", "permissions": ["fly"]}),
            400,
            "invalid_request",
        ),
        (
            json!({"peerId": "a", "channels": vec!["c"; 101]}),
            400,
            "invalid_request",
        ),
        (
            json!({"peerId": "a", "channels": ["_system/x"]}),
            400,
            "channel_reserved",
        ),
        (
            json!({"peerId": "a", "metadata": [1]}),
            400,
            "invalid_request",
        ),
        (
            json!({"peerId": "a", "peerMetadata": {"x": "y".repeat(4100)}}),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        assert_error(api.post("/v1/tokens", body.clone()).await, status, code);
    }
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/tokens",
            Some(AUTH),
            Some("{not json".into()),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let big = format!(
        r#"{{"peerId":"a","metadata":{{"x":"{}"}}}}"#,
        "y".repeat(33 * 1024)
    );
    let (status, body) = api
        .call(Method::POST, "/v1/tokens", Some(AUTH), Some(big))
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (413, Some("invalid_request"))
    );
}

#[tokio::test]
async fn token_scope_uses_glob_language_inclusion() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let narrow = "Bearer sk_id_narrow:sk_secret_narrow_0123456789abcdef";
    let mint = |channels: Value, perms: Value| {
        let body = json!({"peerId": "a", "channels": channels, "permissions": perms}).to_string();
        api.call(Method::POST, "/v1/tokens", Some(narrow), Some(body))
    };
    // The key allows `room/*` and publish+subscribe.
    assert_eq!(
        mint(json!(["room/*", "room/x*", "room/a"]), json!(["publish"]))
            .await
            .0,
        StatusCode::OK
    );
    // `room/**` matches the text "room/*" but grants far more: refused.
    assert_error(
        mint(json!(["room/**"]), json!([])).await,
        403,
        "channel_not_authorized",
    );
    assert_error(
        mint(json!(["room/a/b"]), json!([])).await,
        403,
        "channel_not_authorized",
    );
    assert_error(
        mint(json!(["lobby"]), json!([])).await,
        403,
        "channel_not_authorized",
    );
    assert_error(
        mint(json!(["room/a"]), json!(["send"])).await,
        403,
        "action_not_permitted",
    );
}

#[tokio::test]
async fn channel_peers_in_both_path_forms() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let mut alice = server
        .client_with_meta("alice", r#"{"username":"Alice"}"#)
        .await;
    let mut carol = server.client("carol").await;
    alice.subscribe("app/room").await;
    carol.subscribe("app/room").await;
    for path in [
        "/v1/channels/app%2Froom/peers",
        "/v1/channels/app/room/peers",
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["channel"], "app/room");
        let mut peers = body["peers"].as_array().unwrap().clone();
        peers.sort_by_key(|p| p["peerId"].as_str().unwrap().to_string());
        assert_eq!(
            peers,
            vec![
                json!({"peerId": "alice", "metadata": {"username": "Alice"}}),
                json!({"peerId": "carol"})
            ]
        );
    }
    let (status, body) = api.get("/v1/channels/empty/peers").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"channel": "empty", "peers": []}))
    );
    assert_error(
        api.get("/v1/channels/_internal%2Fx/peers").await,
        400,
        "channel_reserved",
    );
    assert_error(
        api.get("/v1/channels/a%00b/peers").await,
        400,
        "invalid_request",
    );
    let narrow = "Bearer sk_id_narrow:sk_secret_narrow_0123456789abcdef";
    let got = api
        .call(
            Method::GET,
            "/v1/channels/room%2Fa/peers",
            Some(narrow),
            None,
        )
        .await;
    assert_error(got, 403, "action_not_permitted");
    // Another app's key sees nothing of this app.
    let other = "Bearer sk_id_other:sk_secret_other_0123456789abcdef";
    let (_, body) = api
        .call(
            Method::GET,
            "/v1/channels/app%2Froom/peers",
            Some(other),
            None,
        )
        .await;
    assert_eq!(body["peers"], json!([]));
}

#[tokio::test]
async fn server_publish_reaches_subscribers() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let mut opted_in = server.client("a").await;
    let mut plain = server.client("b").await;
    opted_in.subscribe_opts("dm/x", true).await;
    plain.subscribe("dm/x").await;
    opted_in.recv().await; // b joined

    let (status, body) = api
        .post(
            "/v1/channels/dm%2Fx/publish",
            json!({"data": {"n": 1}, "peerMetadata": {"displayName": "System"}}),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"channel": "dm/x", "delivered": 2}))
    );
    assert_eq!(
        opted_in.recv().await,
        json!({"type": "message", "channel": "dm/x", "from": "system", "data": {"n": 1}, "fromMetadata": {"displayName": "System"}})
    );
    assert_eq!(
        plain.recv().await,
        json!({"type": "message", "channel": "dm/x", "from": "system", "data": {"n": 1}})
    );

    let (status, _) = api
        .post(
            "/v1/channels/dm/x/publish",
            json!({"data": null, "from": "bot-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(plain.recv().await["from"], "bot-1");

    assert_error(
        api.post("/v1/channels/dm/x/publish", json!({"from": "x"}))
            .await,
        400,
        "invalid_request",
    );
    assert_error(
        api.post("/v1/channels/dm/x/publish", json!({"data": 1, "from": ""}))
            .await,
        400,
        "invalid_request",
    );
    assert_error(
        api.post("/v1/channels/_metered/x/publish", json!({"data": 1}))
            .await,
        400,
        "channel_reserved",
    );
    assert_error(
        api.post("/v1/channels/dm/*/publish", json!({"data": 1}))
            .await,
        400,
        "invalid_request",
    );
    let narrow = "Bearer sk_id_narrow:sk_secret_narrow_0123456789abcdef";
    let got = api
        .call(
            Method::POST,
            "/v1/channels/lobby/publish",
            Some(narrow),
            Some(r#"{"data":1}"#.into()),
        )
        .await;
    assert_error(got, 403, "channel_not_authorized");
    let big = format!(r#"{{"data":"{}"}}"#, "y".repeat(33 * 1024));
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/channels/dm/x/publish",
            Some(AUTH),
            Some(big),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (413, Some("invalid_request"))
    );
    plain.expect_silence(200).await;
}

#[tokio::test]
async fn kick_closes_every_connection_of_the_peer_with_4020() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let mut tab1 = server.client("x").await;
    let mut tab2 = server.client("x").await;
    let mut watcher = server.client("w").await;
    tab1.subscribe("room").await;
    tab2.subscribe("room").await;
    watcher.subscribe("room").await;
    let mut other_app =
        Client::connect(&server.token_url(&sign(OTHER_SK_ID, OTHER_SK_SECRET, &claims("x")))).await;
    other_app.recv().await;

    let (status, body) = api
        .call(Method::DELETE, "/v1/peers/x", Some(AUTH), None)
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"peerId": "x", "closed": 2}))
    );
    assert_eq!(tab1.recv_close().await.0, 4020);
    assert_eq!(tab2.recv_close().await.0, 4020);
    let left = watcher.recv().await;
    assert_eq!(
        left,
        json!({"type": "presence", "channel": "room", "joined": [], "left": [{"peerId": "x"}]})
    );
    watcher.expect_silence(200).await;
    // The same peer id in another app is untouched.
    other_app.send_json(json!({"type": "ping"})).await;
    assert_eq!(other_app.recv().await["type"], "pong");

    let (status, body) = api
        .call(Method::DELETE, "/v1/peers/nobody", Some(AUTH), None)
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"peerId": "nobody", "closed": 0}))
    );
    assert_error(
        api.call(Method::DELETE, "/v1/peers/a%07b", Some(AUTH), None)
            .await,
        400,
        "invalid_request",
    );
    assert_eq!(
        api.call(Method::DELETE, "/v1/peers/x", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn usage_reports_live_counters() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let mut a = server.client("a").await;
    let _b = server.client("b").await;
    a.request(json!({"type": "publish", "channel": "c", "data": 1}), "p")
        .await;
    a.request(json!({"type": "send", "to": "b", "data": 1}), "s")
        .await;
    let (status, body) = api.get("/v1/usage").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["appId"], APP);
    assert_eq!(body["concurrentNow"], 2);
    assert_eq!(body["peakConcurrent"], 2);
    assert_eq!(body["messagesUsed"], 2);
    assert_eq!(body["plan"]["name"], "SELF_HOSTED");
    assert!(body["plan"]["maxConcurrentConnections"].is_i64());
    assert!(body["periodStartUnix"].is_null());
}

#[tokio::test]
async fn unknown_endpoints_and_health() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    assert_error(api.get("/v1/nope").await, 404, "not_found");
    assert_error(api.get("/v1/channels/x/members").await, 404, "not_found");
    let (status, _) = api.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = api.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"accepting": true, "engine": true}))
    );
}

#[tokio::test]
async fn peers_listing_passes_metadata_through_byte_for_byte() {
    let server = TestServer::start().await;
    let meta = r#"{"z":1,"a":12345678901234567890123,"n":1500.0}"#;
    let mut c = server.client_with_meta("m", meta).await;
    c.subscribe("raw").await;
    let text = reqwest::Client::new()
        .get(format!("http://{}/v1/channels/raw/peers", server.addr))
        .header("authorization", AUTH)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text,
        format!(r#"{{"channel":"raw","peers":[{{"peerId":"m","metadata":{meta}}}]}}"#)
    );
}

/// A secret key with `presence` but limited to `room/*`, for scope checks.
const SCOPED: &str = "Bearer sk_id_scoped:sk_secret_scoped_0123456789abcdef";
const NARROW: &str = "Bearer sk_id_narrow:sk_secret_narrow_0123456789abcdef";
const OTHER: &str = "Bearer sk_id_other:sk_secret_other_0123456789abcdef";

fn with_scoped_key(config: &mut herald_server::Config) {
    let mut key = config.apps[0].secret_keys[0].clone();
    (key.id, key.secret) = (
        "sk_id_scoped".into(),
        "sk_secret_scoped_0123456789abcdef".into(),
    );
    key.channel_patterns = vec!["room/*".into()];
    key.actions = vec![herald_protocol::Action::Presence];
    config.apps[0].secret_keys.push(key);
}

/// `GET …/occupancy`: distinct peers and subscribed connections, in both path forms, with the
/// roster read's scope (the `presence` action and the key's patterns).
async fn occupancy_counts_and_is_scoped(server: &TestServer) {
    let api = Api::new(server);
    let get =
        |path: &'static str, auth: Option<&'static str>| api.call(Method::GET, path, auth, None);
    let mut clients = Vec::new();
    for (peer, channel) in [
        ("alice", "app/room"),
        ("alice", "app/room"),
        ("carol", "app/room"),
        ("dave", "room/a"),
    ] {
        let mut client = server.client(peer).await;
        client.subscribe(channel).await;
        clients.push(client);
    }
    let counts = |peers, connections| {
        (
            StatusCode::OK,
            json!({"peers": peers, "connections": connections}),
        )
    };
    assert_eq!(
        get("/v1/channels/app%2Froom/occupancy", Some(AUTH)).await,
        counts(2, 3)
    );
    assert_eq!(
        get("/v1/channels/app/room/occupancy", Some(AUTH)).await,
        counts(2, 3)
    );
    assert_eq!(
        get("/v1/channels/empty/occupancy", Some(AUTH)).await,
        counts(0, 0)
    );
    assert_eq!(
        get("/v1/channels/room%2Fa/occupancy", Some(SCOPED)).await,
        counts(1, 1)
    );
    // Another app's key sees nothing of this app.
    assert_eq!(
        get("/v1/channels/app%2Froom/occupancy", Some(OTHER)).await,
        counts(0, 0)
    );
    for (path, auth, status, code) in [
        (
            "/v1/channels/app%2Froom/occupancy",
            Some(SCOPED),
            403,
            "channel_not_authorized",
        ),
        (
            "/v1/channels/room%2Fa/occupancy",
            Some(NARROW),
            403,
            "action_not_permitted",
        ),
        ("/v1/channels/room%2Fa/occupancy", None, 401, "unauthorized"),
        (
            "/v1/channels/_internal%2Fx/occupancy",
            Some(AUTH),
            400,
            "channel_reserved",
        ),
        (
            "/v1/channels/room%2F*/occupancy",
            Some(AUTH),
            400,
            "invalid_request",
        ),
    ] {
        assert_error(get(path, auth).await, status, code);
    }
    let posted = api
        .call(Method::POST, "/v1/channels/x/occupancy", Some(AUTH), None)
        .await;
    assert_eq!(posted.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn channel_occupancy_on_memory() {
    let server = TestServer::start_with(config_with(with_scoped_key)).await;
    occupancy_counts_and_is_scoped(&server).await;
}

#[tokio::test]
async fn channel_occupancy_on_redis() {
    let cluster = herald_testkit::cluster::Cluster::redis_with(1, with_scoped_key).await;
    occupancy_counts_and_is_scoped(cluster.node(0)).await;
}
