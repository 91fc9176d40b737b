//! A channel's roster snapshot, encoded once per roster version and shared. Every subscriber
//! whose peer is not in the roster gets the very same bytes; one whose peer is already in it (a
//! second connection of the peer) gets a copy with its own entry cut out, which is a copy of
//! bytes and no encoding. So a room of N members costs one O(N) encoding per change of its
//! roster, however many connections subscribe in between (a reconnect wave, a page that opens
//! several tabs), not one per subscriber.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use herald_protocol::{encode, PresenceEntry};
use serde_json::value::RawValue;

use crate::conn::Frame;
use crate::ids::PeerId;

#[derive(Default)]
pub struct SnapshotCache {
    cached: Option<Cached>,
}

struct Cached {
    frame: Frame,
    /// Where each peer's entry sits in `frame`.
    entries: HashMap<PeerId, Range<usize>>,
}

impl SnapshotCache {
    /// The roster changed: the next snapshot is encoded afresh.
    pub fn invalidate(&mut self) {
        self.cached = None;
    }

    /// The snapshot for a subscriber of peer `me`: every member but `me`. `members` must be the
    /// roster the cache was last invalidated for (the caller invalidates on every change).
    pub fn snapshot<'a>(
        &mut self,
        channel: &str,
        members: impl ExactSizeIterator<Item = (&'a PeerId, &'a Option<Arc<RawValue>>)>,
        me: &PeerId,
    ) -> Frame {
        let cached = self.cached.get_or_insert_with(|| {
            let peers: Vec<(&PeerId, &Option<Arc<RawValue>>)> = members.collect();
            let (text, ranges) = encode::presence_snapshot(
                channel,
                peers.iter().map(|(peer, metadata)| PresenceEntry {
                    peer_id: peer.as_str(),
                    metadata: metadata.as_deref(),
                }),
            );
            Cached {
                frame: Frame::from(text),
                entries: peers
                    .into_iter()
                    .map(|(peer, _)| peer.clone())
                    .zip(ranges)
                    .collect(),
            }
        });
        match cached.entries.get(me) {
            None => cached.frame.clone(),
            Some(range) => Frame::from(encode::presence_snapshot_without(
                cached.frame.as_str(),
                range.clone(),
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn roster(peers: &[&str]) -> Vec<(PeerId, Option<Arc<RawValue>>)> {
        peers
            .iter()
            .map(|p| {
                let meta = RawValue::from_string(format!("{{\"name\":\"{p}\"}}")).unwrap();
                (PeerId::new(p.to_string()), Some(Arc::from(meta)))
            })
            .collect()
    }

    fn expected(peers: &[(PeerId, Option<Arc<RawValue>>)], me: &str) -> String {
        let entries: Vec<PresenceEntry<'_>> = peers
            .iter()
            .filter(|(p, _)| p.as_str() != me)
            .map(|(p, m)| PresenceEntry {
                peer_id: p.as_str(),
                metadata: m.as_deref(),
            })
            .collect();
        encode::presence("room", &entries, &[])
    }

    #[test]
    fn outsiders_share_one_encoding_and_members_get_the_roster_without_themselves() {
        let peers = roster(&["a", "b", "c"]);
        let mut cache = SnapshotCache::default();
        let iter = || peers.iter().map(|(p, m)| (p, m));
        let newcomer = PeerId::new("z".to_string());
        let first = cache.snapshot("room", iter(), &newcomer);
        let second = cache.snapshot("room", iter(), &newcomer);
        assert_eq!(first.as_str(), expected(&peers, "z"));
        assert_eq!(
            first.as_str().as_ptr(),
            second.as_str().as_ptr(),
            "shared bytes"
        );
        for me in ["a", "b", "c"] {
            let own = cache.snapshot("room", iter(), &PeerId::new(me.to_string()));
            assert_eq!(own.as_str(), expected(&peers, me));
        }
        // After a change the cache re-encodes from the new roster.
        let fewer = roster(&["b"]);
        cache.invalidate();
        let after = cache.snapshot("room", fewer.iter().map(|(p, m)| (p, m)), &newcomer);
        assert_eq!(after.as_str(), expected(&fewer, "z"));
    }
}
