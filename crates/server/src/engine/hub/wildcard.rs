//! The wildcard subscriptions of a node, indexed so a publish looks only where a match can be.
//!
//! Both engines use it. Per app, patterns live in a trie of `/`-separated segments: literal
//! segments in a hash map, a whole-segment `*` as one child, other one-segment globs
//! (`room-*`) checked one by one, and patterns with `**` kept at the node where their `**`
//! segment starts, matched against the rest of the name. A publish walks only the nodes whose
//! path matches its channel, so honest patterns (`room/*`, `fleet/*/telemetry`, `user/42/**`)
//! cost what they deliver. Patterns that float (a glob or `**` in their first segments) are
//! inspected on every publish of the app, so their number is what the per-app cap bounds.
//!
//! Identical pattern strings share one entry, which holds its subscribers by connection.
//! Removal is a walk down the pattern's own path plus hash removals.
//!
//! Locks: the shard map is held only to find or drop an app's index; each app's index has its
//! own `RwLock`, read by publishes, written by (un)subscribes. Nothing else is locked under it
//! except a connection's queue (a leaf), so it may be taken under a channel lock.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use herald_protocol::glob::{Pattern, Segment};

use crate::conn::Conn;
use crate::ids::{AppId, ChannelName, ConnId};
use crate::sync::lock;

const SHARDS: usize = 16;

/// One subscriber of a pattern.
struct Subscriber {
    conn: Arc<Conn>,
    include_sender_metadata: bool,
}

type Subscribers = HashMap<ConnId, Subscriber>;

/// A trie node: the patterns whose path so far is the node's path.
#[derive(Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    any: Option<Box<Node>>,
    /// One-segment globs, by their source text.
    globs: HashMap<Box<str>, (Pattern, Node)>,
    /// Patterns that end at this node, by source text.
    ends_here: HashMap<ChannelName, Subscribers>,
    /// Patterns whose `**` segment starts here, by source text, with the remaining pattern.
    deep: HashMap<ChannelName, (Pattern, Subscribers)>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.any.is_none()
            && self.globs.is_empty()
            && self.ends_here.is_empty()
            && self.deep.is_empty()
    }

    /// The child for `segment`, created when missing.
    fn child_or_create(&mut self, segment: &Segment) -> &mut Node {
        match segment {
            Segment::Literal(text) => self.literal.entry(text.as_str().into()).or_default(),
            Segment::Any => self.any.get_or_insert_with(Box::default),
            Segment::Glob(glob) => {
                &mut self
                    .globs
                    .entry(glob.as_str().into())
                    .or_insert_with(|| (glob.clone(), Node::default()))
                    .1
            }
        }
    }

    fn child_mut(&mut self, segment: &Segment) -> Option<&mut Node> {
        match segment {
            Segment::Literal(text) => self.literal.get_mut(text.as_str()),
            Segment::Any => self.any.as_deref_mut(),
            Segment::Glob(glob) => self.globs.get_mut(glob.as_str()).map(|(_, n)| n),
        }
    }

    fn drop_child_if_empty(&mut self, segment: &Segment) {
        match segment {
            Segment::Literal(text) => {
                if self.literal.get(text.as_str()).is_some_and(Node::is_empty) {
                    self.literal.remove(text.as_str());
                }
            }
            Segment::Any => {
                if self.any.as_deref().is_some_and(Node::is_empty) {
                    self.any = None;
                }
            }
            Segment::Glob(glob) => {
                if self
                    .globs
                    .get(glob.as_str())
                    .is_some_and(|(_, n)| n.is_empty())
                {
                    self.globs.remove(glob.as_str());
                }
            }
        }
    }

    /// Removes `conn` from the pattern `name` filed under `segments`/`rest` below this node.
    /// Returns (subscription removed, pattern entry removed); prunes emptied nodes.
    fn remove(
        &mut self,
        segments: &[Segment],
        deep: bool,
        name: &ChannelName,
        conn: ConnId,
    ) -> (bool, bool) {
        let Some((first, more)) = segments.split_first() else {
            let subs = if deep {
                self.deep.get_mut(name).map(|(_, s)| s)
            } else {
                self.ends_here.get_mut(name)
            };
            let Some(subs) = subs else {
                return (false, false);
            };
            let removed = subs.remove(&conn).is_some();
            let gone = subs.is_empty();
            if gone {
                if deep {
                    self.deep.remove(name);
                } else {
                    self.ends_here.remove(name);
                }
            }
            return (removed, gone);
        };
        let Some(child) = self.child_mut(first) else {
            return (false, false);
        };
        let outcome = child.remove(more, deep, name, conn);
        self.drop_child_if_empty(first);
        outcome
    }
}

