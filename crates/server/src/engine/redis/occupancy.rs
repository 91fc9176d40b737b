//! A channel's occupancy on the Redis engine: one read-only script on the channel's slot counts
//! the roster (`HLEN :members`) and sums every instance's subscribed connections (`:subs`), so
//! the answer costs one round trip and O(nodes), never O(members), whatever the room's size.

use std::sync::LazyLock;

use redis::Script;

use super::node::{unavailable, Node};
use crate::engine::{EngineError, Occupancy};
use crate::ids::{AppId, ChannelName};

/// KEYS: channel base (its keys derive from it with the suffixes `keys.rs` documents).
/// Returns {distinct peers, subscribed connections on every instance}.
static OCCUPANCY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local b = KEYS[1]
local connections = 0
for _, v in ipairs(redis.call('HVALS', b .. ':subs')) do connections = connections + tonumber(v) end
return {redis.call('HLEN', b .. ':members'), math.max(0, connections)}
"#,
    )
});

impl Node {
    pub(super) async fn occupancy(
        &self,
        app: &AppId,
        channel: &ChannelName,
    ) -> Result<Occupancy, EngineError> {
        let (peers, connections): (usize, usize) = OCCUPANCY
            .key(self.keys.channel_base(app.as_str(), channel.as_str()))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(Occupancy { peers, connections })
    }
}
