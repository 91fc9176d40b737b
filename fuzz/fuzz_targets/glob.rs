//! Channel patterns: parsing, matching, and language inclusion, checked for soundness: when
//! inclusion says yes, every channel the smaller pattern matches is matched by the larger.
#![no_main]

use arbitrary::Arbitrary;
use herald_protocol::glob::{has_wildcard, is_covered_by, Pattern};
use libfuzzer_sys::fuzz_target;

/// Channel names and patterns are at most 256 bytes on the wire.
const MAX_LEN: usize = 256;

#[derive(Arbitrary, Debug)]
struct Input {
    pattern: String,
    other: String,
    set: Vec<String>,
    channels: Vec<String>,
}

fn bounded(s: &str) -> bool {
    s.len() <= MAX_LEN
}

fuzz_target!(|input: Input| {
    if !bounded(&input.pattern) || !bounded(&input.other) || input.set.len() > 8 {
        return;
    }
    if !input.set.iter().all(|s| bounded(s)) {
        return;
    }
    let p = Pattern::parse(&input.pattern);
    let q = Pattern::parse(&input.other);
    let set: Vec<Pattern> = input.set.iter().map(|s| Pattern::parse(s)).collect();
    assert_eq!(p.as_str(), input.pattern);
    assert_eq!(p.is_literal(), !has_wildcard(&input.pattern));
    if let Some(name) = p.literal() {
        assert!(p.matches(&name), "a literal pattern matches its own name");
    }
    let p_in_q = p.is_subset_of(&q);
    let p_in_set = is_covered_by(&p, &set);
    for channel in input.channels.iter().take(8).filter(|c| bounded(c)) {
        if p.matches(channel) {
            if p_in_q {
                assert!(q.matches(channel), "{p:?} ⊆ {q:?} but {channel:?}");
            }
            if p_in_set {
                assert!(
                    set.iter().any(|s| s.matches(channel)),
                    "{p:?} ⊆ set, {channel:?}"
                );
            }
        }
    }
    if let Some(name) = p.literal() {
        // A literal pattern is included exactly when its one channel is matched.
        assert_eq!(p_in_q, q.matches(&name), "{p:?} vs {q:?}");
    }
});