/// One app's wildcard subscriptions.
#[derive(Default)]
struct AppIndex {
    root: Node,
    /// Distinct pattern strings.
    patterns: usize,
    subscriptions: usize,
    /// Set once the index left the shard map; a writer holding a stale `Arc` retries.
    removed: bool,
}

/// A publication's walk: the channel split into segments, and where each one starts.
struct Walk<'a> {
    channel: &'a str,
    segments: Vec<&'a str>,
    starts: Vec<usize>,
}

impl AppIndex {
    /// Calls `visit` with the subscribers of every pattern that matches the channel.
    fn matching<'s>(&'s self, channel: &str, mut visit: impl FnMut(&'s Subscribers)) {
        let segments: Vec<&str> = channel.split('/').collect();
        let mut starts = Vec::with_capacity(segments.len());
        let mut at = 0;
        for segment in &segments {
            starts.push(at);
            at += segment.len() + 1;
        }
        let walk = Walk {
            channel,
            segments,
            starts,
        };
        Self::visit_node(&self.root, &walk, 0, &mut visit);
    }

    fn visit_node<'s>(
        node: &'s Node,
        walk: &Walk<'_>,
        depth: usize,
        visit: &mut impl FnMut(&'s Subscribers),
    ) {
        let Some(segment) = walk.segments.get(depth) else {
            node.ends_here.values().for_each(&mut *visit);
            return;
        };
        if !node.deep.is_empty() {
            let rest = &walk.channel[walk.starts[depth]..];
            for (pattern, subs) in node.deep.values() {
                if pattern.matches(rest) {
                    visit(subs);
                }
            }
        }
        if let Some(child) = node.literal.get(*segment) {
            Self::visit_node(child, walk, depth + 1, visit);
        }
        if let Some(child) = &node.any {
            Self::visit_node(child, walk, depth + 1, visit);
        }
        for (glob, child) in node.globs.values() {
            if glob.matches(segment) {
                Self::visit_node(child, walk, depth + 1, visit);
            }
        }
    }
}

/// What [`WildcardIndex::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new subscription; `first_of_app` when the app had no wildcard subscription before.
    New { first_of_app: bool },
    /// The connection already had this subscription: only its metadata flag was updated.
    Duplicate,
    /// The pattern is new to the app and the app already has the most distinct patterns allowed.
    PatternLimit,
}

/// What [`WildcardIndex::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub removed: bool,
    /// The app has no wildcard subscription left.
    pub app_empty: bool,
}

/// The wildcard subscriptions of every app on this node.
pub struct WildcardIndex {
    shards: Vec<Mutex<HashMap<AppId, Arc<RwLock<AppIndex>>>>>,
}

impl Default for WildcardIndex {
    fn default() -> Self {
        WildcardIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

fn read(index: &RwLock<AppIndex>) -> RwLockReadGuard<'_, AppIndex> {
    index.read().unwrap_or_else(|p| p.into_inner())
}

fn write(index: &RwLock<AppIndex>) -> RwLockWriteGuard<'_, AppIndex> {
    index.write().unwrap_or_else(|p| p.into_inner())
}

