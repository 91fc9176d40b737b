//! Validation of names that arrive from clients: channels, peer ids, request ids (spec §3, §9.1, §10).
//!
//! Names are never normalised: the exact string a client sent is the one echoed back.

/// Maximum channel name length in UTF-8 bytes (not characters; spec §9.1, Q11).
pub const MAX_CHANNEL_BYTES: usize = 256;
/// Maximum peer id length in bytes.
pub const MAX_PEER_ID_BYTES: usize = 128;
/// Maximum `requestId` length.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// Channel prefixes reserved for the service, compared ASCII-case-insensitively.
pub const RESERVED_PREFIXES: [&str; 3] = ["_metered/", "_internal/", "_system/"];

/// The non-printable code points the SDKs and the docs both refuse in names.
fn is_forbidden_char(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}')
}

/// A channel name (or subscription pattern) is 1–256 bytes with no control characters.
pub fn is_valid_channel(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_CHANNEL_BYTES && !name.chars().any(is_forbidden_char)
}

/// True when the channel starts with a reserved prefix, whatever its case.
pub fn is_reserved_channel(name: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|prefix| {
        name.len() >= prefix.len()
            && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    })
}

/// A `send.to` target: 1–128 bytes, no control characters (spec §5.4).
pub fn is_valid_target_peer_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_PEER_ID_BYTES && !id.chars().any(is_forbidden_char)
}

/// A JWT `sub` / REST `peerId`: 1–128 bytes of printable ASCII (0x20–0x7E).
pub fn is_valid_subject(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PEER_ID_BYTES
        && id.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// A `requestId`: a non-empty string of at most 128 characters.
pub fn is_valid_request_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= MAX_REQUEST_ID_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_length_is_counted_in_bytes() {
        assert!(is_valid_channel(&"a".repeat(256)));
        assert!(!is_valid_channel(&"a".repeat(257)));
        // 128 two-byte characters = 256 bytes: fine; one more byte is not.
        assert!(is_valid_channel(&"é".repeat(128)));
        assert!(!is_valid_channel(&format!("{}a", "é".repeat(128))));
        assert!(!is_valid_channel(""));
    }

    #[test]
    fn control_characters_are_refused() {
        for bad in ["a\u{0}b", "a\nb", "a\u{7f}", "x\u{85}y", "\u{9f}"] {
            assert!(!is_valid_channel(bad), "{bad:?}");
            assert!(!is_valid_target_peer_id(bad), "{bad:?}");
        }
        assert!(is_valid_channel("Room 1/ü/🎉"));
    }

    #[test]
    fn reserved_prefixes_ignore_case() {
        assert!(is_reserved_channel("_SYSTEM/x"));
        assert!(is_reserved_channel("_metered/"));
        assert!(is_reserved_channel("_Internal/a/b"));
        assert!(!is_reserved_channel("_system"));
        assert!(!is_reserved_channel("system/x"));
        assert!(!is_reserved_channel("é_system/"));
    }

    #[test]
    fn subjects_are_printable_ascii() {
        assert!(is_valid_subject("alice 1~"));
        assert!(!is_valid_subject("ali\tce"));
        assert!(!is_valid_subject("zoë"));
        assert!(!is_valid_subject(&"a".repeat(129)));
        assert!(is_valid_target_peer_id("zoë"));
    }

    #[test]
    fn request_ids() {
        assert!(is_valid_request_id(&"r".repeat(128)));
        assert!(!is_valid_request_id(&"r".repeat(129)));
        assert!(!is_valid_request_id(""));
    }
}
