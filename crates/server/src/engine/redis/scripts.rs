//! The Redis key layout and the Lua scripts that change it.
//!
//! Every presence change runs as one script, so reference counts, the roster, the per-channel
//! sequence number and the published delta move together, and deltas reach every node in the
//! order the changes happened. Keys are built inside the scripts from `prefix` and the channel
//! key, which suits a single Redis (or Valkey) server; Redis Cluster would need hash-tagged keys.
//!
//! Layout (`P` = key prefix, `ck` = `<app>:<channel>`, `pk` = `<app>:<peer>`):
//!
//! | Key | Type | Holds |
//! |---|---|---|
//! | `P members:<ck>` | hash | peer → number of nodes holding the peer on the channel |
//! | `P meta:<ck>` | hash | peer → peerMetadata JSON (`""` for none), latest subscriber wins |
//! | `P seq:<ck>` | string | presence sequence number, bumped on every change |
//! | `P subs:<ck>` | hash | node → local subscribed connections (REST `delivered`) |
//! | `P holds:<node>` | set | `<ck>\n<peer>`: what a node holds, for crash cleanup |
//! | `P peer:<pk>` | hash | node → connections of the peer on that node (direct routing) |
//! | `P nodepeers:<node>` | set | `pk` entries the node registered |
//! | `P lease:<node>` | string | the node's lease; it expires when the node stops renewing |
//! | `P nodes` | set | every node id that may hold state |
//! | `P reaped:<node>` | string | marks a reaped node, so its re-assert announces its peers |
//!
//! Pub/sub topics: `P ch:<ck>` carries a channel's messages and presence deltas; `P node:<id>`
//! carries directs and kicks for one node.

use redis::Script;

/// Shared Lua helpers, prepended to the scripts that need them.
const HELPERS: &str = r#"
local function publish_presence(p, ck, kind, seq, peer, meta)
  if meta == nil or meta == false or meta == '' then meta = 'null' end
  redis.call('PUBLISH', p .. 'ch:' .. ck,
    '{"k":"' .. kind .. '","s":' .. seq .. ',"p":' .. cjson.encode(peer) .. ',"m":' .. meta .. '}')
end

-- Drops one node's hold of (ck, peer) already removed from its holds set. Publishes `left` when
-- it was the last hold anywhere. Returns 1 when it published.
local function release(p, ck, peer)
  local n = redis.call('HINCRBY', p .. 'members:' .. ck, peer, -1)
  if n > 0 then return 0 end
  redis.call('HDEL', p .. 'members:' .. ck, peer)
  local meta = redis.call('HGET', p .. 'meta:' .. ck, peer)
  redis.call('HDEL', p .. 'meta:' .. ck, peer)
  local seq = redis.call('INCR', p .. 'seq:' .. ck)
  publish_presence(p, ck, 'l', seq, peer, meta)
  if redis.call('EXISTS', p .. 'members:' .. ck) == 0 then redis.call('DEL', p .. 'seq:' .. ck) end
  return 1
end

-- Records a node's hold of (ck, peer); publishes `joined` when it is the first anywhere
-- (unless `quiet`: re-asserting holds everyone already knows about).
local function hold(p, node, ck, peer, meta, quiet)
  local first = 0
  if redis.call('SADD', p .. 'holds:' .. node, ck .. '\n' .. peer) == 1 then
    if redis.call('HINCRBY', p .. 'members:' .. ck, peer, 1) == 1 then first = 1 end
  end
  redis.call('HSET', p .. 'meta:' .. ck, peer, meta)
  local seq = redis.call('INCR', p .. 'seq:' .. ck)
  if first == 1 and not quiet then publish_presence(p, ck, 'j', seq, peer, meta) end
  return {first, seq}
end

local function split_entry(entry)
  local nl = string.find(entry, '\n', 1, true)
  return string.sub(entry, 1, nl - 1), string.sub(entry, nl + 1)
end
"#;

