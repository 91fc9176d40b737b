//! Redis Cluster hash slots, computed here so a key can be put in the slot of another one.
//!
//! A script on a cluster touches one slot. A webhook event produced by a channel's script
//! must go to a stream in that channel's slot, so the stream's name carries a hash tag chosen
//! to land there: [`tag`] gives, for each of the 16 384 slots, a short string that hashes to
//! it (a table computed once, the first time it is needed).

use std::sync::OnceLock;

/// Number of hash slots of a Redis Cluster.
pub const SLOTS: usize = 16_384;

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster takes modulo 16 384.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of a key, as `CLUSTER KEYSLOT` computes it: only the part inside the first
/// `{…}` counts when it is non-empty.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16(hashed) % SLOTS as u16
}

/// A short string (no braces) whose slot is `slot`.
pub fn tag(slot: u16) -> &'static str {
    static TABLE: OnceLock<Vec<String>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = vec![String::new(); SLOTS];
        let mut missing = SLOTS;
        let mut n: u64 = 0;
        // About 170 000 candidates fill every slot (coupon collector), in a few ms.
        while missing > 0 {
            let candidate = base36(n);
            let slot = usize::from(crc16(candidate.as_bytes()) % SLOTS as u16);
            if table[slot].is_empty() {
                table[slot] = candidate;
                missing -= 1;
            }
            n += 1;
        }
        table
    });
    table.get(usize::from(slot)).map_or("", String::as_str)
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_redis_cluster_spec() {
        // Examples from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), key_slot("foo{}{bar}"));
        assert_ne!(key_slot("foo{}{bar}"), key_slot("bar"));
        assert_eq!(key_slot("foo{{bar}}zap"), key_slot("{bar"));
    }

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        for slot in 0..SLOTS as u16 {
            let t = tag(slot);
            assert!(!t.is_empty() && !t.contains('{') && !t.contains('}'));
            assert_eq!(key_slot(&format!("x{{{t}}}y")), slot);
        }
    }
}