impl WildcardIndex {
    fn shard(&self, app: &AppId) -> &Mutex<HashMap<AppId, Arc<RwLock<AppIndex>>>> {
        let mut h = DefaultHasher::new();
        app.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    fn app(&self, app: &AppId) -> Option<Arc<RwLock<AppIndex>>> {
        lock(self.shard(app)).get(app).cloned()
    }

    /// Subscribes `conn` to `pattern` (spelled `name`). A pattern new to the app is refused once
    /// the app has `max_patterns` distinct ones. Otherwise `accepted` runs under the app's lock
    /// before the subscription can match anything, with `true` when the app gets its first
    /// wildcard subscription: what it enqueues precedes every publication the subscription
    /// receives, and it is ordered with the `on_empty` of [`WildcardIndex::remove`].
    pub fn add(
        &self,
        conn: &Arc<Conn>,
        name: &ChannelName,
        pattern: &Pattern,
        include_sender_metadata: bool,
        max_patterns: usize,
        accepted: impl FnOnce(bool),
    ) -> Added {
        let layout = pattern.layout();
        loop {
            let cell = lock(self.shard(&conn.app))
                .entry(conn.app.clone())
                .or_default()
                .clone();
            let mut index = write(&cell);
            if index.removed {
                continue;
            }
            let AppIndex {
                root,
                patterns,
                subscriptions,
                ..
            } = &mut *index;
            let mut node = root;
            for segment in &layout.segments {
                node = node.child_or_create(segment);
            }
            let subs = match &layout.rest {
                Some(rest) => {
                    if !node.deep.contains_key(name) && *patterns >= max_patterns {
                        return Added::PatternLimit;
                    }
                    &mut node
                        .deep
                        .entry(name.clone())
                        .or_insert_with(|| (rest.clone(), HashMap::new()))
                        .1
                }
                None => {
                    if !node.ends_here.contains_key(name) && *patterns >= max_patterns {
                        return Added::PatternLimit;
                    }
                    node.ends_here.entry(name.clone()).or_default()
                }
            };
            let first_of_app = *subscriptions == 0;
            accepted(first_of_app);
            if let Some(existing) = subs.get_mut(&conn.id) {
                existing.include_sender_metadata = include_sender_metadata;
                return Added::Duplicate;
            }
            if subs.is_empty() {
                *patterns += 1;
            }
            subs.insert(
                conn.id,
                Subscriber {
                    conn: conn.clone(),
                    include_sender_metadata,
                },
            );
            *subscriptions += 1;
            return Added::New { first_of_app };
        }
    }

    /// Unsubscribes `conn` from the pattern spelled `name`. `on_empty` runs, under the app's
    /// lock, when the app's last wildcard subscription goes.
    pub fn remove(&self, conn: &Conn, name: &ChannelName, on_empty: impl FnOnce()) -> Removed {
        let nothing = Removed {
            removed: false,
            app_empty: false,
        };
        let Some(cell) = self.app(&conn.app) else {
            return nothing;
        };
        let layout = Pattern::parse(name.as_str()).layout();
        let mut index = write(&cell);
        if index.removed {
            return nothing;
        }
        let (removed, pattern_gone) =
            index
                .root
                .remove(&layout.segments, layout.rest.is_some(), name, conn.id);
        if !removed {
            return nothing;
        }
        index.subscriptions -= 1;
        if pattern_gone {
            index.patterns -= 1;
        }
        let app_empty = index.subscriptions == 0;
        if app_empty {
            on_empty();
        }
        drop(index);
        if app_empty {
            self.forget_if_empty(&conn.app, &cell);
        }
        Removed { removed, app_empty }
    }

    /// Drops an app's empty index from the map (shard, then app: the only nesting).
    fn forget_if_empty(&self, app: &AppId, cell: &Arc<RwLock<AppIndex>>) {
        let mut shard = lock(self.shard(app));
        if shard.get(app).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            let mut index = write(cell);
            if index.subscriptions == 0 {
                index.removed = true;
                shard.remove(app);
            }
        }
    }

    /// Calls `deliver` once per connection with a wildcard subscription matching `channel`
    /// (with that subscription's `include_sender_metadata`), however many of its patterns match.
    /// Runs under the app's read lock only; `deliver` must not block.
    pub fn for_each_match(
        &self,
        app: &AppId,
        channel: &str,
        mut deliver: impl FnMut(&Arc<Conn>, bool),
    ) {
        let Some(cell) = self.app(app) else {
            return;
        };
        let index = read(&cell);
        let mut reached: HashSet<ConnId> = HashSet::new();
        index.matching(channel, |subs| {
            for (id, sub) in subs {
                if reached.insert(*id) {
                    deliver(&sub.conn, sub.include_sender_metadata);
                }
            }
        });
    }

    /// True when the app has wildcard subscriptions here.
    pub fn has_app(&self, app: &AppId) -> bool {
        self.app(app).is_some_and(|c| read(&c).subscriptions > 0)
    }

