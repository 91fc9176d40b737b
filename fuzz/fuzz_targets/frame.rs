//! Inbound frame parsing: `parse_client_frame` with its depth check, checked against a
//! reference depth computed from a fully parsed tree.
#![no_main]

use herald_protocol::json_depth::{nesting_exceeds, top_level_string, DEFAULT_MAX_JSON_DEPTH};
use herald_protocol::json_escapes::has_lone_surrogate;
use herald_protocol::validate::is_valid_request_id;
use herald_protocol::{encode, parse_client_frame, ClientOp, ErrorCode};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Nesting depth of a parsed value (serde_json's own limit keeps this recursion shallow).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    // The cheap scan agrees with the real depth wherever serde can build the tree. On the
    // original text it may only count more (a duplicate key's dropped value still nests); on
    // the tree's own serialization it must agree exactly.
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let real = depth(&value);
        let canonical = value.to_string();
        for max in [0, 1, 2, 8, DEFAULT_MAX_JSON_DEPTH] {
            if real > max {
                assert!(nesting_exceeds(bytes, max), "max {max}");
            }
            assert_eq!(
                nesting_exceeds(canonical.as_bytes(), max),
                real > max,
                "max {max}"
            );
        }
    }
    let _ = top_level_string(text, "requestId");

    for max in [2, DEFAULT_MAX_JSON_DEPTH] {
        match parse_client_frame(text, max) {
            Ok(frame) => {
                assert!(!nesting_exceeds(bytes, max + 1));
                if let Some(id) = &frame.request_id {
                    assert!(is_valid_request_id(id));
                }
                // Whatever is forwarded re-encodes as valid JSON.
                if let ClientOp::Publish {
                    data: Some(data), ..
                }
                | ClientOp::Send {
                    data: Some(data), ..
                } = frame.op
                {
                    // Valid JSON text, and no string in it escapes half a surrogate pair
                    // (which strict receivers refuse). Numbers beyond f64's range stay as
                    // written: the grammar allows them and receivers decide (JS: Infinity).
                    let out = encode::message("c", "p", data, None);
                    assert!(serde_json::from_str::<&serde_json::value::RawValue>(&out).is_ok());
                    assert!(!has_lone_surrogate(data.get().as_bytes()));
                }
            }
            Err(err) => {
                assert!(matches!(
                    err.code,
                    ErrorCode::MalformedMessage | ErrorCode::UnknownType
                ));
                if let Some(id) = &err.request_id {
                    assert!(is_valid_request_id(id));
                }
            }
        }
    }
});
