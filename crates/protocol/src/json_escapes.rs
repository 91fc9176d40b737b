//! Lone UTF-16 surrogates in JSON string escapes (`"\ud901"` with no low half after it).
//!
//! The JSON grammar lets such an escape through and `RawValue` keeps it, but it names no
//! Unicode character: strict parsers (serde_json, so the Rust SDK) refuse the whole frame it is
//! forwarded in, while lenient ones (JavaScript, Python) build a broken string. Found by the
//! `frame` fuzz target. Herald refuses such client frames instead of forwarding them.
//!
//! The input must already be valid JSON: this only reads string escapes.

/// True when a string in `text` holds a `\uD800`–`\uDFFF` escape that is not a high surrogate
/// immediately followed by a low one.
pub fn has_lone_surrogate(text: &[u8]) -> bool {
    // Fast path: no escape at all, as in most frames.
    if !text.contains(&b'\\') {
        return false;
    }
    let mut i = 0;
    let mut in_string = false;
    while i < text.len() {
        let b = text[i];
        i += 1;
        if !in_string {
            in_string = b == b'"';
            continue;
        }
        match b {
            b'"' => in_string = false,
            b'\\' => {
                let Some(&escape) = text.get(i) else {
                    return false;
                };
                i += 1;
                if escape != b'u' {
                    continue;
                }
                let Some(unit) = hex4(text, i) else {
                    return false;
                };
                i += 4;
                match unit {
                    0xD800..=0xDBFF => {
                        // A high half must be followed by `\u` and a low half.
                        let low = (text.get(i..i + 2) == Some(b"\\u"))
                            .then(|| hex4(text, i + 2))
                            .flatten();
                        match low {
                            Some(0xDC00..=0xDFFF) => i += 6,
                            _ => return true,
                        }
                    }
                    0xDC00..=0xDFFF => return true,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    false
}

fn hex4(text: &[u8], at: usize) -> Option<u32> {
    let digits = std::str::from_utf8(text.get(at..at + 4)?).ok()?;
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::has_lone_surrogate as lone;

    #[test]
    fn pairs_and_plain_escapes_pass() {
        assert!(!lone(br#"{"a":"plain"}"#));
        assert!(!lone(br#"{"a":"\ud83d\ude00 smile","b":"\n\"\\u0041"}"#));
        assert!(!lone(br#"{"a":"\u00e9\u4e2d"}"#));
        // `\\` then `ud901`: an escaped backslash, not an escape of `u`.
        assert!(!lone(br#"{"a":"\\ud901"}"#));
    }

    #[test]
    fn lone_halves_are_found() {
        assert!(lone(br#"{"s":"\ud901"}"#));
        assert!(lone(br#"{"s":"\ud901x"}"#));
        assert!(lone(br#"{"s":"\ude00"}"#));
        assert!(lone(br#"{"s":"\ud83d\u0041"}"#));
        assert!(lone(br#"{"s":"ok","t":["\udbff"]}"#));
    }

    #[test]
    fn agrees_with_serde_json() {
        for text in [
            r#"{"s":"\ud901"}"#,
            r#"{"s":"\ud83d\ude00"}"#,
            r#"{"s":"\ude00\ud83d"}"#,
            r#"{"s":"\\ud901"}"#,
            r#"{"s":"\u0000"}"#,
        ] {
            let strict_ok = serde_json::from_str::<serde_json::Value>(text).is_ok();
            assert_eq!(lone(text.as_bytes()), !strict_ok, "{text}");
        }
    }
}
