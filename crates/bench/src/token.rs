//! HS256 tokens signed by the generator itself, so that benchmark peers can carry chosen peer
//! ids (`sub`) and `peerMetadata`, which a publishable key cannot give them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A secret key of the app under test: `kid` (the key id) and its signing secret.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub kid: String,
    pub secret: String,
}

impl SigningKey {
    /// Parses `kid:secret`.
    pub fn parse(s: &str) -> Result<SigningKey, String> {
        let (kid, secret) = s.split_once(':').ok_or("expected kid:secret")?;
        if kid.is_empty() || secret.is_empty() {
            return Err("expected kid:secret".into());
        }
        Ok(SigningKey {
            kid: kid.to_string(),
            secret: secret.to_string(),
        })
    }

    /// A token for peer `sub`, valid for an hour, with `peer_metadata` (a JSON object) and,
    /// when `presence` is false, permissions without the `presence` action.
    pub fn token(&self, sub: &str, peer_metadata: Option<&str>, presence: bool) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut claims = format!(r#"{{"sub":"{sub}","iat":{now},"exp":{}"#, now + 3600);
        if let Some(meta) = peer_metadata {
            claims.push_str(r#","peerMetadata":"#);
            claims.push_str(meta);
        }
        if !presence {
            claims.push_str(r#","permissions":["subscribe","publish","send"]"#);
        }
        claims.push('}');
        let header = format!(r#"{{"alg":"HS256","kid":"{}","typ":"JWT"}}"#, self.kid);
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = match Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()) {
            Ok(mut mac) => {
                mac.update(input.as_bytes());
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(), // HMAC accepts keys of any length
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}
