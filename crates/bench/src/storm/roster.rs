//! Reading `presence` frames generically and keeping a watcher's view of the roster.
//!
//! A frame may carry several `joined`/`left` entries (coalesced deltas) and an `occupancy`
//! field (a number, or an object with `peers`). The generator's own peers have ids it chose
//! (`m<i>` members, `j<i>` churners, `s<i>` snapshot samplers), so a roster is a bitset.

use memchr::memmem;

/// Which of the generator's peers an id names.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub members: usize,
    pub churners: usize,
    pub samplers: usize,
}

impl Ids {
    pub fn total(&self) -> usize {
        self.members + self.churners + self.samplers
    }

    pub fn member(i: usize) -> String {
        format!("m{i}")
    }

    pub fn churner(i: usize) -> String {
        format!("j{i}")
    }

    pub fn sampler(i: usize) -> String {
        format!("s{i}")
    }

    /// The bit of a peer id, or `None` for an id the generator did not hand out.
    pub fn index(&self, id: &[u8]) -> Option<usize> {
        let (&kind, digits) = id.split_first()?;
        if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        match kind {
            b'm' if n < self.members => Some(n),
            b'j' if n < self.churners => Some(self.members + n),
            b's' if n < self.samplers => Some(self.members + self.churners + n),
            _ => None,
        }
    }

    pub fn is_churner(&self, index: usize) -> bool {
        (self.members..self.members + self.churners).contains(&index)
    }
}

/// The `occupancy` field of a presence frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occupancy {
    Absent,
    /// A count: the number itself, or the `peers` member of an object.
    Count(u64),
    /// Present, but in a shape this reader does not know.
    Unknown,
}

static JOINED: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"joined\":"));
static LEFT: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"left\":"));
static PEER_ID: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"peerId\":\""));
static OCCUPANCY: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"occupancy\":"));
static PEERS: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"\"peers\":"));

/// Whether a Metered payload is a `presence` frame.
pub fn is_presence(p: &[u8]) -> bool {
    p.starts_with(b"{\"type\":\"presence\"")
}

/// The span of the JSON array or object that starts at `p[at]` (after whitespace), string-aware.
fn value_span(p: &[u8], at: usize) -> Option<(usize, usize)> {
    let start = at + p.get(at..)?.iter().position(|b| !b.is_ascii_whitespace())?;
    let (open, close) = match p[start] {
        b'[' => (b'[', b']'),
        b'{' => (b'{', b'}'),
        _ => return None,
    };
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in p.iter().enumerate().skip(start) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == open {
            depth += 1;
        } else if b == close {
            depth -= 1;
            if depth == 0 {
                return Some((start, i + 1));
            }
        }
    }
    None
}

/// Calls `entry(joined, peer_id)` for every entry of a presence frame's `joined` and `left`
/// arrays (joined first), and returns its `occupancy`.
pub fn parse(p: &[u8], mut entry: impl FnMut(bool, &[u8])) -> Occupancy {
    for (finder, joined) in [(&*JOINED, true), (&*LEFT, false)] {
        let Some(at) = finder.find(p) else { continue };
        let Some((start, end)) = value_span(p, at + finder.needle().len()) else {
            continue;
        };
        let list = &p[start..end];
        let mut from = 0;
        while let Some(i) = PEER_ID.find(&list[from..]) {
            let id_start = from + i + 10;
            let Some(len) = memchr::memchr(b'"', &list[id_start..]) else {
                break;
            };
            entry(joined, &list[id_start..id_start + len]);
            from = id_start + len;
        }
    }
    let Some(at) = OCCUPANCY.find(p) else {
        return Occupancy::Absent;
    };
    let rest = &p[at + 12..];
    let rest = &rest[rest
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(rest.len())..];
    if let Some(n) = leading_u64(rest) {
        return Occupancy::Count(n);
    }
    if let Some((start, end)) = value_span(rest, 0) {
        let obj = &rest[start..end];
        if let Some(n) = PEERS
            .find(obj)
            .and_then(|i| leading_u64(obj[i + 8..].trim_ascii_start()))
        {
            return Occupancy::Count(n);
        }
    }
    Occupancy::Unknown
}

