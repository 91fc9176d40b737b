//! A cheap bound on JSON nesting, checked before a frame is parsed.
//!
//! `data` is forwarded as raw JSON, so the server never builds a tree from it, but receivers do:
//! a payload nested a few thousand levels deep overflows the recursion of common JSON parsers
//! (the official Python SDK's reader dies at about 1,000 levels and reconnects). Refusing such
//! frames at the door protects every subscriber for the price of one linear pass.
//!
//! Nothing here recurses, and nothing allocates.

/// The default for `limits.max_json_depth`: far deeper than real application payloads, far
/// shallower than any parser's recursion limit.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// True when `text` opens more than `max_depth` arrays or objects inside one another.
///
/// Brackets inside strings do not count (escapes are honoured). The input need not be valid
/// JSON: the answer is about bracket nesting only, and parsing decides validity afterwards.
pub fn nesting_exceeds(text: &[u8], max_depth: usize) -> bool {
    // Fast path: nesting deeper than `max_depth` needs more than `max_depth` opening brackets,
    // and counting them is branch-free and vectorised, so typical frames never reach the
    // string-aware scan below.
    if count_openers(text) <= max_depth {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        i += 1;
        match b {
            b'"' => {
                // Skip the string in a tight loop of its own; an escape skips the next byte.
                while i < text.len() {
                    let c = text[i];
                    i += 1;
                    if c == b'\\' {
                        i += 1;
                    } else if c == b'"' {
                        break;
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// How many `{` and `[` bytes `text` holds, strings included.
fn count_openers(text: &[u8]) -> usize {
    // `b | 0x20 == b'{'` holds for exactly `{` (0x7B) and `[` (0x5B). Byte-wide counters over
    // chunks of 255 cannot overflow and let the compiler use the widest vector lanes.
    text.chunks(255)
        .map(|chunk| {
            let n = chunk
                .iter()
                .fold(0u8, |n, &b| n + u8::from(b | 0x20 == b'{'));
            usize::from(n)
        })
        .sum()
}

/// The raw JSON string (quotes included) of `key` in the top-level object of `text`, when its
/// value is a string; `None` otherwise.
///
/// Meant for error replies to frames that are refused before parsing (too deep): it scans without
/// recursion, stops at the end of the top-level object, and compares the key byte for byte (an
/// escaped spelling of the key is not recognised, which only costs the echo).
pub fn top_level_string<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    // At depth 1: the next string is a key...
    let mut expect_key = false;
    // ...or the value of the key we look for.
    let mut value_wanted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i)?;
                if depth == 1 {
                    let raw = &text[i..=end];
                    if expect_key {
                        expect_key = false;
                        value_wanted = raw.len() == key.len() + 2 && &raw[1..raw.len() - 1] == key;
                    } else if value_wanted {
                        return Some(raw);
                    }
                }
                i = end;
            }
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && bytes[i] == b'{';
                value_wanted = false;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return None;
                }
            }
            b',' if depth == 1 => {
                expect_key = true;
                value_wanted = false;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Index of the quote closing the string that opens at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn counts_nesting_not_brackets() {
        assert!(!nesting_exceeds(nested(64).as_bytes(), 64));
        assert!(nesting_exceeds(nested(65).as_bytes(), 64));
        // Counts span the 255-byte chunks of the fast path.
        assert!(!nesting_exceeds(nested(600).as_bytes(), 600));
        assert!(nesting_exceeds(nested(600).as_bytes(), 599));
        assert_eq!(count_openers("{[".repeat(1000).as_bytes()), 2000);
        // Many brackets side by side are shallow.
        let wide = format!("[{}]", vec!["{}"; 500].join(","));
        assert!(!nesting_exceeds(wide.as_bytes(), 2));
        assert!(nesting_exceeds(wide.as_bytes(), 1));
        assert!(!nesting_exceeds(b"", 0));
        assert!(nesting_exceeds(b"{", 0));
    }

    #[test]
    fn brackets_in_strings_do_not_count() {
        let text = format!(r#"{{"a":"{}","b":"\"[[[[","c":"\\"}}"#, "[".repeat(500));
        assert!(!nesting_exceeds(text.as_bytes(), 1));
        // An escaped backslash ends before the quote: the quote closes the string.
        let text = format!(r#"{{"a":"\\"{}}}"#, "[".repeat(10));
        assert!(nesting_exceeds(text.as_bytes(), 5));
    }

    #[test]
    fn unbalanced_input_does_not_panic() {
        assert!(!nesting_exceeds(b"]]]]}}}}[", 3));
        assert!(!nesting_exceeds(b"\"unterminated [[[[[[", 3));
    }

    #[test]
    fn finds_the_top_level_request_id() {
        let deep = nested(5000);
        let text = format!(r#"{{"type":"publish","data":{deep},"requestId":"r-1"}}"#);
        assert_eq!(top_level_string(&text, "requestId"), Some("\"r-1\""));
        let text = format!(r#"{{"requestId":"a\"b","data":{deep}}}"#);
        assert_eq!(top_level_string(&text, "requestId"), Some(r#""a\"b""#));
        // Only the top level counts, and only string values.
        let text = r#"{"data":{"requestId":"inner"},"x":1}"#;
        assert_eq!(top_level_string(text, "requestId"), None);
        assert_eq!(top_level_string(r#"{"requestId":5}"#, "requestId"), None);
        assert_eq!(
            top_level_string(r#"{"requestId":["x"],"y":"z"}"#, "requestId"),
            None
        );
        // A value equal to the key is not a key.
        assert_eq!(
            top_level_string(r#"{"a":"requestId","b":"no"}"#, "requestId"),
            None
        );
        assert_eq!(
            top_level_string(r#"{"requestId":"unterminated"#, "requestId"),
            None
        );
        assert_eq!(top_level_string("", "requestId"), None);
    }
}
