//! HS256 compact JWS: the only token format Herald accepts (spec §2.2).
//!
//! Verification is split in two so the server can look the signing secret up by `kid` between
//! parsing the header and checking the signature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::claims::Claims;

type HmacSha256 = Hmac<Sha256>;

/// Upper bound on an accepted token's length; far above any legitimate token with capped claims.
pub const MAX_TOKEN_LEN: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("unsupported alg (only HS256 is accepted)")]
    UnsupportedAlg,
    #[error("token header has no kid")]
    MissingKid,
    #[error("signature does not verify")]
    BadSignature,
    #[error("claims are not valid JSON of the expected types")]
    BadClaims,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// A token whose header was parsed and checked (`alg == HS256`, `kid` present) but whose
/// signature has not been verified yet.
#[derive(Debug)]
pub struct UnverifiedToken<'a> {
    kid: String,
    signing_input: &'a str,
    payload_b64: &'a str,
    signature: Vec<u8>,
}

impl<'a> UnverifiedToken<'a> {
    /// Parses the compact form and the header.
    pub fn parse(token: &'a str) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header_bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?;
        let header: Header =
            serde_json::from_slice(&header_bytes).map_err(|_| JwtError::Malformed)?;
        if header.alg != "HS256" {
            return Err(JwtError::UnsupportedAlg);
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or(JwtError::MissingKid)?;
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
        Ok(UnverifiedToken {
            kid,
            signing_input: &token[..h.len() + 1 + p.len()],
            payload_b64: p,
            signature,
        })
    }

    /// The key id that names the signing secret.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the HMAC in constant time, then decodes the claims (types only; see
    /// [`Claims::validate`] for caps and times).
    pub fn verify(self, secret: &[u8]) -> Result<Claims, JwtError> {
        let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| JwtError::BadSignature)?;
        mac.update(self.signing_input.as_bytes());
        mac.verify_slice(&self.signature)
            .map_err(|_| JwtError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(self.payload_b64)
            .map_err(|_| JwtError::BadClaims)?;
        serde_json::from_slice(&payload).map_err(|_| JwtError::BadClaims)
    }
}

/// Signs claims as an HS256 JWT with header `{"alg":"HS256","kid":kid,"typ":"JWT"}`.
pub fn sign(kid: &str, secret: &[u8], claims: &Claims) -> String {
    let header = Header {
        alg: "HS256".into(),
        kid: Some(kid.into()),
        typ: Some("JWT".into()),
    };
    // Serializing these plain structs cannot fail.
    let header_json = serde_json::to_vec(&header).unwrap_or_default();
    let claims_json = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = URL_SAFE_NO_PAD.encode(header_json);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims_json));
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
    token
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            exp: Some(2_000_000_000),
            ..Claims::default()
        }
    }

    #[test]
    fn round_trip() {
        let token = sign("sk_id_1", b"secret", &claims());
        let parsed = UnverifiedToken::parse(&token).unwrap();
        assert_eq!(parsed.kid(), "sk_id_1");
        assert_eq!(parsed.verify(b"secret").unwrap().sub, "alice");
    }

    #[test]
    fn wrong_secret_and_tampering_fail() {
        let token = sign("k", b"secret", &claims());
        assert_eq!(
            UnverifiedToken::parse(&token)
                .unwrap()
                .verify(b"other")
                .unwrap_err(),
            JwtError::BadSignature
        );
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory","exp":2000000000}"#);
        parts[1] = &forged;
        let tampered = parts.join(".");
        assert_eq!(
            UnverifiedToken::parse(&tampered)
                .unwrap()
                .verify(b"secret")
                .unwrap_err(),
            JwtError::BadSignature
        );
    }

    #[test]
    fn alg_none_and_other_algs_are_refused() {
        for alg in ["none", "HS512", "RS256", "hs256"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"k"}}"#));
            let p = URL_SAFE_NO_PAD.encode(br#"{"sub":"a","exp":2000000000}"#);
            let token = format!("{h}.{p}.");
            assert_eq!(
                UnverifiedToken::parse(&token).unwrap_err(),
                JwtError::UnsupportedAlg,
                "{alg}"
            );
        }
    }

    #[test]
    fn malformed_tokens() {
        for t in ["", "a.b", "a.b.c.d", "!!!.x.y", "e30.e30.e30"] {
            assert!(UnverifiedToken::parse(t).is_err(), "{t}");
        }
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        assert_eq!(
            UnverifiedToken::parse(&format!("{h}.e30.")).unwrap_err(),
            JwtError::MissingKid
        );
    }
}
