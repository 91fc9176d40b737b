//! The instance index: before a node holds anything in Redis (a presence hold on a channel,
//! a route for a peer), it records the base key in its instance's index, so a node that reaps
//! this instance after a crash finds everything to clean. Entries are pruned once they back
//! nothing, and never while an operation is using them.

use std::collections::HashMap;

use super::node::Node;
use crate::sync::lock;

impl Node {
    /// Writes the index entry that lets a reaper find `base`, before anything is held there.
    pub(super) async fn ensure_indexed(&self, base: &str, written: bool) -> redis::RedisResult<()> {
        if written {
            return Ok(());
        }
        let instance = self.instance();
        let _: i64 = redis::cmd("HINCRBY")
            .arg(self.keys.index_key(&instance))
            .arg(base)
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        if *lock(&self.instance) == instance {
            self.index.mark_written([base]);
        }
        Ok(())
    }

    /// Forgets index entries that back nothing any more: no local state, no operation in
    /// flight, and unchanged since they were read.
    pub(super) async fn prune_index(&self) -> redis::RedisResult<()> {
        let instance = self.instance();
        let index_key = self.keys.index_key(&instance);
        let entries: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&index_key)
            .query_async(&mut self.conn())
            .await?;
        let stale = self.index.take_stale(entries, || {
            let mut live = self.local.live_bases();
            live.extend(lock(&self.departed).iter().map(|(base, _)| base.clone()));
            live
        });
        for (base, generation) in stale {
            let _: i64 = self
                .scripts
                .index_prune
                .key(&index_key)
                .arg(&base)
                .arg(&generation)
                .invoke_async(&mut self.conn())
                .await?;
        }
        Ok(())
    }
}