fn leading_u64(p: &[u8]) -> Option<u64> {
    let digits = p.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    Some(
        p[..digits]
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// One watcher's roster as built from its snapshot and deltas, with the anomalies seen.
#[derive(Debug, Clone)]
pub struct Roster {
    bits: Vec<u64>,
    pub count: usize,
    /// `joined` for a peer already in the roster.
    pub duplicate_joins: u64,
    /// `left` for a peer not in the roster.
    pub absent_lefts: u64,
    /// Entries naming a peer the generator did not create.
    pub foreign: u64,
}

impl Roster {
    pub fn new(peers: usize) -> Roster {
        Roster {
            bits: vec![0; peers.div_ceil(64)],
            count: 0,
            duplicate_joins: 0,
            absent_lefts: 0,
            foreign: 0,
        }
    }

    pub fn contains(&self, i: usize) -> bool {
        self.bits
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Applies one entry; `None` is a foreign id.
    pub fn apply(&mut self, joined: bool, index: Option<usize>) {
        let Some(i) = index else {
            self.foreign += 1;
            return;
        };
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let Some(w) = self.bits.get_mut(word) else {
            self.foreign += 1;
            return;
        };
        match (joined, *w & bit != 0) {
            (true, false) => {
                *w |= bit;
                self.count += 1;
            }
            (true, true) => self.duplicate_joins += 1,
            (false, true) => {
                *w &= !bit;
                self.count -= 1;
            }
            (false, false) => self.absent_lefts += 1,
        }
    }

    /// Entries missing from this roster and entries it has in excess, against `truth`.
    pub fn diff(&self, truth: &Roster) -> (u64, u64) {
        let (mut missing, mut extra) = (0, 0);
        for (mine, want) in self.bits.iter().zip(&truth.bits) {
            missing += u64::from((want & !mine).count_ones());
            extra += u64::from((mine & !want).count_ones());
        }
        (missing, extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(p: &[u8]) -> (Vec<(bool, String)>, Occupancy) {
        let mut out = Vec::new();
        let occ = parse(p, |j, id| out.push((j, String::from_utf8_lossy(id).into())));
        (out, occ)
    }

    #[test]
    fn reads_several_entries_and_occupancy() {
        let p = br#"{"type":"presence","channel":"c","joined":[{"peerId":"m1","metadata":{"n":"a]"}},{"peerId":"j2"}],"left":[{"peerId":"m3"}],"occupancy":12}"#;
        let (e, occ) = entries(p);
        assert_eq!(
            e,
            vec![
                (true, "m1".into()),
                (true, "j2".into()),
                (false, "m3".into())
            ]
        );
        assert_eq!(occ, Occupancy::Count(12));
        let p = br#"{"type":"presence","channel":"c","occupancy":{"peers":7,"connections":9}}"#;
        assert_eq!(entries(p), (vec![], Occupancy::Count(7)));
        let p = br#"{"type":"presence","channel":"c","left":[],"joined":[],"occupancy":"many"}"#;
        assert_eq!(entries(p), (vec![], Occupancy::Unknown));
    }

    #[test]
    fn roster_counts_anomalies_and_diffs() {
        let ids = Ids {
            members: 3,
            churners: 2,
            samplers: 1,
        };
        assert_eq!(ids.index(b"m2"), Some(2));
        assert_eq!(ids.index(b"j1"), Some(4));
        assert_eq!(ids.index(b"s0"), Some(5));
        assert_eq!(ids.index(b"m3"), None);
        assert_eq!(ids.index(b"x1"), None);
        let mut r = Roster::new(ids.total());
        r.apply(true, Some(0));
        r.apply(true, Some(0));
        r.apply(false, Some(4));
        r.apply(true, None);
        assert_eq!(
            (r.count, r.duplicate_joins, r.absent_lefts, r.foreign),
            (1, 1, 1, 1)
        );
        let mut truth = Roster::new(ids.total());
        truth.apply(true, Some(1));
        assert_eq!(r.diff(&truth), (1, 1));
    }
}
