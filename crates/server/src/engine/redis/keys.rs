//! Names of every Redis key and pub/sub topic the engine uses: no other file builds one (the
//! Lua scripts derive a channel's keys from its base key with the suffixes listed below).
//!
//! Every key carries a hash tag (`{…}`), so the keys of one channel, one peer route or one node
//! live in one Redis Cluster slot and each script touches a single slot. A channel's topic
//! carries the channel's tag too, so in cluster mode a sharded `SPUBLISH` from a channel's
//! script stays on the shard that holds the channel. On a single Redis the tags change nothing.
//!
//! Layout (`P` = key prefix, `ck` = `<app>:<channel>`, `pk` = `<app>:<peer>`, `I` = node
//! instance, `<node>#<incarnation>`):
//!
//! | Key | Type | Holds |
//! |---|---|---|
//! | `P{c:ck}:members` | hash | peer → number of node instances holding the peer on the channel |
//! | `P{c:ck}:meta` | hash | peer → peerMetadata JSON (`""` for none), latest subscriber wins |
//! | `P{c:ck}:seq` | string | presence sequence number, bumped on every change; expires an hour after the channel empties (with `:epoch` and `:vseq`) |
//! | `P{c:ck}:epoch` | string | the life of the channel's numbering: set when `:seq` starts at 1 |
//! | `P{c:ck}:vseq` | string | sequence number of the last change a node's roster mirror follows (`joined`, `left`, `meta`) |
//! | `P{c:ck}:subs` | hash | I → local subscribed connections (REST `delivered`) |
//! | `P{c:ck}:holds` | set | `I\npeer`: which instance holds which peer (crash cleanup) |
//! | `P{c:ck}:holdgen` | hash | `I\npeer` → the instance's re-assertion generation when it wrote the hold (a re-assertion drops only holds older than itself) |
//! | `P{c:ck}:hist` | stream | channel history (only channels a `[[history.channels]]` group names): entry id `<offset>-0`, fields `t` (publish time, Unix ms) and `e` (the `message` event as published, with its position); trimmed to `max_messages` and `max_age_secs` by the publish script |
//! | `P{c:ck}:hpos` | hash | `epoch` and `offset` (the last one given) of the channel's history; missing means a new epoch. Expires with `:hist`, `max_age_secs` after the last publish |
//! | `P{p:pk}:route` | hash | I → connections of the peer on that instance (direct routing) |
//! | `P{p:pk}:parked`, `:rpos`, `:rbox`, `:lpos` | string, hashes, list | lossless reconnect of a JWT peer: parked marker, parked positions, held directs, lazily written positions (`resume_scripts.rs` builds them from the peer base; they expire with `history.resume_window_secs`) |
//! | `P{n:I}:index` | hash | channel or route base key (`P{c:ck}`, `P{p:pk}`) → generation: everything the instance may hold, so a reaper finds it |
//! | `P{cluster}:nodes` | set | live node instances |
//! | `P{cluster}:lease:I` | string | the instance's lease; it expires when the node stops renewing |
//! | `P{cluster}:reaped:I` | string | marks a reaped instance: its node re-incarnates and announces its peers again |
//! | `P{cluster}:reaping` | zset | instances being cleaned up → when the cleanup may stop |
//! | `P{cluster}:patterns` | set | `app\nI`: apps with wildcard subscribers (cluster mode) |
//! | `P{w:<app>:<e>}:outbox` | stream | webhook events of one endpoint (`e`: a hash of its URL) not yet delivered: fields `k` (type) and `e` (the JSON after its id, which is `evt_<entry id>`); consumer group `delivery`, one consumer per node instance |
//! | `P{w:<app>:<e>}:owner` | string | the instance delivering the endpoint's events (a lease) |
//! | `P{w:<app>:<e>}:dropped` | string | events refused because the outbox was full |
//! | `P{w:<app>}:offline` | zset | peer → when its `peer.offline` is due (its last connection went; a reconnect within the grace cancels it) |
//! | `P{T}w:<app>:<e>:outbox`, `:dropped` | stream, string | cluster mode: the endpoint's outbox and drop count in one slot, `T` a tag that hashes to the slot of the script's own keys (`slots.rs`); entry ids become event ids `evt_<entry id>.<slot>` |
//! | `P{w:<app>:<e>}:slots` | set | cluster mode: slots whose outbox may hold events (a node adds a slot before its first script that may append there) |
//! | `P{w:<app>:<e>}:dirty` | set | cluster mode: slots appended to since the owner last looked (a hint: the owner also sweeps every registered slot) |
//! | `P{w:<app>:<e>}:total` | string | cluster mode: undelivered events over all slots, as the owner last counted them (nodes refuse events past `queue_max_bytes`); expires |
//! | `P{T}w:<app>:offline` | zset | cluster mode: the pending-offline zset of the routes in `T`'s slot |
//! | `P{w:<app>}:oslots`, `:owner` | set, string | cluster mode: slots with a pending-offline zset; the node sweeping them (a lease) |
//!
//! Topics: `Pch:{c:ck}` carries a channel's messages and presence deltas (`SPUBLISH` in cluster
//! mode); `Pnode:{n:<node>}` carries directs and kicks for one node. Wildcard subscriptions
//! listen with `PSUBSCRIBE Pch:{c:<app>:*` on a single Redis. Sharded pub/sub has no
//! patterns, so in cluster mode messages of an app with wildcard subscribers are also published
//! to the classic topic `Papp:<app>`, and `Ppatterns` tells nodes when an app gains some.
pub struct Keys {
    prefix: String,
    channel_topic_prefix: String,
    node_topic: String,
    patterns_topic: String,
}

