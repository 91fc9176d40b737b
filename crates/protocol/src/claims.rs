//! JWT claims of a connect token (spec §2.2) and their validation rules.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::actions::{Action, ActionSet};
use crate::validate::is_valid_subject;

/// Cap on `channels` entries.
pub const MAX_CHANNEL_CLAIMS: usize = 100;
/// Cap on `permissions` entries.
pub const MAX_PERMISSION_CLAIMS: usize = 16;
/// Cap on serialized `metadata` (private to the connection).
pub const MAX_METADATA_BYTES: usize = 8 * 1024;
/// Cap on serialized `peerMetadata` (public identity bag).
pub const MAX_PEER_METADATA_BYTES: usize = 4 * 1024;
/// Cap on how deeply `metadata` and `peerMetadata` nest (the object itself is level 1).
pub const MAX_METADATA_DEPTH: usize = crate::json_depth::DEFAULT_MAX_JSON_DEPTH;

/// The claims Herald reads. Unknown claims (`iss`, `aud`, `jti`, ...) are ignored, never rejected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// Passed through verbatim as `welcome.metadata`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<RawValue>>,
    /// Stamped on presence entries, `direct` and opted-in `message` frames.
    #[serde(
        default,
        rename = "peerMetadata",
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_metadata: Option<Box<RawValue>>,
}

