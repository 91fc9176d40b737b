//! Direct routing: each node counts, per peer, its connections in a route hash in Redis, and a
//! `send` (or a kick) is published to the node topic of every node that holds the peer.

use std::collections::HashMap;
use std::sync::Arc;

use super::node::{unavailable, Node};
use super::wire::{self, kind, Event};
use crate::close::CloseReason;
use crate::conn::Conn;
use crate::engine::{Direct, EngineError};
use crate::ids::{AppId, PeerId};

impl Node {
    /// Makes a connection reachable by `send` and kicks, here and from other nodes.
    pub(super) async fn register_connection(&self, conn: &Arc<Conn>) {
        let base = self
            .keys
            .route_base(conn.app.as_str(), conn.peer_id.as_str());
        let (_in_use, written) = self.index.use_entry(&base);
        self.local.hub.peers.register(conn);
        self.adjust_route(conn, 1, written).await;
    }

    pub(super) async fn unregister_connection(&self, conn: &Arc<Conn>) {
        let base = self
            .keys
            .route_base(conn.app.as_str(), conn.peer_id.as_str());
        let (_in_use, _) = self.index.use_entry(&base);
        self.local.hub.peers.unregister(conn);
        // Removing needs no index entry: the count only goes down.
        self.adjust_route(conn, -1, true).await;
    }

    /// Delivers `direct` to every connection of the target peer, on whichever nodes.
    pub(super) async fn send_direct(&self, d: Direct<'_>) -> Result<usize, EngineError> {
        let mut event = Event::new(kind::DIRECT);
        event.app = Some(d.app.as_str().into());
        event.to = Some(d.to.as_str().into());
        event.from = Some(d.from.as_str().into());
        event.meta = d.from_metadata;
        event.data = Some(d.data);
        let exclusion = wire::exclusion(&self.id, d.exclude);
        event.exclude = exclusion.as_deref().map(Into::into);
        let payload = event.to_json();
        let self_send = d.exclude.is_some() && d.from == d.to;
        match self
            .route(d.app.as_str(), d.to.as_str(), &payload, self_send)
            .await
        {
            Ok(n) => Ok(n),
            Err(err) => {
                self.mark_trouble();
                let local = self.local.deliver_direct(&event, d.exclude.map(|c| c.id));
                if local > 0 {
                    Ok(local)
                } else {
                    Err(unavailable(err))
                }
            }
        }
    }

    /// Closes every connection of a peer, on whichever nodes.
    pub(super) async fn close_peer(
        &self,
        app: &AppId,
        peer: &PeerId,
        reason: CloseReason,
    ) -> Result<usize, EngineError> {
        let mut event = Event::new(kind::KICK);
        event.app = Some(app.as_str().into());
        event.peer = Some(peer.as_str().into());
        event.code = Some(reason.code.as_u16());
        match self
            .route(app.as_str(), peer.as_str(), &event.to_json(), false)
            .await
        {
            Ok(n) => Ok(n),
            Err(err) => {
                self.local.hub.peers.close(app, peer, reason);
                self.mark_trouble();
                Err(unavailable(err))
            }
        }
    }

    /// Sends an event to every node holding the peer; returns the connections reached (the
    /// sender's own connection excluded when `self_send`).
    async fn route(
        &self,
        app: &str,
        peer: &str,
        payload: &str,
        self_send: bool,
    ) -> redis::RedisResult<usize> {
        let route_key = self.keys.route_key(app, peer);
        let instance = self.instance();
        if !self.store.is_cluster() {
            return self
                .scripts
                .route
                .key(route_key)
                .arg(self.keys.node_topic_prefix())
                .arg(payload)
                .arg(&instance)
                .arg(if self_send { "1" } else { "0" })
                .invoke_async(&mut self.conn())
                .await;
        }
        // Node topics live in other slots than the route: read it, then publish per node.
        let routes: HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(route_key)
            .query_async(&mut self.conn())
            .await?;
        let mut total = 0;
        for (target, mut n) in routes {
            if self_send && target == instance {
                n -= 1;
            }
            if n > 0 {
                let _: i64 = redis::cmd("SPUBLISH")
                    .arg(self.keys.node_topic_of_instance(&target))
                    .arg(payload)
                    .query_async(&mut self.conn())
                    .await?;
                total += usize::try_from(n).unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Counts a connection of its peer on this node in the direct-routing table (`delta` is +1
    /// or -1). Local traffic keeps working without Redis; a failed update is repaired by the
    /// next re-assert.
    async fn adjust_route(&self, conn: &Conn, delta: i64, written: bool) {
        let base = self
            .keys
            .route_base(conn.app.as_str(), conn.peer_id.as_str());
        let result = match self.ensure_indexed(&base, written).await {
            Ok(()) => {
                let spec = self
                    .route_webhook_spec(
                        conn.app.as_str(),
                        &base,
                        super::webhook_spec::ONLINE | super::webhook_spec::OFFLINE,
                    )
                    .await;
                let mut invocation = self
                    .scripts
                    .route_adjust
                    .key(self.keys.route_key_of_base(&base));
                invocation
                    .arg(self.instance())
                    .arg(delta)
                    .arg(conn.peer_id.as_str())
                    .arg(self.grace.as_millis() as u64);
                spec.apply(&mut invocation);
                invocation
                    .invoke_async::<i64>(&mut self.conn())
                    .await
                    .map(|_| ())
            }
            Err(err) => Err(err),
        };
        if result.is_err() {
            self.mark_trouble();
        }
    }
}