impl Keys {
    pub fn new(prefix: &str, node: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            channel_topic_prefix: format!("{prefix}ch:{{c:"),
            node_topic: format!("{prefix}node:{{n:{node}}}"),
            patterns_topic: format!("{prefix}patterns"),
        }
    }

    /// Base of a channel's keys: `P{c:<app>:<channel>}`.
    pub fn channel_base(&self, app: &str, channel: &str) -> String {
        format!("{}{{c:{app}:{channel}}}", self.prefix)
    }

    /// Base of a peer's route key: `P{p:<app>:<peer>}`.
    pub fn route_base(&self, app: &str, peer: &str) -> String {
        format!("{}{{p:{app}:{peer}}}", self.prefix)
    }

    pub fn route_key(&self, app: &str, peer: &str) -> String {
        self.route_key_of_base(&self.route_base(app, peer))
    }

    /// A peer's route hash, given its base key.
    pub fn route_key_of_base(&self, base: &str) -> String {
        format!("{base}:route")
    }

    /// A channel's per-instance subscriber counts, given its base key.
    pub fn subscribers_key(&self, base: &str) -> String {
        format!("{base}:subs")
    }

    /// Base of a node instance's keys: `P{n:<instance>}`.
    pub fn node_base(&self, instance: &str) -> String {
        format!("{}{{n:{instance}}}", self.prefix)
    }

    pub fn index_key(&self, instance: &str) -> String {
        format!("{}:index", self.node_base(instance))
    }

    /// Base of the cluster-wide registry (one slot): `P{cluster}`.
    pub fn cluster_base(&self) -> String {
        format!("{}{{cluster}}", self.prefix)
    }

    /// Instances being cleaned up (reaping).
    pub fn reaping_key(&self) -> String {
        format!("{}:reaping", self.cluster_base())
    }

    /// Cluster mode: which instances have wildcard subscribers in which apps.
    pub fn patterns_key(&self) -> String {
        format!("{}:patterns", self.cluster_base())
    }

    /// A member of [`Keys::patterns_key`]: `app\ninstance`.
    pub fn pattern_interest_entry(&self, app: &str, instance: &str) -> String {
        format!("{app}\n{instance}")
    }

    /// The app of a [`Keys::pattern_interest_entry`].
    pub fn app_of_pattern_interest_entry(entry: &str) -> Option<&str> {
        entry.split_once('\n').map(|(app, _)| app)
    }

    /// Which kind of base key an index entry is.
    pub fn is_channel_base(&self, base: &str) -> bool {
        base.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with("{c:"))
    }

    /// The topic of a channel, given its base key (`P{c:ck}` → `Pch:{c:ck}`).
    pub fn topic_of_base(&self, base: &str) -> String {
        format!("{}ch:{}", self.prefix, &base[self.prefix.len()..])
    }

    pub fn channel(&self, app: &str, channel: &str) -> String {
        format!("{}{app}:{channel}}}", self.channel_topic_prefix)
    }

    /// Every channel topic of an app, for `PSUBSCRIBE` (app ids hold no glob characters).
    pub fn app_pattern(&self, app: &str) -> String {
        format!("{}{app}:*", self.channel_topic_prefix)
    }

    /// The classic topic that carries an app's messages to wildcard subscribers in cluster mode.
    pub fn app_topic(&self, app: &str) -> String {
        format!("{}app:{app}", self.prefix)
    }

    pub fn app_of_topic<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("app:")
    }

    /// Where nodes announce that an app gained wildcard subscribers (cluster mode).
    pub fn patterns_topic(&self) -> &str {
        &self.patterns_topic
    }

    /// This node's topic for directs and kicks.
    pub fn node(&self) -> &str {
        &self.node_topic
    }

    /// What precedes `{n:<node>}` in a node topic (the `ROUTE` script completes it).
    pub fn node_topic_prefix(&self) -> String {
        format!("{}node:", self.prefix)
    }

    /// The topic of another node, given one of its instance ids (`<node>#<incarnation>`).
    pub fn node_topic_of_instance(&self, instance: &str) -> String {
        let node = instance.rsplit_once('#').map_or(instance, |(node, _)| node);
        format!("{}node:{{n:{node}}}", self.prefix)
    }

    /// Base of one webhook endpoint's keys: `P{w:<app>:<endpoint>}`.
    pub fn webhook_base(&self, app: &str, endpoint: &str) -> String {
        format!("{}{{w:{app}:{endpoint}}}", self.prefix)
    }

    /// An app's peers whose `peer.offline` is pending.
    pub fn webhook_offline_key(&self, app: &str) -> String {
        format!("{}{{w:{app}}}:offline", self.prefix)
    }

    /// Cluster mode: base of one endpoint's keys in one slot, `P{<tag>}w:<app>:<endpoint>`
    /// (`:outbox`, `:dropped`), where the tag hashes to `slot` (`slots.rs`).
    pub fn webhook_shard_base(&self, app: &str, endpoint: &str, slot: u16) -> String {
        format!(
            "{}{{{}}}w:{app}:{endpoint}",
            self.prefix,
            super::slots::tag(slot)
        )
    }

    /// Cluster mode: an app's pending `peer.offline`s whose route keys are in `slot`.
    pub fn webhook_offline_shard(&self, app: &str, slot: u16) -> String {
        format!(
            "{}{{{}}}w:{app}:offline",
            self.prefix,
            super::slots::tag(slot)
        )
    }

    /// Cluster mode: base of an app's per-app webhook keys, `P{w:<app>}` (`:oslots`, the
    /// slots with a pending-offline zset; `:owner`, the node that sweeps them).
    pub fn webhook_app_base(&self, app: &str) -> String {
        format!("{}{{w:{app}}}", self.prefix)
    }

    /// The text of an app's route keys before and after the peer id (`PEER_SWEEP`).
    pub fn route_key_parts(&self, app: &str) -> (String, String) {
        (format!("{}{{p:{app}:", self.prefix), "}:route".to_string())
    }

    /// `(app, rest)` of a channel or route base key (`P{c:app:channel}`, `P{p:app:peer}`).
    pub fn parse_base<'b>(&self, base: &'b str) -> Option<(&'b str, &'b str)> {
        let rest = base.strip_prefix(self.prefix.as_str())?;
        rest.strip_prefix("{c:")
            .or_else(|| rest.strip_prefix("{p:"))?
            .strip_suffix('}')?
            .split_once(':')
    }

    /// `(app, channel)` of a channel topic.
    pub fn parse_channel<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        topic
            .strip_prefix(self.channel_topic_prefix.as_str())?
            .strip_suffix('}')?
            .split_once(':')
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_share_hash_tags_and_parse_back() {
        let keys = Keys::new("h:", "n1");
        let base = keys.channel_base("app", "room/{x}");
        assert_eq!(base, "h:{c:app:room/{x}}");
        let topic = keys.channel("app", "room/{x}");
        assert_eq!(topic, keys.topic_of_base(&base));
        assert_eq!(keys.parse_channel(&topic), Some(("app", "room/{x}")));
        assert!(keys.is_channel_base(&base));
        assert!(!keys.is_channel_base(&keys.route_base("app", "p")));
        assert_eq!(keys.node_topic_of_instance("n1#ab12"), keys.node());
        assert_eq!(format!("{}{{n:n1}}", keys.node_topic_prefix()), keys.node());
        assert_eq!(keys.app_of_topic(&keys.app_topic("app")), Some("app"));
        assert_eq!(keys.parse_base(&base), Some(("app", "room/{x}")));
        assert_eq!(
            keys.parse_base(&keys.route_base("app", "p:1")),
            Some(("app", "p:1"))
        );
        let (before, after) = keys.route_key_parts("app");
        assert_eq!(format!("{before}p{after}"), keys.route_key("app", "p"));
    }
}