/// ARGV: prefix, ck, peer, meta, node, subscriber delta.
/// Returns {first, seq, meta hash as a flat list}: the snapshot at `seq`.
const JOIN: &str = r#"
local p, ck, peer, meta, node, sd = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
if sd ~= 0 then redis.call('HINCRBY', p .. 'subs:' .. ck, node, sd) end
local r = hold(p, node, ck, peer, meta, false)
return {r[1], r[2], redis.call('HGETALL', p .. 'meta:' .. ck)}
"#;

/// ARGV: prefix, ck, peer, node. Returns 1 when `left` was published.
const LEAVE: &str = r#"
local p, ck, peer, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('SREM', p .. 'holds:' .. node, ck .. '\n' .. peer) == 0 then return 0 end
return release(p, ck, peer)
"#;

/// ARGV: prefix, ck, payload, 1 when the publisher is itself a local subscriber.
/// Returns the number of subscribed connections cluster-wide, publisher excluded.
const PUBLISH: &str = r#"
local p, ck = ARGV[1], ARGV[2]
redis.call('PUBLISH', p .. 'ch:' .. ck, ARGV[3])
local total = 0
for _, v in ipairs(redis.call('HVALS', p .. 'subs:' .. ck)) do total = total + tonumber(v) end
return math.max(0, total - tonumber(ARGV[4]))
"#;

/// ARGV: prefix, pk, payload, sender node, 1 when the sender is the target peer itself.
/// Publishes to every node holding the peer; returns the connections reached (the sender's own
/// connection excluded).
const ROUTE: &str = r#"
local p, pk, payload, sender, self_send = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local h = redis.call('HGETALL', p .. 'peer:' .. pk)
local total = 0
for i = 1, #h, 2 do
  local node, n = h[i], tonumber(h[i + 1])
  if self_send == '1' and node == sender then n = n - 1 end
  if n > 0 then
    redis.call('PUBLISH', p .. 'node:' .. node, payload)
    total = total + n
  end
end
return total
"#;

/// ARGV: prefix, pk, node, delta. Keeps the direct-routing table.
const PEER_ADD: &str = r#"
local p, pk, node = ARGV[1], ARGV[2], ARGV[3]
local n = redis.call('HINCRBY', p .. 'peer:' .. pk, node, tonumber(ARGV[4]))
if n <= 0 then
  redis.call('HDEL', p .. 'peer:' .. pk, node)
  redis.call('SREM', p .. 'nodepeers:' .. node, pk)
else
  redis.call('SADD', p .. 'nodepeers:' .. node, pk)
end
return n
"#;

/// ARGV: prefix, node, lease ms. Returns 0 when the lease had lapsed (the node may have been
/// reaped and must re-assert its state).
const RENEW: &str = r#"
local p, node, ttl = ARGV[1], ARGV[2], ARGV[3]
local alive = redis.call('PEXPIRE', p .. 'lease:' .. node, ttl)
if alive == 0 then redis.call('SET', p .. 'lease:' .. node, '1', 'PX', ttl) end
redis.call('SADD', p .. 'nodes', node)
return alive
"#;

/// ARGV: prefix, own node. Removes every node whose lease expired: its peers leave their
/// channels (each `left` published exactly once, here), its routes disappear.
const REAP: &str = r#"
local p, me = ARGV[1], ARGV[2]
local reaped = {}
for _, node in ipairs(redis.call('SMEMBERS', p .. 'nodes')) do
  if node ~= me and redis.call('EXISTS', p .. 'lease:' .. node) == 0 then
    for _, entry in ipairs(redis.call('SMEMBERS', p .. 'holds:' .. node)) do
      local ck, peer = split_entry(entry)
      release(p, ck, peer)
      redis.call('HDEL', p .. 'subs:' .. ck, node)
    end
    redis.call('DEL', p .. 'holds:' .. node)
    for _, pk in ipairs(redis.call('SMEMBERS', p .. 'nodepeers:' .. node)) do
      redis.call('HDEL', p .. 'peer:' .. pk, node)
    end
    redis.call('DEL', p .. 'nodepeers:' .. node)
    redis.call('SREM', p .. 'nodes', node)
    -- If the node was only cut off, its re-assert must announce its peers again.
    redis.call('SET', p .. 'reaped:' .. node, '1', 'PX', 600000)
    table.insert(reaped, node)
  end
