//! Random claims, signed with a fixed secret, so verification succeeds and the claims
//! validator sees every shape: a signed token must verify to the very claims that were signed.
#![no_main]

use arbitrary::Arbitrary;
use herald_protocol::jwt::{self, UnverifiedToken};
use herald_protocol::Claims;
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef";

#[derive(Arbitrary, Debug)]
struct Input {
    kid: String,
    sub: String,
    exp: Option<i64>,
    iat: Option<i64>,
    nbf: Option<i64>,
    channels: Option<Vec<String>>,
    permissions: Option<Vec<String>>,
    metadata: Option<String>,
    peer_metadata: Option<String>,
    now: i64,
    skew: u16,
}

/// Only valid JSON can sit in a `RawValue`.
fn raw(text: Option<String>) -> Option<Box<RawValue>> {
    text.and_then(|t| RawValue::from_string(t).ok())
}

fuzz_target!(|input: Input| {
    let claims = Claims {
        sub: input.sub,
        exp: input.exp,
        iat: input.iat,
        nbf: input.nbf,
        channels: input.channels,
        permissions: input.permissions,
        metadata: raw(input.metadata),
        peer_metadata: raw(input.peer_metadata),
    };
    let token = jwt::sign(&input.kid, SECRET, &claims);
    let parsed = UnverifiedToken::parse(&token);
    if input.kid.is_empty() || token.len() > jwt::MAX_TOKEN_LEN {
        assert!(parsed.is_err());
        return;
    }
    let parsed = parsed.expect("a freshly signed token parses");
    assert_eq!(parsed.kid(), input.kid);
    let verified = parsed
        .verify(SECRET)
        .expect("a freshly signed token verifies");
    assert_eq!(
        serde_json::to_string(&verified).ok(),
        serde_json::to_string(&claims).ok()
    );
    let _ = verified.validate(input.now, i64::from(input.skew));
    let _ = verified.actions();
    assert!(UnverifiedToken::parse(&token)
        .and_then(|t| t.verify(b"another secret"))
        .is_err());
});
