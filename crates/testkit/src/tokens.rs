//! JWTs for the test keys: well-formed ones through the protocol's signer, and hand-forged ones
//! (any header, claims of the wrong type) for the auth tests.

use herald_protocol::claims::Claims;
use herald_protocol::jwt;
use serde_json::{json, Value};

use crate::config::{SK_ID, SK_SECRET};

/// Wall-clock Unix seconds, the unit of `exp` and `iat`.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims for `sub` valid for an hour.
pub fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        exp: Some(now() + 3600),
        iat: Some(now()),
        ..Claims::default()
    }
}

pub fn raw(json: &str) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json.to_string()).unwrap()
}

/// A token signed with the main test key.
pub fn token(sub: &str) -> String {
    jwt::sign(SK_ID, SK_SECRET.as_bytes(), &claims(sub))
}

/// A token with `peerMetadata`.
pub fn token_with_meta(sub: &str, peer_metadata: &str) -> String {
    let mut c = claims(sub);
    c.peer_metadata = Some(raw(peer_metadata));
    jwt::sign(SK_ID, SK_SECRET.as_bytes(), &c)
}

/// A token signed with the main key, valid for `ttl` seconds, with optional peer and private
/// metadata.
pub fn token_with(
    sub: &str,
    ttl: i64,
    peer_metadata: Option<Value>,
    metadata: Option<Value>,
) -> String {
    let raw = |v: Value| serde_json::value::RawValue::from_string(v.to_string()).unwrap();
    let claims = Claims {
        sub: sub.into(),
        exp: Some(now() + ttl),
        iat: Some(now()),
        peer_metadata: peer_metadata.map(raw),
        metadata: metadata.map(raw),
        ..Claims::default()
    };
    jwt::sign(SK_ID, SK_SECRET.as_bytes(), &claims)
}

/// `{"username": name}`, the peer metadata most SDK tests use.
pub fn meta(name: &str) -> Value {
    json!({ "username": name })
}

pub fn sign(kid: &str, secret: &str, claims: &Claims) -> String {
    jwt::sign(kid, secret.as_bytes(), claims)
}

/// A token signed with the main key for the given claims.
pub fn token_for(claims: &Claims) -> String {
    jwt::sign(SK_ID, SK_SECRET.as_bytes(), claims)
}

/// Base64url without padding (RFC 7515), for hand-forged tokens.
pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS from raw header and claims JSON, HMAC-SHA256-signed with `secret`. The header
/// is used verbatim (whatever `alg` it names): this is for forging and for claims of wrong types.
pub fn forge(header_json: &str, claims_json: &str, secret: &str) -> String {
    use hmac::{Hmac, Mac};
    let signing_input = format!(
        "{}.{}",
        b64url(header_json.as_bytes()),
        b64url(claims_json.as_bytes())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{signing_input}.{}", b64url(&sig))
}

/// Claims JSON (as text) for `sub`, valid for an hour, with extra members spliced in.
pub fn claims_json(sub: &str, extra: &str) -> String {
    let base = format!(r#"{{"sub":"{sub}","exp":{},"iat":{}"#, now() + 3600, now());
    if extra.is_empty() {
        format!("{base}}}")
    } else {
        format!("{base},{extra}}}")
    }
}

/// The standard header for `kid`.
pub fn hs256_header(kid: &str) -> String {
    format!(r#"{{"alg":"HS256","kid":"{kid}","typ":"JWT"}}"#)
}