/// Why a set of claims was refused. Every variant maps to close 4001 except `Expired` (4002).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("sub must be 1-128 printable ASCII characters")]
    BadSubject,
    #[error("exp is required")]
    MissingExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("iat lies in the future")]
    IssuedInFuture,
    #[error("too many channels (max {MAX_CHANNEL_CLAIMS})")]
    TooManyChannels,
    #[error("invalid channel pattern in channels claim")]
    BadChannel,
    #[error("too many permissions (max {MAX_PERMISSION_CLAIMS})")]
    TooManyPermissions,
    #[error("unknown permission {0:?}")]
    UnknownPermission(String),
    #[error("{0} must be a JSON object")]
    NotAnObject(&'static str),
    #[error("{0} exceeds {1} bytes")]
    TooLarge(&'static str, usize),
    #[error("{0} nests deeper than {1} levels")]
    TooDeep(&'static str, usize),
}

/// True when a raw JSON value is an object (leading whitespace allowed).
pub fn is_json_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

impl Claims {
    /// Checks types, caps and times (spec §2.2 steps 3-4). `now` is Unix seconds; `skew` the
    /// tolerated clock difference for `nbf`/`iat`.
    pub fn validate(&self, now: i64, skew: i64) -> Result<(), ClaimsError> {
        if !is_valid_subject(&self.sub) {
            return Err(ClaimsError::BadSubject);
        }
        if let Some(channels) = &self.channels {
            if channels.len() > MAX_CHANNEL_CLAIMS {
                return Err(ClaimsError::TooManyChannels);
            }
            if channels
                .iter()
                .any(|c| !crate::validate::is_valid_channel(c))
            {
                return Err(ClaimsError::BadChannel);
            }
        }
        self.actions()?;
        check_object("metadata", self.metadata.as_deref(), MAX_METADATA_BYTES)?;
        check_object(
            "peerMetadata",
            self.peer_metadata.as_deref(),
            MAX_PEER_METADATA_BYTES,
        )?;
        let exp = self.exp.ok_or(ClaimsError::MissingExpiry)?;
        if exp <= now {
            return Err(ClaimsError::Expired);
        }
        if self.nbf.is_some_and(|nbf| nbf > now + skew) {
            return Err(ClaimsError::NotYetValid);
        }
        if self.iat.is_some_and(|iat| iat > now + skew) {
            return Err(ClaimsError::IssuedInFuture);
        }
        Ok(())
    }

    /// The `permissions` claim as a set; `None` when the claim is absent (the key's actions apply).
    pub fn actions(&self) -> Result<Option<ActionSet>, ClaimsError> {
        let Some(perms) = &self.permissions else {
            return Ok(None);
        };
        if perms.len() > MAX_PERMISSION_CLAIMS {
            return Err(ClaimsError::TooManyPermissions);
        }
        perms
            .iter()
            .map(|p| Action::parse(p).ok_or_else(|| ClaimsError::UnknownPermission(p.clone())))
            .collect::<Result<ActionSet, _>>()
            .map(Some)
    }
}

fn check_object(name: &'static str, raw: Option<&RawValue>, cap: usize) -> Result<(), ClaimsError> {
    let Some(raw) = raw else { return Ok(()) };
    if !is_json_object(raw) {
        return Err(ClaimsError::NotAnObject(name));
    }
    if raw.get().len() > cap {
        return Err(ClaimsError::TooLarge(name, cap));
    }
    // Stamped on presence entries and messages that every receiver parses: a deep value would
    // crash their readers as deep `data` would (see `json_depth`).
    if crate::json_depth::nesting_exceeds(raw.get().as_bytes(), MAX_METADATA_DEPTH) {
        return Err(ClaimsError::TooDeep(name, MAX_METADATA_DEPTH));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn accepts_a_typical_token_and_ignores_unknown_claims() {
        let c = claims(
            r#"{"sub":"alice","exp":2000,"iss":"your-backend","aud":"x","jti":"1",
                "channels":["room/*"],"permissions":["publish","subscribe"],
                "peerMetadata":{"username":"Alice"}}"#,
        );
        assert_eq!(c.validate(1000, 60), Ok(()));
        assert_eq!(c.peer_metadata.unwrap().get(), r#"{"username":"Alice"}"#);
    }

    #[test]
    fn refuses_bad_claims() {
        let now = 1000;
        let cases = [
            (r#"{"sub":"","exp":2000}"#, ClaimsError::BadSubject),
            (r#"{"sub":"a"}"#, ClaimsError::MissingExpiry),
            (r#"{"sub":"a","exp":1000}"#, ClaimsError::Expired),
            (
                r#"{"sub":"a","exp":2000,"nbf":1100}"#,
                ClaimsError::NotYetValid,
            ),
            (
                r#"{"sub":"a","exp":2000,"permissions":["admin"]}"#,
                ClaimsError::UnknownPermission("admin".into()),
            ),
            (
                r#"{"sub":"a","exp":2000,"peerMetadata":[1]}"#,
                ClaimsError::NotAnObject("peerMetadata"),
            ),
            (
                r#"{"sub":"a","exp":2000,"metadata":"x"}"#,
                ClaimsError::NotAnObject("metadata"),
            ),
        ];
        for (json, want) in cases {
            assert_eq!(claims(json).validate(now, 60), Err(want), "{json}");
        }
        let big = format!(
            r#"{{"sub":"a","exp":2000,"peerMetadata":{{"x":"{}"}}}}"#,
            "y".repeat(4100)
        );
        assert_eq!(
            claims(&big).validate(now, 60),
            Err(ClaimsError::TooLarge("peerMetadata", 4096))
        );
        let deep = format!(
            r#"{{"sub":"a","exp":2000,"peerMetadata":{{"x":{}1{}}}}}"#,
            "[".repeat(1000),
            "]".repeat(1000)
        );
        assert_eq!(
            claims(&deep).validate(now, 60),
            Err(ClaimsError::TooDeep("peerMetadata", MAX_METADATA_DEPTH))
        );
        let nested_ok = format!(
            r#"{{"sub":"a","exp":2000,"peerMetadata":{{"x":{}1{}}}}}"#,
            "[".repeat(MAX_METADATA_DEPTH - 1),
            "]".repeat(MAX_METADATA_DEPTH - 1)
        );
        assert_eq!(claims(&nested_ok).validate(now, 60), Ok(()));
        let many = format!(
            r#"{{"sub":"a","exp":2000,"channels":[{}]}}"#,
            vec!["\"c\""; 101].join(",")
        );
        assert_eq!(
            claims(&many).validate(now, 60),
            Err(ClaimsError::TooManyChannels)
        );
    }

    #[test]
    fn nbf_within_skew_is_accepted() {
        assert_eq!(
            claims(r#"{"sub":"a","exp":2000,"nbf":1030,"iat":1030}"#).validate(1000, 60),
            Ok(())
        );
    }
}
