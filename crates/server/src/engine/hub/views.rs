//! What operators see of this node (admin API): its channels and its connections.

use std::collections::HashMap;
use std::sync::Arc;

use crate::conn::Conn;
use crate::engine::ChannelSummary;
use crate::ids::{AppId, ChannelName, ConnId, PeerId};

use super::{Channel, Hub};

impl<S: Default> Hub<S> {
    /// This node's channels of an app with subscribers (wildcard patterns included, with no
    /// members), sorted by name. `members` counts a channel's roster as the engine knows it.
    pub fn channel_summaries(
        &self,
        app: &AppId,
        members: impl Fn(&Channel<S>) -> usize,
    ) -> Vec<ChannelSummary> {
        let mut out = Vec::new();
        self.channels.for_each(Some(app), |(_, name), channel| {
            if channel.subscriber_count() > 0 {
                out.push(ChannelSummary {
                    channel: name.clone(),
                    members: members(channel),
                    subscribers: channel.subscriber_count(),
                });
            }
        });
        let mut pattern_counts: HashMap<ChannelName, usize> = HashMap::new();
        for (_, name) in self.patterns.subscriptions(app) {
            *pattern_counts.entry(name).or_default() += 1;
        }
        out.extend(
            pattern_counts
                .into_iter()
                .map(|(channel, subscribers)| ChannelSummary {
                    channel,
                    members: 0,
                    subscribers,
                }),
        );
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        out
    }

    /// This node's connections of an app (or of one peer), sorted by id, each with its sorted
    /// channel and pattern list.
    pub fn connection_summaries(
        &self,
        app: &AppId,
        peer: Option<&PeerId>,
    ) -> Vec<(Arc<Conn>, Vec<ChannelName>)> {
        let mut conns: Vec<Arc<Conn>> = Vec::new();
        self.peers.for_each(Some(app), |(_, p), list| {
            if peer.is_none_or(|want| want == p) {
                conns.extend(list.iter().cloned());
            }
        });
        let mut by_conn: HashMap<ConnId, Vec<ChannelName>> = HashMap::new();
        self.channels.for_each(Some(app), |(_, name), channel| {
            for sub in channel.subscribers() {
                by_conn.entry(sub.conn.id).or_default().push(name.clone());
            }
        });
        for (id, name) in self.patterns.subscriptions(app) {
            by_conn.entry(id).or_default().push(name);
        }
        conns.sort_by_key(|c| c.id);
        conns
            .into_iter()
            .map(|c| {
                let mut list = by_conn.remove(&c.id).unwrap_or_default();
                list.sort();
                (c, list)
            })
            .collect()
    }
}
