//! A watcher's presence roster as the frames it received tell it, checked frame by frame the
//! way a strict client would: the snapshot comes first, no frame names a peer twice or the
//! watcher itself, a `joined` is never for a peer already known, a `left` never for one never
//! known. Property tests feed it every frame and compare the view with the truth at the end.

use std::collections::BTreeSet;

use serde_json::Value;

/// What one connection has been told of a channel's roster.
#[derive(Debug, Default)]
pub struct PresenceView {
    /// `None` until the snapshot arrives.
    pub roster: Option<BTreeSet<String>>,
}

impl PresenceView {
    /// Applies one frame (any type; only `presence` frames count) received by peer `me`,
    /// panicking on anything a strict client would reject.
    pub fn absorb(&mut self, frame: &str, me: &str) {
        let v: Value = serde_json::from_str(frame).unwrap();
        if v["type"] != "presence" {
            return;
        }
        let names = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["peerId"].as_str().unwrap().to_string())
                .collect()
        };
        let (joined, left) = (names("joined"), names("left"));
        let mut named: Vec<&String> = joined.iter().chain(&left).collect();
        named.sort();
        let before = named.len();
        named.dedup();
        assert_eq!(before, named.len(), "a frame names a peer twice: {v}");
        assert!(
            !named.iter().any(|p| *p == me),
            "{me} told about itself: {v}"
        );
        match self.roster.as_mut() {
            None => {
                assert!(left.is_empty(), "the snapshot comes first: {v}");
                self.roster = Some(joined.into_iter().collect());
            }
            Some(roster) => {
                for p in joined {
                    assert!(
                        roster.insert(p.clone()),
                        "{me}: joined {p} it already knew: {v}"
                    );
                }
                for p in left {
                    assert!(roster.remove(&p), "{me}: left {p} it never knew: {v}");
                }
            }
        }
    }

    /// Asserts the view equals `truth` without `me`.
    pub fn assert_equals(&self, truth: &BTreeSet<String>, me: &str) {
        let mut want = truth.clone();
        want.remove(me);
        assert_eq!(self.roster.as_ref(), Some(&want), "view of {me}");
    }
}
