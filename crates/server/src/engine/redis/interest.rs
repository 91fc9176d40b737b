//! Wildcard subscriptions on the Redis engine. On a single Redis the node listens to an app's
//! channel topics with one `PSUBSCRIBE` while it has wildcard subscribers there. Sharded
//! pub/sub has no patterns, so in cluster mode nodes record which apps have wildcard
//! subscribers ("interest"), and publishers of those apps also publish to the app's classic
//! topic.

use std::sync::Arc;

use herald_protocol::glob::Pattern;

use super::await_confirm;
use super::keys::Keys;
use super::node::{unavailable, Node};
use crate::conn::Conn;
use crate::engine::hub::presence;
use crate::engine::{EngineError, SubscribeRequest};
use crate::ids::{AppId, ChannelName};
use crate::sync::lock;

impl Node {
    /// Subscribes a connection to a wildcard pattern. Returns true when the subscription is new.
    pub(super) async fn subscribe_pattern(
        &self,
        req: SubscribeRequest<'_>,
        pattern: Pattern,
    ) -> Result<bool, EngineError> {
        let conn = req.conn;
        let (is_new, confirm) = self.local.add_pattern(
            conn,
            req.channel,
            pattern,
            req.include_sender_metadata,
            req.max_app_patterns,
        )?;
        if let Some(confirm) = confirm {
            await_confirm(confirm).await?;
        }
        if self.store.is_cluster() {
            if let Err(err) = self.set_pattern_interest(&conn.app, true).await {
                self.mark_trouble();
                return Err(unavailable(err));
            }
        }
        if let Some(ack) = req.ack {
            conn.deliver(ack);
        }
        // The mandatory snapshot of a pattern subscription is empty (spec §9.4).
        if conn.receives_presence {
            conn.deliver(presence(req.channel.as_str(), &[], &[]));
        }
        if is_new {
            self.local.hub.count_subscribed();
        }
        Ok(is_new)
    }

    pub(super) async fn unsubscribe_pattern(&self, conn: &Arc<Conn>, name: &ChannelName) -> bool {
        let (removed, app_done) = self.local.remove_pattern(conn, name);
        if removed {
            self.local.hub.count_unsubscribed();
        }
        if app_done
            && self.store.is_cluster()
            && self.set_pattern_interest(&conn.app, false).await.is_err()
        {
            self.mark_trouble();
        }
        removed
    }

    /// Cluster mode: whether a publish to this app must also go to the app's classic topic.
    pub(super) fn app_has_pattern_interest(&self, app: &AppId) -> bool {
        self.store.is_cluster() && lock(&self.pattern_apps).contains(app.as_str())
    }

    /// Cluster mode: re-records this node's own wildcard interest (an add and a remove for
    /// the same app can race; this settles it within a round), then reloads which apps have
    /// wildcard subscribers anywhere.
    pub(super) async fn refresh_pattern_apps(&self) -> redis::RedisResult<()> {
        let key = self.keys.patterns_key();
        let own = self.local.pattern_apps();
        if !own.is_empty() {
            let instance = self.instance();
            let mut add = redis::cmd("SADD");
            add.arg(&key);
            for app in &own {
                add.arg(self.keys.pattern_interest_entry(app, &instance));
            }
            add.query_async::<()>(&mut self.conn()).await?;
        }
        let entries: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut self.conn())
            .await?;
        let apps = entries
            .iter()
            .filter_map(|e| Keys::app_of_pattern_interest_entry(e).map(str::to_string))
            .collect();
        *lock(&self.pattern_apps) = apps;
        Ok(())
    }

    /// Cluster mode: another node announced an app with wildcard subscribers.
    pub(crate) fn pattern_interest(&self, app: String) {
        lock(&self.pattern_apps).insert(app);
    }

    /// Cluster mode: records (or drops) this node's wildcard interest in an app and tells
    /// the other nodes at once, so their publishes reach it without waiting for a refresh.
    async fn set_pattern_interest(&self, app: &AppId, on: bool) -> redis::RedisResult<()> {
        let entry = self
            .keys
            .pattern_interest_entry(app.as_str(), &self.instance());
        let key = self.keys.patterns_key();
        let _: i64 = redis::cmd(if on { "SADD" } else { "SREM" })
            .arg(key)
            .arg(entry)
            .query_async(&mut self.conn())
            .await?;
        if on {
            self.pattern_interest(app.as_str().to_string());
            let _: i64 = redis::cmd("PUBLISH")
                .arg(self.keys.patterns_topic())
                .arg(app.as_str())
                .query_async(&mut self.conn())
                .await?;
        }
        Ok(())
    }
}
