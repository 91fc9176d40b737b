//! The roster of one channel: which remote peers are in it, kept from presence frames. It
//! knows nothing of the connection or the application; it applies a frame and says what
//! changed, and [`super::Peer`] turns the changes into callbacks and stream events.

use std::collections::{BTreeMap, HashSet};

use crate::types::{Metadata, PresencePeer};

/// What a roster entry must do when the roster changes under it. [`super::RemotePeer`] is
/// the real one; tests use a plain stand-in.
pub(crate) trait Member: Clone {
    /// The remote survived a reconcile: its metadata may have rotated during the drop.
    fn refresh(&self, metadata: Option<Metadata>);
    /// The remote left the roster; a handle kept elsewhere must see that.
    fn depart(&self);
}

/// One change to report, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change<M> {
    /// A new remote entered the roster.
    Joined(M),
    /// A remote left the roster.
    Left(M),
    /// A remote survived a reconcile: same handle, fresh metadata, its connection to reset.
    Reset(M),
}

/// The remote peers of one channel, by peer id, never the local peer, at most `capacity`.
pub(crate) struct Roster<M> {
    members: BTreeMap<String, M>,
    capacity: usize,
}

impl<M: Member> Roster<M> {
    /// An empty roster that ignores joins beyond `capacity` (as MeteredPeer does).
    pub(crate) fn new(capacity: usize) -> Self {
        Roster {
            members: BTreeMap::new(),
            capacity,
        }
    }

    pub(crate) fn get(&self, peer_id: &str) -> Option<&M> {
        self.members.get(peer_id)
    }

    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members, by peer id.
    pub(crate) fn members(&self) -> impl Iterator<Item = &M> {
        self.members.values()
    }

    /// Applies a presence delta (or the first snapshot after a subscribe): joins first, then
    /// departures, as the frame lists them. A join of a member already present changes
    /// nothing; a departure of a peer not present is ignored. `make` builds the handle of a
    /// newcomer.
    pub(crate) fn apply_delta(
        &mut self,
        local: Option<&str>,
        joined: &[PresencePeer],
        left: &[PresencePeer],
        make: &mut impl FnMut(&PresencePeer) -> M,
    ) -> Vec<Change<M>> {
        let mut changes = Vec::new();
        for entry in joined {
            self.add(local, entry, make, &mut changes);
        }
        for entry in left {
            self.remove(&entry.peer_id, &mut changes);
        }
        changes
    }

    /// Diffs the post-reconnect snapshot against the roster (spec §8.4): departures first,
    /// then survivors (same handle, fresh metadata, connection reset) and newcomers, in the
    /// snapshot's order. A peer listed twice counts once, with its first entry.
    pub(crate) fn reconcile(
        &mut self,
        local: Option<&str>,
        snapshot: &[PresencePeer],
        make: &mut impl FnMut(&PresencePeer) -> M,
    ) -> Vec<Change<M>> {
        let mut changes = Vec::new();
        let present: HashSet<&str> = snapshot
            .iter()
            .map(|p| p.peer_id.as_str())
            .filter(|id| Some(*id) != local)
            .collect();
        let departed: Vec<String> = self
            .members
            .keys()
            .filter(|id| !present.contains(id.as_str()))
            .cloned()
            .collect();
        for id in departed {
            self.remove(&id, &mut changes);
        }
        let mut seen = HashSet::new();
        for entry in snapshot {
            if Some(entry.peer_id.as_str()) == local || !seen.insert(entry.peer_id.as_str()) {
                continue;
            }
            match self.members.get(&entry.peer_id) {
                Some(survivor) => {
                    survivor.refresh(entry.metadata.clone());
                    changes.push(Change::Reset(survivor.clone()));
                }
                None => self.add(local, entry, make, &mut changes),
            }
        }
        changes
    }

    /// Empties the roster (leave, terminal close, failed join): everyone leaves, by peer id.
    pub(crate) fn clear(&mut self) -> Vec<Change<M>> {
        let mut changes = Vec::new();
        for (_, member) in std::mem::take(&mut self.members) {
            member.depart();
            changes.push(Change::Left(member));
        }
        changes
    }

