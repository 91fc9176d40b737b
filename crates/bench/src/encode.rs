//! What encoding a roster snapshot costs, beside copying the same bytes: the part of a new
//! subscriber's snapshot that sharing an encoding per roster version saves (the bytes
//! themselves must reach every subscriber anyway). No server involved.

use std::time::{Duration, Instant};

use herald_protocol::{encode, PresenceEntry};
use serde_json::value::RawValue;

/// Encodes a roster of `members` (UUID-like peer ids, ~40 B of metadata each) `rounds` times,
/// copies the result as many times, and says what each took on average.
pub fn snapshot_cost(members: usize, rounds: u32) -> String {
    let ids: Vec<String> = (0..members)
        .map(|i| format!("{i:08x}-1b2c-4d5e-8f90-{:012x}", i * 7))
        .collect();
    let metadata: Vec<Box<RawValue>> = (0..members)
        .map(|i| {
            RawValue::from_string(format!(r#"{{"name":"member {i}","p":"xxxxxxxx"}}"#))
                .unwrap_or_else(|_| unreachable!("valid JSON"))
        })
        .collect();
    let entries = || {
        ids.iter().zip(&metadata).map(|(peer, m)| PresenceEntry {
            peer_id: peer,
            metadata: Some(m),
        })
    };
    let mut bytes = 0;
    let started = Instant::now();
    for _ in 0..rounds {
        bytes += std::hint::black_box(encode::presence_snapshot("room", entries()))
            .0
            .len();
    }
    let encoding = started.elapsed() / rounds;
    let (frame, _) = encode::presence_snapshot("room", entries());
    let started = Instant::now();
    for _ in 0..rounds {
        bytes += std::hint::black_box(frame.clone()).len();
    }
    let copying = started.elapsed() / rounds;
    let per = |d: Duration| d.as_secs_f64() * 1e6;
    format!(
        "snapshot of {members} members, {} bytes: encoding {:.0} µs, copying {:.0} µs (mean of {rounds}; {bytes} bytes handled)",
        frame.len(),
        per(encoding),
        per(copying),
    )
}