end
return reaped
"#;

/// ARGV: prefix, node, lease ms, then four length-prefixed lists:
/// holds (ck, peer, meta)…, subscriber counts (ck, n)…, routes (pk, n)…, departed (ck, peer)….
/// Makes Redis agree with the node's local state after an outage or a lost lease: stale holds
/// leave (publishing `left`), missing ones join (publishing `joined` when first, if the node had
/// been reaped), and peers that left during the outage get their `left` if nobody else holds
/// them.
const REASSERT: &str = r#"
local p, node, ttl = ARGV[1], ARGV[2], ARGV[3]
redis.call('SET', p .. 'lease:' .. node, '1', 'PX', ttl)
redis.call('SADD', p .. 'nodes', node)
-- Re-added holds are news only if this node was reaped (others saw its peers leave). After
-- Redis lost its data nobody saw them leave, and a second `joined` would be noise.
local announce = redis.call('DEL', p .. 'reaped:' .. node) == 1
local i = 4
local desired, order = {}, {}
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local e = ARGV[i] .. '\n' .. ARGV[i + 1]
  desired[e] = {ARGV[i], ARGV[i + 1], ARGV[i + 2]}
  table.insert(order, e)
  i = i + 3
end
local announced = {}
local holds = p .. 'holds:' .. node
for _, e in ipairs(redis.call('SMEMBERS', holds)) do
  if desired[e] == nil then
    redis.call('SREM', holds, e)
    local ck, peer = split_entry(e)
    redis.call('HDEL', p .. 'subs:' .. ck, node)
    if release(p, ck, peer) == 1 then announced[e] = true end
  end
end
for _, e in ipairs(order) do
  local d = desired[e]
  hold(p, node, d[1], d[2], d[3], not announce)
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', p .. 'subs:' .. ARGV[i], node, ARGV[i + 1])
  i = i + 2
end
local routes = {}
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do routes[ARGV[i]] = ARGV[i + 1]; i = i + 2 end
for _, pk in ipairs(redis.call('SMEMBERS', p .. 'nodepeers:' .. node)) do
  if routes[pk] == nil then
    redis.call('HDEL', p .. 'peer:' .. pk, node)
    redis.call('SREM', p .. 'nodepeers:' .. node, pk)
  end
end
for pk, count in pairs(routes) do
  redis.call('HSET', p .. 'peer:' .. pk, node, count)
  redis.call('SADD', p .. 'nodepeers:' .. node, pk)
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local ck, peer = ARGV[i], ARGV[i + 1]
  local e = ck .. '\n' .. peer
  i = i + 2
  if not announced[e] and desired[e] == nil and redis.call('HEXISTS', p .. 'members:' .. ck, peer) == 0 then
    announced[e] = true
    publish_presence(p, ck, 'l', redis.call('INCR', p .. 'seq:' .. ck), peer, nil)
  end
end
return 1
"#;

/// The compiled scripts (each is sent once, then run by its SHA).
pub struct Scripts {
    pub join: Script,
    pub leave: Script,
    pub publish: Script,
    pub route: Script,
    pub peer_add: Script,
    pub renew: Script,
    pub reap: Script,
    pub reassert: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let with_helpers = |body: &str| Script::new(&format!("{HELPERS}\n{body}"));
        Scripts {
            join: with_helpers(JOIN),
            leave: with_helpers(LEAVE),
            publish: Script::new(PUBLISH),
            route: Script::new(ROUTE),
            peer_add: Script::new(PEER_ADD),
            renew: Script::new(RENEW),
            reap: with_helpers(REAP),
            reassert: with_helpers(REASSERT),
        }
    }
}
