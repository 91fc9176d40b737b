//! JWT parsing and verification with a fixed secret, then the claims validator.
#![no_main]

use herald_protocol::jwt::UnverifiedToken;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef";

fuzz_target!(|bytes: &[u8]| {
    let Ok(token) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(unverified) = UnverifiedToken::parse(token) else {
        return;
    };
    assert!(!unverified.kid().is_empty());
    if let Ok(claims) = unverified.verify(SECRET) {
        let _ = claims.validate(1_700_000_000, 60);
        let _ = claims.actions();
    }
});