    fn add(
        &mut self,
        local: Option<&str>,
        entry: &PresencePeer,
        make: &mut impl FnMut(&PresencePeer) -> M,
        changes: &mut Vec<Change<M>>,
    ) {
        if Some(entry.peer_id.as_str()) == local || self.members.contains_key(&entry.peer_id) {
            return;
        }
        if self.members.len() >= self.capacity {
            tracing::warn!(peer_id = %entry.peer_id, cap = self.capacity, "roster full; ignoring a join");
            return;
        }
        let member = make(entry);
        self.members.insert(entry.peer_id.clone(), member.clone());
        changes.push(Change::Joined(member));
    }

    fn remove(&mut self, peer_id: &str, changes: &mut Vec<Change<M>>) {
        if let Some(member) = self.members.remove(peer_id) {
            member.depart();
            changes.push(Change::Left(member));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    /// A stand-in handle: its id, the serial of its creation (so a test can tell a kept handle
    /// from a new one), its metadata and whether it is still present.
    #[derive(Clone, Debug)]
    struct Fake(Arc<FakeInner>);

    #[derive(Debug)]
    struct FakeInner {
        id: String,
        serial: u64,
        metadata: Mutex<Option<Metadata>>,
        present: AtomicBool,
    }

    impl PartialEq for Fake {
        fn eq(&self, other: &Self) -> bool {
            Arc::ptr_eq(&self.0, &other.0)
        }
    }

    impl Fake {
        fn metadata(&self) -> Option<Metadata> {
            self.0.metadata.lock().unwrap().clone()
        }
        fn present(&self) -> bool {
            self.0.present.load(Ordering::SeqCst)
        }
    }

    impl Member for Fake {
        fn refresh(&self, metadata: Option<Metadata>) {
            *self.0.metadata.lock().unwrap() = metadata;
        }
        fn depart(&self) {
            self.0.present.store(false, Ordering::SeqCst);
        }
    }

    /// Builds fakes with increasing serials.
    fn maker() -> impl FnMut(&PresencePeer) -> Fake {
        let next = AtomicU64::new(0);
        move |entry| {
            Fake(Arc::new(FakeInner {
                id: entry.peer_id.clone(),
                serial: next.fetch_add(1, Ordering::SeqCst),
                metadata: Mutex::new(entry.metadata.clone()),
                present: AtomicBool::new(true),
            }))
        }
    }

    fn meta(name: &str) -> Option<Metadata> {
        match json!({ "name": name }) {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        }
    }

    fn peer(id: &str, name: &str) -> PresencePeer {
        PresencePeer {
            peer_id: id.into(),
            metadata: meta(name),
        }
    }

    /// The changes as (kind, peer id), which is what an application sees.
    fn summary(changes: &[Change<Fake>]) -> Vec<(&'static str, String)> {
        changes
            .iter()
            .map(|c| match c {
                Change::Joined(m) => ("joined", m.0.id.clone()),
                Change::Left(m) => ("left", m.0.id.clone()),
                Change::Reset(m) => ("reset", m.0.id.clone()),
            })
            .collect()
    }

    fn ev(kind: &'static str, id: &str) -> (&'static str, String) {
        (kind, id.to_owned())
    }

    fn ids(roster: &Roster<Fake>) -> Vec<String> {
        roster.members().map(|m| m.0.id.clone()).collect()
    }

    const ME: Option<&str> = Some("me");

    #[test]
    fn reconcile_reports_the_gone_and_the_new_and_keeps_survivors() {
        let mut make = maker();
        let mut roster = Roster::new(16);
        let first = [peer("a", "A"), peer("b", "B"), peer("c", "C")];
        roster.apply_delta(ME, &first, &[], &mut make);
        let b_before = roster.get("b").unwrap().clone();
        let a_before = roster.get("a").unwrap().clone();

        // After the drop: a is gone, b and c stayed, d is new.
        let snapshot = [peer("d", "D"), peer("c", "C"), peer("b", "B2")];
        let changes = roster.reconcile(ME, &snapshot, &mut make);
        assert_eq!(
            summary(&changes),
            vec![
                ev("left", "a"),
                ev("joined", "d"),
                ev("reset", "c"),
                ev("reset", "b")
            ],
            "departures first, then the snapshot's order; no joined or left for survivors"
        );
        assert_eq!(ids(&roster), ["b", "c", "d"]);
        assert!(!a_before.present(), "a departed handle refuses to send");
        let b_after = roster.get("b").unwrap();
        assert_eq!(*b_after, b_before, "a survivor keeps its handle");
        assert!(b_after.present());
        assert_eq!(
            b_after.metadata(),
            meta("B2"),
            "a survivor's metadata is refreshed"
        );
    }

    #[test]
    fn an_identical_snapshot_changes_nobody() {
        let mut make = maker();
        let mut roster = Roster::new(16);
        let everyone = [peer("a", "A"), peer("b", "B")];
        roster.apply_delta(ME, &everyone, &[], &mut make);
        let before: Vec<Fake> = roster.members().cloned().collect();
        let changes = roster.reconcile(ME, &everyone, &mut make);
        assert_eq!(summary(&changes), vec![ev("reset", "a"), ev("reset", "b")]);
        assert_eq!(roster.members().cloned().collect::<Vec<_>>(), before);
    }

    #[test]
    fn joined_twice_is_one_peer() {
        let mut make = maker();
        let mut roster = Roster::new(16);
        let once = roster.apply_delta(ME, &[peer("a", "A")], &[], &mut make);
        let twice = roster.apply_delta(ME, &[peer("a", "A2")], &[], &mut make);
        assert_eq!(summary(&once), vec![ev("joined", "a")]);
        assert!(twice.is_empty());
        assert_eq!(roster.len(), 1);
        assert_eq!(
            roster.get("a").unwrap().metadata(),
            meta("A"),
            "a repeated join keeps the first handle as it was"
        );
        // Listed twice in one frame, or twice in a snapshot: still one.
        let both = roster.apply_delta(ME, &[peer("b", "B"), peer("b", "B")], &[], &mut make);
        assert_eq!(summary(&both), vec![ev("joined", "b")]);
        let snap = [peer("c", "C1"), peer("c", "C2"), peer("a", "A3")];
        let changes = roster.reconcile(ME, &snap, &mut make);
        assert_eq!(
            summary(&changes),
            vec![ev("left", "b"), ev("joined", "c"), ev("reset", "a")]
        );
        assert_eq!(
            roster.get("c").unwrap().metadata(),
            meta("C1"),
            "first entry wins"
        );
        assert_eq!(roster.get("a").unwrap().metadata(), meta("A3"));
    }

    #[test]
    fn the_local_peer_never_appears() {
        let mut make = maker();
        let mut roster = Roster::new(16);
        let changes = roster.apply_delta(ME, &[peer("me", "Me"), peer("a", "A")], &[], &mut make);
        assert_eq!(summary(&changes), vec![ev("joined", "a")]);
        let changes = roster.reconcile(ME, &[peer("me", "Me"), peer("a", "A")], &mut make);
        assert_eq!(summary(&changes), vec![ev("reset", "a")]);
        let changes = roster.apply_delta(ME, &[], &[peer("me", "Me")], &mut make);
        assert!(
            changes.is_empty(),
            "our own departure is not a roster change"
        );
        assert_eq!(ids(&roster), ["a"]);
        // Before the first welcome there is no local id, and nobody is filtered.
        let mut fresh = Roster::new(16);
        fresh.apply_delta(None, &[peer("me", "Me")], &[], &mut make);
        assert_eq!(ids(&fresh), ["me"]);
    }

    #[test]
    fn left_for_an_unknown_peer_changes_nothing() {
        let mut make = maker();
        let mut roster = Roster::new(16);
        roster.apply_delta(ME, &[peer("a", "A")], &[], &mut make);
        let changes = roster.apply_delta(ME, &[], &[peer("zed", "Z")], &mut make);
        assert!(changes.is_empty());
        assert_eq!(ids(&roster), ["a"]);
        let a = roster.get("a").unwrap().clone();
        let changes = roster.apply_delta(ME, &[], &[peer("a", "A"), peer("a", "A")], &mut make);
        assert_eq!(summary(&changes), vec![ev("left", "a")], "left once");
        assert!(!a.present());
        assert!(roster.is_empty());
    }

    #[test]
    fn a_delta_joins_before_it_removes() {
        let mut make = maker();
        let mut roster = Roster::new(16);
        // Joined and left in one frame: the remote passes through.
        let changes = roster.apply_delta(ME, &[peer("a", "A")], &[peer("a", "A")], &mut make);
        assert_eq!(summary(&changes), vec![ev("joined", "a"), ev("left", "a")]);
        assert!(roster.is_empty());
    }

    #[test]
    fn joins_beyond_the_capacity_are_ignored() {
        let mut make = maker();
        let mut roster = Roster::new(2);
        let changes = roster.apply_delta(
            ME,
            &[peer("a", "A"), peer("b", "B"), peer("c", "C")],
            &[],
            &mut make,
        );
        assert_eq!(
            summary(&changes),
            vec![ev("joined", "a"), ev("joined", "b")]
        );
        roster.apply_delta(ME, &[], &[peer("a", "A")], &mut make);
        let changes = roster.apply_delta(ME, &[peer("c", "C")], &[], &mut make);
        assert_eq!(summary(&changes), vec![ev("joined", "c")], "room again");
        // A reconcile frees the departed's places before it admits newcomers.
        let changes = roster.reconcile(
            ME,
            &[peer("d", "D"), peer("e", "E"), peer("f", "F")],
            &mut make,
        );
        assert_eq!(
            summary(&changes),
            vec![
                ev("left", "b"),
                ev("left", "c"),
                ev("joined", "d"),
                ev("joined", "e")
            ]
        );
    }

    #[test]
    fn clear_lets_everyone_leave() {
        let mut make = maker();
        let mut roster = Roster::new(16);
        roster.apply_delta(ME, &[peer("b", "B"), peer("a", "A")], &[], &mut make);
        let handles: Vec<Fake> = roster.members().cloned().collect();
        let changes = roster.clear();
        assert_eq!(summary(&changes), vec![ev("left", "a"), ev("left", "b")]);
        assert!(roster.is_empty());
        assert!(handles.iter().all(|h| !h.present()));
        assert!(roster.clear().is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        /// A small alphabet so that joins, leaves and snapshots collide often; "me" is local.
        const IDS: &[&str] = &["me", "a", "b", "c", "d", "e"];
        const NAMES: &[&str] = &["x", "y"];

        #[derive(Debug, Clone)]
        enum Op {
            Delta(Vec<PresencePeer>, Vec<PresencePeer>),
            Reconcile(Vec<PresencePeer>),
            Clear,
        }

        fn entry() -> impl Strategy<Value = PresencePeer> {
            (
                proptest::sample::select(IDS),
                proptest::sample::select(NAMES),
            )
                .prop_map(|(id, name)| peer(id, name))
        }

        fn entries() -> impl Strategy<Value = Vec<PresencePeer>> {
            proptest::collection::vec(entry(), 0..5)
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (entries(), entries()).prop_map(|(j, l)| Op::Delta(j, l)),
                2 => entries().prop_map(Op::Reconcile),
                1 => Just(Op::Clear),
            ]
        }

        /// The reference: a map from peer id to (metadata, serial of its handle), with the
        /// expected changes stated as sets: who left, who stayed, who is new.
        #[derive(Default)]
        struct Model {
            peers: BTreeMap<String, (Option<Metadata>, u64)>,
            serials: u64,
        }

        impl Model {
            fn admit(&mut self, e: &PresencePeer, capacity: usize) -> bool {
                if e.peer_id == "me" || self.peers.contains_key(&e.peer_id) {
                    return false;
                }
                if self.peers.len() >= capacity {
                    return false;
                }
                self.peers
                    .insert(e.peer_id.clone(), (e.metadata.clone(), self.serials));
                self.serials += 1;
                true
            }

            fn apply(&mut self, op: &Op, capacity: usize) -> Vec<(&'static str, String)> {
                let mut out = Vec::new();
                match op {
                    Op::Delta(joined, left) => {
                        for e in joined {
                            if self.admit(e, capacity) {
                                out.push(ev("joined", &e.peer_id));
                            }
                        }
                        for e in left {
                            if self.peers.remove(&e.peer_id).is_some() {
                                out.push(ev("left", &e.peer_id));
                            }
                        }
                    }
                    Op::Reconcile(snapshot) => {
                        let listed: BTreeSet<&str> = snapshot
                            .iter()
                            .map(|e| e.peer_id.as_str())
                            .filter(|id| *id != "me")
                            .collect();
                        let gone: Vec<String> = self
                            .peers
                            .keys()
                            .filter(|id| !listed.contains(id.as_str()))
                            .cloned()
                            .collect();
                        for id in gone {
                            self.peers.remove(&id);
                            out.push(ev("left", &id));
                        }
                        let mut done = BTreeSet::new();
                        for e in snapshot {
                            if e.peer_id == "me" || !done.insert(e.peer_id.clone()) {
                                continue;
                            }
                            if let Some(kept) = self.peers.get_mut(&e.peer_id) {
                                kept.0 = e.metadata.clone();
                                out.push(ev("reset", &e.peer_id));
                            } else if self.admit(e, capacity) {
                                out.push(ev("joined", &e.peer_id));
                            }
                        }
                    }
                    Op::Clear => {
                        for id in std::mem::take(&mut self.peers).into_keys() {
                            out.push(ev("left", &id));
                        }
                    }
                }
                out
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            /// After every operation the roster holds exactly the model's peers with the
            /// model's metadata and handles, reports the model's changes, never holds the
            /// local peer or more than its capacity, and every handle that left knows it.
            #[test]
            fn roster_agrees_with_the_model(
                ops in proptest::collection::vec(op(), 1..16),
                capacity in 1usize..6,
            ) {
                let mut make = maker();
                let mut roster = Roster::new(capacity);
                let mut model = Model::default();
                let mut departed: Vec<Fake> = Vec::new();
                for op in &ops {
                    let changes = match op {
                        Op::Delta(j, l) => roster.apply_delta(ME, j, l, &mut make),
                        Op::Reconcile(s) => roster.reconcile(ME, s, &mut make),
                        Op::Clear => roster.clear(),
                    };
                    let expected = model.apply(op, capacity);
                    prop_assert_eq!(summary(&changes), expected, "after {:?}", op);
                    for change in &changes {
                        if let Change::Left(m) = change {
                            departed.push(m.clone());
                        }
                    }
                    let actual: BTreeMap<String, (Option<Metadata>, u64)> = roster
                        .members()
                        .map(|m| (m.0.id.clone(), (m.metadata(), m.0.serial)))
                        .collect();
                    prop_assert_eq!(&actual, &model.peers, "after {:?}", op);
                    prop_assert!(roster.get("me").is_none());
                    prop_assert!(roster.len() <= capacity);
                    prop_assert!(roster.members().all(Fake::present));
                    prop_assert!(departed.iter().all(|m| !m.present()));
                }
            }

            /// A reconcile ends with exactly the snapshot's peers (capacity allowing), and
            /// whoever was present before and after keeps the handle: the set view of the
            /// "left for the gone, joined for the new, nothing else" rule.
            #[test]
            fn reconcile_is_a_set_difference(
                before in entries(),
                snapshot in entries(),
            ) {
                let mut make = maker();
                let mut roster = Roster::new(usize::MAX);
                roster.apply_delta(ME, &before, &[], &mut make);
                let old: BTreeMap<String, Fake> = roster
                    .members()
                    .map(|m| (m.0.id.clone(), m.clone()))
                    .collect();
                let changes = roster.reconcile(ME, &snapshot, &mut make);
                let old_ids: BTreeSet<String> = old.keys().cloned().collect();
                let new_ids: BTreeSet<String> = snapshot
                    .iter()
                    .map(|e| e.peer_id.clone())
                    .filter(|id| id != "me")
                    .collect();
                let of = |kind: &str| -> BTreeSet<String> {
                    summary(&changes)
                        .into_iter()
                        .filter(|(k, _)| *k == kind)
                        .map(|(_, id)| id)
                        .collect()
                };
                prop_assert_eq!(of("left"), &old_ids - &new_ids);
                prop_assert_eq!(of("joined"), &new_ids - &old_ids);
                prop_assert_eq!(of("reset"), &old_ids & &new_ids);
                prop_assert_eq!(changes.len(), (&old_ids | &new_ids).len(), "one change per peer");
                prop_assert_eq!(ids(&roster).into_iter().collect::<BTreeSet<_>>(), new_ids);
                for (id, handle) in &old {
                    if let Some(now) = roster.get(id) {
                        prop_assert_eq!(now, handle);
                    }
                }
            }
        }
    }
}
