//! Credentials and the connect handshake (spec §1.2-§1.4, §2, §4.1, §7): every refusal is a
//! close code after a successful upgrade, with no `welcome` before it.
#![allow(clippy::unwrap_used)]
use herald_testkit::prelude::*;

use herald_protocol::claims::Claims;
use herald_server::config::{IceServer, SecretKeyConfig};
use serde_json::json;
use std::time::{Duration, Instant};

fn is_uuid_v4_lowercase(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && s.chars()
            .enumerate()
            .filter(|(i, _)| ![8, 13, 18, 23].contains(i))
            .all(|(_, c)| c.is_ascii_digit() || ('a'..='f').contains(&c))
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

// ---- welcome shape ---------------------------------------------------------------------------

#[tokio::test]
async fn pk_welcome_shape() {
    let server = TestServer::start().await;
    let before = now();
    let (_c, w) = server.welcomed(&format!("key={PK}")).await;
    let after = now();
    let obj = w.as_object().unwrap();
    let peer_id = w["peerId"].as_str().unwrap();
    assert!(is_uuid_v4_lowercase(peer_id), "{peer_id}");
    // `expiresAt` must be present even when null (the JS parser needs the key).
    assert!(obj.contains_key("expiresAt"), "{w}");
    assert!(w["expiresAt"].is_null(), "{w}");
    let server_time = w["serverTime"].as_i64().expect("integer serverTime");
    assert!(
        (before..=after).contains(&server_time),
        "serverTime in Unix seconds: {w}"
    );
    assert_eq!(w["maxMessageSize"], 65536);
    // No TURN configured and no JWT metadata: no metadata key at all.
    assert!(!obj.contains_key("metadata"), "{w}");
    for key in obj.keys() {
        assert!(
            matches!(
                key.as_str(),
                "type" | "peerId" | "expiresAt" | "serverTime" | "maxMessageSize"
            ),
            "unexpected welcome key {key}"
        );
    }
}

#[tokio::test]
async fn pk_gets_a_fresh_peer_id_on_every_connect() {
    let server = TestServer::start().await;
    let (_a, id_a) = server.pk_client(PK).await;
    let (_b, id_b) = server.pk_client(PK).await;
    assert_ne!(id_a, id_b);
}

#[tokio::test]
async fn jwt_welcome_shape() {
    let server = TestServer::start().await;
    let mut c = claims("alice");
    let exp = now() + 1234;
    c.exp = Some(exp);
    c.metadata = Some(raw(r#"{"plan":"gold","nested":{"a":[1,2]}}"#));
    let (_c, w) = server.welcomed(&format!("token={}", token_for(&c))).await;
    assert_eq!(w["peerId"], "alice");
    assert_eq!(w["expiresAt"], exp);
    assert!(w["serverTime"].is_i64());
    assert_eq!(w["maxMessageSize"], 65536);
    assert_eq!(w["metadata"], json!({"plan":"gold","nested":{"a":[1,2]}}));
}

#[tokio::test]
async fn jwt_metadata_is_passed_verbatim() {
    let server = TestServer::start().await;
    let mut c = claims("alice");
    c.metadata = Some(raw(r#"{"n":1500.0,"s":"\u00e9"}"#));
    let mut client = Client::connect(&server.token_url(&token_for(&c))).await;
    let text = client.recv_text().await;
    assert!(
        text.contains(r#""metadata":{"n":1500.0,"s":"\u00e9"}"#),
        "{text}"
    );
}

fn turn_config() -> herald_server::Config {
    config_with(|c| {
        c.turn.ice_servers = vec![IceServer {
            urls: vec!["turn:turn.example.com:3478".into()],
            username: Some("u".into()),
            credential: Some("c".into()),
        }];
    })
}

#[tokio::test]
async fn ice_servers_are_injected_into_welcome_metadata() {
    let server = TestServer::start_with(turn_config()).await;
    let injected = json!([{"urls":["turn:turn.example.com:3478"],"username":"u","credential":"c"}]);

    // pk: metadata holds only the injected iceServers.
    let (_pk, w) = server.welcomed(&format!("key={PK}")).await;
    assert_eq!(w["metadata"], json!({ "iceServers": injected }), "{w}");

    // JWT without metadata.
    let (_a, w) = server.welcomed(&format!("token={}", token("a"))).await;
    assert_eq!(w["metadata"], json!({ "iceServers": injected }), "{w}");

    // JWT with metadata: merged.
    let mut c = claims("b");
    c.metadata = Some(raw(r#"{"plan":"gold"}"#));
    let (_b, w) = server.welcomed(&format!("token={}", token_for(&c))).await;
    assert_eq!(
        w["metadata"],
        json!({"plan":"gold","iceServers":injected}),
        "{w}"
    );

    // JWT with its own iceServers: the token wins.
    let own = r#"{"iceServers":[{"urls":"stun:stun.example.org"}]}"#;
    let mut c = claims("c");
    c.metadata = Some(raw(own));
    let (_c, w) = server.welcomed(&format!("token={}", token_for(&c))).await;
    assert_eq!(
        w["metadata"],
        serde_json::from_str::<serde_json::Value>(own).unwrap()
    );
}

#[tokio::test]
async fn ice_servers_are_not_injected_when_the_key_opts_out() {
    let mut config = turn_config();
    for key in &mut config.apps[0].secret_keys {
        key.auto_inject_turn = false;
    }
    let server = TestServer::start_with(config).await;
    let (_a, w) = server.welcomed(&format!("token={}", token("a"))).await;
    assert!(w.get("metadata").is_none(), "{w}");
}

// ---- forged and invalid tokens: 4001, no welcome ------------------------------------------------

#[tokio::test]
async fn forge_helper_produces_accepted_tokens() {
    // Guards the forging helper itself, so the refusals below are meaningful.
    let server = TestServer::start().await;
    let t = forge(&hs256_header(SK_ID), &claims_json("alice", ""), SK_SECRET);
    let (_c, w) = server.welcomed(&format!("token={t}")).await;
    assert_eq!(w["peerId"], "alice");
}

#[tokio::test]
async fn wrong_secret_is_4001() {
    let server = TestServer::start().await;
    let t = sign(SK_ID, "not_the_secret_0123456789abcdef", &claims("alice"));
    assert_eq!(server.refused_token(&t).await, 4001);
    // Signed by another app's key but naming this app's kid.
    let t = sign(SK_ID, OTHER_SK_SECRET, &claims("alice"));
    assert_eq!(server.refused_token(&t).await, 4001);
}

#[tokio::test]
async fn unknown_kid_is_4001() {
    let server = TestServer::start().await;
    let t = sign("sk_id_nope", SK_SECRET, &claims("alice"));
    assert_eq!(server.refused_token(&t).await, 4001);
}

#[tokio::test]
async fn missing_or_empty_kid_is_4001() {
    let server = TestServer::start().await;
    let t = forge(r#"{"alg":"HS256"}"#, &claims_json("a", ""), SK_SECRET);
    assert_eq!(server.refused_token(&t).await, 4001);
    let t = forge(
        r#"{"alg":"HS256","kid":""}"#,
        &claims_json("a", ""),
        SK_SECRET,
    );
    assert_eq!(server.refused_token(&t).await, 4001);
}

#[tokio::test]
async fn revoked_secret_key_is_4001() {
    let config = config_with(|c| {
        c.apps[0].secret_keys.push(SecretKeyConfig {
            id: "sk_id_revoked".into(),
            secret: "sk_secret_revoked_0123456789abcdef".into(),
            channel_patterns: vec!["**".into()],
            actions: herald_protocol::Action::ALL.to_vec(),
            auto_inject_turn: true,
            revoked: true,
        });
    });
    let server = TestServer::start_with(config).await;
    let t = sign(
        "sk_id_revoked",
        "sk_secret_revoked_0123456789abcdef",
        &claims("a"),
    );
    assert_eq!(server.refused_token(&t).await, 4001);
}

#[tokio::test]
async fn alg_none_and_other_algs_are_4001() {
    let server = TestServer::start().await;
    let payload = b64url(claims_json("alice", "").as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = b64url(format!(r#"{{"alg":"{alg}","kid":"{SK_ID}"}}"#).as_bytes());
        // Unsigned, and also with a trailing signature that would be valid for HS256.
        let unsigned = format!("{header}.{payload}.");
        assert_eq!(server.refused_token(&unsigned).await, 4001, "{alg}");
        let signed = forge(
            &format!(r#"{{"alg":"{alg}","kid":"{SK_ID}"}}"#),
            &claims_json("alice", ""),
            SK_SECRET,
        );
        assert_eq!(server.refused_token(&signed).await, 4001, "{alg}");
    }
    for alg in ["HS512", "HS384", "RS256", "hs256"] {
        let t = forge(
            &format!(r#"{{"alg":"{alg}","kid":"{SK_ID}"}}"#),
            &claims_json("alice", ""),
            SK_SECRET,
        );
        assert_eq!(server.refused_token(&t).await, 4001, "{alg}");
    }
}

#[tokio::test]
async fn tampered_claims_are_4001() {
    let server = TestServer::start().await;
    let good = token("alice");
    let parts: Vec<&str> = good.split('.').collect();
    // Swap in a different payload but keep the original signature.
    let forged_payload = b64url(claims_json("mallory", "").as_bytes());
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(server.refused_token(&tampered).await, 4001);
    // Elevate permissions in the payload.
    let mut narrow = claims("alice");
    narrow.permissions = Some(vec!["subscribe".into()]);
    let t = token_for(&narrow);
    let parts: Vec<&str> = t.split('.').collect();
    let elevated = b64url(claims_json("alice", r#""permissions":["publish","send"]"#).as_bytes());
    let tampered = format!("{}.{}.{}", parts[0], elevated, parts[2]);
    assert_eq!(server.refused_token(&tampered).await, 4001);
    // A flipped signature byte.
    let mut sig: Vec<char> = parts[2].chars().collect();
    sig[3] = if sig[3] == 'A' { 'B' } else { 'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        sig.into_iter().collect::<String>()
    );
    assert_eq!(server.refused_token(&flipped).await, 4001);
}

#[tokio::test]
async fn malformed_tokens_are_4001() {
    let server = TestServer::start().await;
    for t in [
        "garbage",
        "a.b",
        "a.b.c.d",
        "%00%01",
        "e30.e30.e30",
        "....",
        "eyJhbGciOiJIUzI1NiJ9",
    ] {
        assert_eq!(server.refused_token(t).await, 4001, "{t}");
    }
    // A payload that is not JSON, validly signed.
    let header = b64url(hs256_header(SK_ID).as_bytes());
    let payload = b64url(b"not json");
    let t = forge(&hs256_header(SK_ID), "not json", SK_SECRET);
    assert!(t.starts_with(&format!("{header}.{payload}.")));
    assert_eq!(server.refused_token(&t).await, 4001);
}

#[tokio::test]
async fn bad_claims_are_4001() {
    let server = TestServer::start().await;
    let exp = now() + 3600;
    let cases: Vec<String> = vec![
        // Missing exp (spec Q4).
        r#"{"sub":"alice"}"#.into(),
        // Missing / wrong-typed / invalid sub.
        format!(r#"{{"exp":{exp}}}"#),
        format!(r#"{{"sub":7,"exp":{exp}}}"#),
        format!(r#"{{"sub":"","exp":{exp}}}"#),
        format!(r#"{{"sub":"zoë","exp":{exp}}}"#),
        format!(r#"{{"sub":"tab\there","exp":{exp}}}"#),
        format!(r#"{{"sub":"{}","exp":{exp}}}"#, "a".repeat(129)),
        // exp of the wrong type.
        format!(r#"{{"sub":"alice","exp":"{exp}"}}"#),
        // channels / permissions of the wrong type, over the caps, unknown permission.
        claims_json("alice", r#""channels":"room/1""#),
        claims_json("alice", r#""permissions":"publish""#),
        claims_json(
            "alice",
            &format!(r#""channels":[{}]"#, vec!["\"c\""; 101].join(",")),
        ),
        claims_json(
            "alice",
            &format!(r#""permissions":[{}]"#, vec!["\"publish\""; 17].join(",")),
        ),
        claims_json("alice", r#""permissions":["admin"]"#),
        // metadata / peerMetadata not objects.
        claims_json("alice", r#""metadata":[1,2]"#),
        claims_json("alice", r#""metadata":"x""#),
        claims_json("alice", r#""peerMetadata":"Alice""#),
        claims_json("alice", r#""peerMetadata":[{"a":1}]"#),
        claims_json("alice", r#""peerMetadata":42"#),
        // Oversized bags: peerMetadata > 4 KB, metadata > 8 KB.
        claims_json(
            "alice",
            &format!(r#""peerMetadata":{{"x":"{}"}}"#, "y".repeat(4096)),
        ),
        claims_json(
            "alice",
            &format!(r#""metadata":{{"x":"{}"}}"#, "y".repeat(8192)),
        ),
        // nbf well in the future.
        claims_json("alice", &format!(r#""nbf":{}"#, now() + 3600)),
    ];
    for claims in cases {
        let t = forge(&hs256_header(SK_ID), &claims, SK_SECRET);
        let shown = &claims[..claims.len().min(80)];
        assert_eq!(server.refused_token(&t).await, 4001, "{shown}");
    }
}

#[tokio::test]
async fn peer_metadata_at_the_cap_is_accepted() {
    let server = TestServer::start().await;
    // {"x":"…"} serialized to exactly 4096 bytes.
    let bag = format!(r#"{{"x":"{}"}}"#, "y".repeat(4096 - 8));
    assert_eq!(bag.len(), 4096);
    let t = token_with_meta("alice", &bag);
    let (_c, w) = server.welcomed(&format!("token={t}")).await;
    assert_eq!(w["peerId"], "alice");
}

#[tokio::test]
async fn unknown_claims_are_ignored() {
    let server = TestServer::start().await;
    let t = forge(
        &format!(r#"{{"alg":"HS256","kid":"{SK_ID}","typ":"JWT","cty":"x"}}"#),
        &claims_json(
            "alice",
            r#""iss":"your-backend","aud":["x"],"jti":"1","custom":{"a":1}"#,
        ),
        SK_SECRET,
    );
    let (_c, w) = server.welcomed(&format!("token={t}")).await;
    assert_eq!(w["peerId"], "alice");
}

#[tokio::test]
async fn expired_token_is_4002() {
    let server = TestServer::start().await;
    let mut c = claims("alice");
    c.exp = Some(now() - 10);
    assert_eq!(server.refused_token(&token_for(&c)).await, 4002);
}

#[tokio::test]
async fn token_expiring_during_the_session_closes_4002_before_exp() {
    let grace = Duration::from_millis(300);
    let config = config_with(|c| c.engine.reconnect_grace_ms = grace.as_millis() as u64);
    let server = TestServer::start_with(config).await;
    let mut watcher = server.client("watcher").await;
    watcher.subscribe("room/exp").await;

    let exp = now() + 2;
    let mut c = claims("shortlived");
    c.exp = Some(exp);
    let started = Instant::now();
    let mut client = server.client_with_token(&token_for(&c)).await;
    client.subscribe("room/exp").await;
    let joined = watcher.recv().await;
    assert_eq!(peer_ids(&joined["joined"]), vec!["shortlived"]);

    let (code, frames) = client.recv_close().await;
    let elapsed = started.elapsed();
    let closed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(code, 4002, "{frames:?}");
    assert!(frames.is_empty(), "{frames:?}");
    // exp is whole seconds, so it is 1-2 s away at connect; the close comes ~250 ms before it.
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed <= Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(
        closed_at_ms <= exp * 1000 + 750,
        "closed after exp: {closed_at_ms} vs {exp}"
    );
    assert!(
        closed_at_ms >= exp * 1000 - 1250,
        "closed far too early: {closed_at_ms} vs {exp}"
    );
    // The expiry is retryable (the SDK reconnects with a fresh token): a drop, so the others
    // see `left` once the reconnect grace runs out.
    let closed_at = Instant::now();
    let left = watcher.recv().await;
    assert!(closed_at.elapsed() >= grace, "left inside the grace");
    assert_eq!(
        left,
        json!({"type":"presence","channel":"room/exp","joined":[],"left":[{"peerId":"shortlived"}]})
    );
}

// ---- publishable keys and Origin -------------------------------------------------------------------

#[tokio::test]
async fn unknown_revoked_and_misplaced_pk_are_4001() {
    let server = TestServer::start().await;
    assert_eq!(server.refused("key=pk_live_nope").await, 4001);
    assert_eq!(server.refused(&format!("key={REVOKED_PK}")).await, 4001);
    // A JWT passed as `key`, and a pk passed as `token`.
    assert_eq!(
        server.refused(&format!("key={}", token("alice"))).await,
        4001
    );
    assert_eq!(server.refused(&format!("token={PK}")).await, 4001);
    // A secret key id is not a publishable key.
    assert_eq!(server.refused(&format!("key={SK_ID}")).await, 4001);
}

#[tokio::test]
async fn both_or_neither_credential_is_4001() {
    let server = TestServer::start().await;
    let t = token("alice");
    assert_eq!(server.refused(&format!("token={t}&key={PK}")).await, 4001);
    assert_eq!(server.refused(&format!("key={PK}&token={t}")).await, 4001);
    assert_eq!(server.refused("").await, 4001);
    assert_eq!(server.refused("foo=bar").await, 4001);
    assert_eq!(server.refused("token=").await, 4001);
    assert_eq!(server.refused("key=").await, 4001);
    // Repeated parameters are ambiguous too.
    assert_eq!(server.refused(&format!("key={PK}&key={PK}")).await, 4001);
    // No query string at all.
    let mut c = Client::connect(&format!("ws://{}/v1", server.addr)).await;
    let (code, frames) = c.recv_close().await;
    assert_eq!((code, frames.len()), (4001, 0));
}

#[tokio::test]
async fn credentials_are_percent_decoded_and_extra_params_ignored() {
    let server = TestServer::start().await;
    let t = token("alice");
    // Percent-encode every character of the token.
    let encoded: String = t.bytes().map(|b| format!("%{b:02X}")).collect();
    let (_c, w) = server
        .welcomed(&format!("v=2&token={encoded}&sdk=js"))
        .await;
    assert_eq!(w["peerId"], "alice");
    let (_c, w) = server.welcomed("key=pk%5Flive%5Ftest&x=1").await;
    assert!(w["expiresAt"].is_null());
}

#[tokio::test]
async fn origin_restricted_pk() {
    let server = TestServer::start().await;
    let url = server.url(&format!("key={PK_ORIGIN}"));
    // Missing Origin (every non-browser client).
    let mut c = Client::connect(&url).await;
    assert_eq!(c.recv_close().await, (4001, vec![]));
    // Wrong origin, wrong scheme, wrong port.
    for origin in [
        "https://evil.example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.com",
        "null",
    ] {
        let mut c = Client::connect_with_headers(&url, &[("Origin", origin)]).await;
        assert_eq!(c.recv_close().await, (4001, vec![]), "{origin}");
    }
    // Exact match, and the same origin in other case / with a trailing slash.
    for origin in [
        ALLOWED_ORIGIN,
        "HTTPS://APP.EXAMPLE.COM",
        "https://app.example.com/",
    ] {
        let mut c = Client::connect_with_headers(&url, &[("Origin", origin)]).await;
        let w = c.recv().await;
        assert_eq!(w["type"], "welcome", "{origin}: {w}");
    }
}

#[tokio::test]
async fn origin_is_not_checked_for_unrestricted_pk_or_jwt() {
    let server = TestServer::start().await;
    let mut c = Client::connect_with_headers(
        &server.url(&format!("key={PK}")),
        &[("Origin", "https://anything.example")],
    )
    .await;
    assert_eq!(c.recv().await["type"], "welcome");
    let mut c = Client::connect_with_headers(
        &server.token_url(&token("alice")),
        &[("Origin", "https://evil.example.com")],
    )
    .await;
    assert_eq!(c.recv().await["type"], "welcome");
}

// ---- channels claim, suspension, rotation ---------------------------------------------------------

#[tokio::test]
async fn channels_claim_outside_the_key_is_4003() {
    let server = TestServer::start().await;
    for outside in [
        vec!["lobby"],
        vec!["room/a", "lobby"],
        vec!["room/**"],
        vec!["room/a/b"],
        vec!["**"],
    ] {
        let mut c = claims("alice");
        c.channels = Some(outside.iter().map(|s| s.to_string()).collect());
        let t = sign(SK_NARROW_ID, SK_NARROW_SECRET, &c);
        assert_eq!(server.refused_token(&t).await, 4003, "{outside:?}");
    }
    for inside in [vec!["room/a"], vec!["room/*"], vec!["room/a", "room/b-*"]] {
        let mut c = claims("alice");
        c.channels = Some(inside.iter().map(|s| s.to_string()).collect());
        let t = sign(SK_NARROW_ID, SK_NARROW_SECRET, &c);
        let (_c, w) = server.welcomed(&format!("token={t}")).await;
        assert_eq!(w["peerId"], "alice", "{inside:?}");
    }
}

#[tokio::test]
async fn suspended_app_is_4012() {
    let server = TestServer::start().await;
    let t = sign(SUSPENDED_SK_ID, SUSPENDED_SK_SECRET, &claims("alice"));
    assert_eq!(server.refused_token(&t).await, 4012);
}

#[tokio::test]
async fn rotated_key_tokens_work_alongside_the_old_one() {
    let server = TestServer::start().await;
    let mut old = server.client("alice").await;
    let t = sign(SK2_ID, SK2_SECRET, &claims("bob"));
    let mut new = server.client_with_token(&t).await;
    // Both keys belong to the same app: they see each other.
    old.subscribe("room/rot").await;
    let (_, snap) = new.subscribe("room/rot").await;
    assert_eq!(peer_ids(&snap["joined"]), vec!["alice"]);
    new.send_to("alice", json!("hi"), "d1").await;
    assert_eq!(old.recv().await["type"], "presence");
    assert_eq!(
        old.recv().await,
        json!({"type":"direct","from":"bob","data":"hi"})
    );
    // A token signed by SK2's secret but naming SK's kid does not verify.
    let t = sign(SK_ID, SK2_SECRET, &claims("carol"));
    assert_eq!(server.refused_token(&t).await, 4001);
}

#[tokio::test]
async fn other_apps_key_cannot_reach_this_app() {
    let server = TestServer::start().await;
    let t = sign(OTHER_SK_ID, OTHER_SK_SECRET, &claims("alice"));
    let (_c, w) = server.welcomed(&format!("token={t}")).await;
    assert_eq!(w["peerId"], "alice");
}

#[tokio::test]
async fn the_same_claims_struct_through_the_cli_signer_is_accepted() {
    // `Claims` with every optional claim, signed by the protocol crate (as `herald token` does).
    let server = TestServer::start().await;
    let c = Claims {
        sub: "alice".into(),
        exp: Some(now() + 60),
        iat: Some(now()),
        nbf: Some(now() - 5),
        channels: Some(vec!["room/**".into()]),
        permissions: Some(vec![
            "publish".into(),
            "subscribe".into(),
            "presence".into(),
            "send".into(),
        ]),
        metadata: Some(raw(r#"{"k":"v"}"#)),
        peer_metadata: Some(raw(r#"{"username":"Alice"}"#)),
    };
    let (_c, w) = server.welcomed(&format!("token={}", token_for(&c))).await;
    assert_eq!(w["metadata"], json!({"k":"v"}));
}

#[tokio::test]
async fn verification_order() {
    // Spec §2.2: parse/kid/signature (4001) → claims (4001) → exp (4002) → suspension (4012)
    // → channels claim vs key (4003).
    let mut config = test_config();
    let mut narrow_suspended = config.apps[2].secret_keys[0].clone();
    narrow_suspended.id = "sk_id_suspended_narrow".into();
    narrow_suspended.channel_patterns = vec!["room/*".into()];
    config.apps[2].secret_keys.push(narrow_suspended);
    let server = TestServer::start_with(config).await;
    let past = now() - 100;
    let expired = |sub: &str| {
        let mut c = claims(sub);
        c.exp = Some(past);
        c
    };
    // Expired but badly signed / unknown kid / bad claims: 4001 wins.
    let t = sign(SK_ID, "wrong_secret_0123456789abcdefgh", &expired("a"));
    assert_eq!(server.refused_token(&t).await, 4001);
    let t = sign("sk_id_nope", SK_SECRET, &expired("a"));
    assert_eq!(server.refused_token(&t).await, 4001);
    let mut c = expired("a");
    c.peer_metadata = Some(raw("[1]"));
    assert_eq!(server.refused_token(&token_for(&c)).await, 4001);
    // Expired in a suspended app: 4002 before 4012.
    let t = sign(SUSPENDED_SK_ID, SUSPENDED_SK_SECRET, &expired("a"));
    assert_eq!(server.refused_token(&t).await, 4002);
    // Expired with a channels claim outside the key: 4002 before 4003.
    let mut c = expired("a");
    c.channels = Some(vec!["lobby".into()]);
    let t = sign(SK_NARROW_ID, SK_NARROW_SECRET, &c);
    assert_eq!(server.refused_token(&t).await, 4002);
    // Suspended with a channels claim outside the key: 4012 before 4003.
    let mut c = claims("a");
    c.channels = Some(vec!["lobby".into()]);
    let t = sign("sk_id_suspended_narrow", SUSPENDED_SK_SECRET, &c);
    assert_eq!(server.refused_token(&t).await, 4012);
}