    /// Apps with wildcard subscriptions here.
    pub fn apps(&self) -> Vec<AppId> {
        let cells: Vec<(AppId, Arc<RwLock<AppIndex>>)> = self
            .shards
            .iter()
            .flat_map(|s| {
                lock(s)
                    .iter()
                    .map(|(a, c)| (a.clone(), c.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        cells
            .into_iter()
            .filter(|(_, c)| read(c).subscriptions > 0)
            .map(|(a, _)| a)
            .collect()
    }

    /// Every (connection, pattern) subscription of an app, for the operator views.
    pub fn subscriptions(&self, app: &AppId) -> Vec<(ConnId, ChannelName)> {
        let Some(cell) = self.app(app) else {
            return Vec::new();
        };
        let index = read(&cell);
        let mut out = Vec::new();
        let mut stack = vec![&index.root];
        while let Some(node) = stack.pop() {
            let ends = node.ends_here.iter();
            let deep = node.deep.iter().map(|(n, (_, s))| (n, s));
            for (name, subs) in ends.chain(deep) {
                out.extend(subs.keys().map(|id| (*id, name.clone())));
            }
            stack.extend(node.literal.values());
            stack.extend(node.any.as_deref());
            stack.extend(node.globs.values().map(|(_, n)| n));
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn conn(n: usize) -> Arc<Conn> {
        let (conn, _rx) = Conn::new(
            AppId::new("app".to_string()),
            crate::ids::PeerId::new(format!("p{n}")),
            None,
            true,
            "publishable",
            64,
        );
        conn
    }

    fn matched(index: &WildcardIndex, channel: &str) -> Vec<ConnId> {
        let mut out = Vec::new();
        index.for_each_match(&AppId::new("app".to_string()), channel, |c, _| {
            out.push(c.id)
        });
        out.sort();
        out
    }

    fn add(index: &WildcardIndex, c: &Arc<Conn>, p: &str) -> Added {
        let name = ChannelName::new(p.to_string());
        index.add(c, &name, &Pattern::parse(p), false, usize::MAX, |_| {})
    }

    fn remove(index: &WildcardIndex, c: &Arc<Conn>, p: &str) -> Removed {
        index.remove(c, &ChannelName::new(p.to_string()), || {})
    }

    #[test]
    fn matches_each_kind_of_segment_and_delivers_once() {
        let index = WildcardIndex::default();
        let (a, b, c) = (conn(1), conn(2), conn(3));
        assert_eq!(add(&index, &a, "room/*"), Added::New { first_of_app: true });
        assert_eq!(
            add(&index, &a, "room/**"),
            Added::New {
                first_of_app: false
            }
        );
        assert_eq!(
            add(&index, &b, "room/r-*"),
            Added::New {
                first_of_app: false
            }
        );
        assert_eq!(
            add(&index, &c, "**/t"),
            Added::New {
                first_of_app: false
            }
        );
        assert_eq!(add(&index, &a, "room/*"), Added::Duplicate);
        assert_eq!(matched(&index, "room/r-1"), vec![a.id, b.id]);
        assert_eq!(matched(&index, "room/x/t"), vec![a.id, c.id]);
        assert_eq!(matched(&index, "room"), Vec::<ConnId>::new());
        assert_eq!(matched(&index, "/t"), vec![c.id]);
        assert_eq!(matched(&index, "other/x"), Vec::<ConnId>::new());
    }

    #[test]
    fn identical_patterns_share_one_entry_and_removal_prunes() {
        let index = WildcardIndex::default();
        let (a, b) = (conn(1), conn(2));
        let app = AppId::new("app".to_string());
        let name = ChannelName::new("x/*/y".to_string());
        let p = Pattern::parse("x/*/y");
        assert!(matches!(
            index.add(&a, &name, &p, false, 1, |_| {}),
            Added::New { .. }
        ));
        // Same pattern: no new distinct pattern, so the cap of 1 does not refuse it.
        assert!(matches!(
            index.add(&b, &name, &p, true, 1, |_| {}),
            Added::New { .. }
        ));
        let other = ChannelName::new("x/**".to_string());
        let refused = index.add(&a, &other, &Pattern::parse("x/**"), false, 1, |_| {});
        assert_eq!(refused, Added::PatternLimit);
        let mut flags = Vec::new();
        index.for_each_match(&app, "x/1/y", |c, m| flags.push((c.id, m)));
        flags.sort();
        assert_eq!(flags, vec![(a.id, false), (b.id, true)]);

        assert!(remove(&index, &a, "x/*/y").removed);
        assert!(!remove(&index, &a, "x/*/y").removed);
        let mut emptied = false;
        let last = index.remove(&b, &name, || emptied = true);
        assert!(last.removed && last.app_empty && emptied);
        assert!(!index.has_app(&app));
        assert!(index.apps().is_empty());
        assert!(lock(index.shard(&app)).is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn text(alphabet: &'static [char], max: usize) -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(alphabet), 0..=max)
                .prop_map(|chars| chars.into_iter().collect())
        }

        const PATTERN: &[char] = &['a', 'b', '/', '*', '\\'];
        const NAME: &[char] = &['a', 'b', '/', '*', '\\'];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// The index finds exactly the connections a scan of every pattern finds, also after
            /// some subscriptions were removed again.
            #[test]
            fn index_agrees_with_scanning_every_pattern(
                subs in proptest::collection::vec((0usize..6, text(PATTERN, 7)), 1..24),
                drop_every in 2usize..5,
                names in proptest::collection::vec(text(NAME, 8), 1..12),
            ) {
                let conns: Vec<Arc<Conn>> = (0..6).map(conn).collect();
                let index = WildcardIndex::default();
                let mut live: Vec<(usize, String)> = Vec::new();
                for (i, (who, p)) in subs.iter().enumerate() {
                    add(&index, &conns[*who], p);
                    live.push((*who, p.clone()));
                    if i % drop_every == 0 {
                        let (w, q) = live.remove(0);
                        remove(&index, &conns[w], &q);
                        live.retain(|(lw, lq)| !(*lw == w && *lq == q));
                    }
                }
                for name in &names {
                    let mut expect: Vec<ConnId> = live
                        .iter()
                        .filter(|(_, p)| Pattern::parse(p).matches(name))
                        .map(|(w, _)| conns[*w].id)
                        .collect();
                    expect.sort();
                    expect.dedup();
                    prop_assert_eq!(matched(&index, name), expect, "channel {:?}", name);
                }
            }
        }
    }
}
