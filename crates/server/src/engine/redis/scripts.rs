//! The Lua scripts that change presence and routing state in Redis (key layout: `keys.rs`).
//!
//! Every presence change runs as one script on one channel's keys, so reference counts, the
//! roster, the sequence number and the published delta move together, and deltas reach every
//! node in the order the changes happened. Each script names one key in `KEYS[1]` (a base key;
//! the others are built from it and share its hash tag), which is how Redis Cluster routes it,
//! and touches only that slot. Channel scripts publish with `ARGV[1]` (`PUBLISH`, or `SPUBLISH`
//! in cluster mode) to the channel topic in `ARGV[2]`.

use redis::Script;

/// Webhook events, appended to endpoint outbox streams in the same atomic step as the
/// transition they announce (so each is produced once cluster-wide). Every script that may
/// produce one takes, as its LAST argument, a spec: `app JSON\nchannel JSON or ""\ncap\nextra
/// fields\nmask…`, one mask per endpoint base key in `KEYS[WH_KEY0…]` (bits: 1 joined, 2 left,
/// 4 occupied, 8 vacated, 16 online, 32 offline, 64 message). An empty spec (no endpoint wants
/// any event this call may produce) costs nothing. Entries go to `<endpoint base>:outbox`
/// (fields `k` = type, `e` = the event JSON after its id, which the reader adds from the entry
/// id); a stream already holding `cap` undelivered entries refuses the event and counts it in
/// `<endpoint base>:dropped`. On a Redis Cluster the bases are the endpoints' shards in the
/// script's own slot (`webhook_shards.rs`), and a negative mask says the endpoint's outbox is
/// full over all slots: the event is counted as dropped.
pub(super) const WH_HELPERS: &str = r#"
local WH_KEY0 = 2
local WH = false
local function wh()
  if WH then return WH end
  WH = {streams = {}}
  local spec = ARGV[#ARGV]
  if spec == nil or spec == '' then return WH end
  local parts, s = {}, 1
  while true do
    local e = string.find(spec, '\n', s, true)
    if not e then table.insert(parts, string.sub(spec, s)) break end
    table.insert(parts, string.sub(spec, s, e - 1))
    s = e + 1
  end
  if #parts < 5 then return WH end
  WH.app, WH.channel, WH.cap, WH.extra = parts[1], parts[2], tonumber(parts[3]), parts[4]
  for j = 5, #parts do
    local m = tonumber(parts[j])
    table.insert(WH.streams, {KEYS[WH_KEY0 + j - 5], math.abs(m), m < 0})
  end
  return WH
end

local function wh_emit(mask, kind, peer, meta, extra)
  local w = wh()
  local body = nil
  for _, st in ipairs(w.streams) do
    if bit.band(st[2], mask) ~= 0 then
      local out = st[1] .. ':outbox'
      if st[3] or redis.call('XLEN', out) >= w.cap then
        redis.call('INCR', st[1] .. ':dropped')
      else
        if body == nil then
          local t = redis.call('TIME')
          body = '"type":"' .. kind .. '","app":' .. w.app
          if w.channel ~= '' then body = body .. ',"channel":' .. w.channel end
          if peer then body = body .. ',"peerId":' .. cjson.encode(peer) end
          body = body .. ',"ts":' .. string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
          if meta and meta ~= '' then body = body .. ',"metadata":' .. meta end
          if extra and extra ~= '' then body = body .. ',' .. extra end
          body = body .. '}'
        end
        redis.call('XADD', out, '*', 'k', kind, 'e', body)
      end
    end
  end
end

-- After a peer's connection count in its route hash moved by `delta` (route calls: the app's
-- pending-offline zset is KEYS[2]): `peer.online` when it went from none to some, unless the
-- peer left within the grace (then it never was offline), and `peer.offline` scheduled a
-- grace after the last connection went (`PEER_SWEEP` sends it if nothing came back).
local function wh_route_moved(route, delta, peer, grace)
  if #KEYS < 3 then return end
  local total = 0
  for _, v in ipairs(redis.call('HVALS', route)) do total = total + tonumber(v) end
  if delta > 0 and total == delta then
    if redis.call('ZREM', KEYS[2], peer) == 0 then wh_emit(16, 'peer.online', peer) end
  elseif delta < 0 and total <= 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    redis.call('ZADD', KEYS[2], now + tonumber(grace), peer)
  end
end
"#;

/// Shared Lua helpers, prepended to the channel scripts that need them.
const HELPERS: &str = r#"
local function publish_presence(pub, topic, kind, seq, peer, meta)
  if meta == nil or meta == false or meta == '' then meta = 'null' end
  redis.call(pub, topic,
    '{"kind":"' .. kind .. '","seq":' .. seq .. ',"peer":' .. cjson.encode(peer) .. ',"meta":' .. meta .. '}')
end

-- Bumps the channel's sequence number. A sequence that starts anew (the channel was empty, or
-- Redis lost it) starts a new epoch, so that a node's mirror of an earlier life of the channel
-- is never taken for current (`JOIN`).
local function next_seq(b)
  local seq = redis.call('INCR', b .. ':seq')
  if seq == 1 then
    local t = redis.call('TIME')
    redis.call('SET', b .. ':epoch', t[1] .. '.' .. t[2])
  elseif redis.call('PERSIST', b .. ':seq') == 1 then
    -- The channel is in use again before its numbering expired: it goes on.
    redis.call('PERSIST', b .. ':epoch')
    redis.call('PERSIST', b .. ':vseq')
  end
  return seq
end

-- Publishes a change that a node's mirror of the roster must see, and records it as the
-- channel's latest visible change.
local function announce(b, pub, topic, kind, seq, peer, meta)
  redis.call('SET', b .. ':vseq', seq)
  publish_presence(pub, topic, kind, seq, peer, meta)
end

-- Forgets the numbering of a channel with no member left, an hour later: deltas of its last
-- members may still be on their way to nodes, and a numbering that restarted under them would
-- make a late `left` look newer than a new subscriber's snapshot.
local function forget_if_empty(b)
  if redis.call('EXISTS', b .. ':members') == 0 then
    for _, k in ipairs({':seq', ':epoch', ':vseq'}) do redis.call('EXPIRE', b .. k, 3600) end
  end
end

-- Removes a hold entry (`inst\npeer`) and its generation. Returns 1 when it was there.
local function drop_hold(b, e)
  redis.call('HDEL', b .. ':holdgen', e)
  return redis.call('SREM', b .. ':holds', e)
end

-- Drops one instance's hold of a peer, already removed with `drop_hold`. Publishes `left`
-- when it was the last hold anywhere. Returns 1 when it published.
local function release(b, pub, topic, peer)
  local n = redis.call('HINCRBY', b .. ':members', peer, -1)
  if n > 0 then return 0 end
  redis.call('HDEL', b .. ':members', peer)
  local meta = redis.call('HGET', b .. ':meta', peer)
  redis.call('HDEL', b .. ':meta', peer)
  announce(b, pub, topic, 'left', next_seq(b), peer, meta)
  wh_emit(2, 'presence.left', peer, meta)
  if redis.call('EXISTS', b .. ':members') == 0 then wh_emit(8, 'channel.vacated') end
  forget_if_empty(b)
  return 1
end

-- Records an instance's hold of a peer; publishes `joined` when it is the first anywhere.
-- Re-assertion goes through here too: a peer Redis did not have (its data was lost, a join
-- failed, the holder was reaped) is missing from every snapshot read since, so it is always
-- announced, with its sequence number. Nodes keep subscribers who already know the peer from
-- seeing it twice (their snapshot's number, or their pre-reset roster: `local/events.rs`).
--
-- `gen` is the instance's re-assertion generation when it wrote the hold: a re-assertion
-- started later (a higher generation) may drop the hold as stale, an earlier one may not (it
-- read the node's local state before this subscribe began).
local function hold(b, pub, topic, inst, peer, meta, gen)
  local first = 0
  local e = inst .. '\n' .. peer
  if redis.call('SADD', b .. ':holds', e) == 1 then
    if redis.call('HINCRBY', b .. ':members', peer, 1) == 1 then first = 1 end
  end
  redis.call('HSET', b .. ':holdgen', e, gen)
  local old = redis.call('HGET', b .. ':meta', peer)
  redis.call('HSET', b .. ':meta', peer, meta)
  local seq = next_seq(b)
  if first == 1 then
    announce(b, pub, topic, 'joined', seq, peer, meta)
    if redis.call('HLEN', b .. ':members') == 1 then wh_emit(4, 'channel.occupied') end
    wh_emit(1, 'presence.joined', peer, meta)
  elseif old ~= meta then
    -- Subscribers are not told (a reconnect within the grace is silent), but nodes' mirrors
    -- of the roster must follow.
    announce(b, pub, topic, 'meta', seq, peer, meta)
  end
  return {first, seq}
end

-- The peers an instance holds on this channel, as a set.
local function held_by(b, inst)
  local prefix, peers = inst .. '\n', {}
  for _, e in ipairs(redis.call('SMEMBERS', b .. ':holds')) do
    if string.sub(e, 1, #prefix) == prefix then peers[string.sub(e, #prefix + 1)] = e end
  end
  return peers
end
"#;

/// KEYS: channel base. ARGV: pub, topic, instance, peer, meta, subscriber delta, the
/// instance's re-assertion generation, and the node's mirror of the roster as (epoch, seq), or
/// ("", 0) for none. Returns {first, seq, meta hash as a flat list: the snapshot at `seq`, or
/// nil when the mirror is current, epoch}. The mirror is current when the channel is in the
/// same life and no change a mirror follows happened after the one it saw last: then the
/// roster at `seq` is the mirror plus this join, and need not travel.
const JOIN: &str = r#"
local b = KEYS[1]
local pub, topic, inst, peer, meta, sd = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local have_epoch, have_seq = ARGV[8], tonumber(ARGV[9])
local current = have_epoch ~= '' and redis.call('GET', b .. ':epoch') == have_epoch
  and tonumber(redis.call('GET', b .. ':vseq') or '0') <= have_seq
if sd ~= 0 then redis.call('HINCRBY', b .. ':subs', inst, sd) end
local r = hold(b, pub, topic, inst, peer, meta, ARGV[7])
local roster = false
if not current then roster = redis.call('HGETALL', b .. ':meta') end
return {r[1], r[2], roster, redis.call('GET', b .. ':epoch') or ''}
"#;

/// KEYS: channel base. ARGV: pub, topic, instance, peer. Returns 1 when `left` was published.
const LEAVE: &str = r#"
local b = KEYS[1]
if drop_hold(b, ARGV[3] .. '\n' .. ARGV[4]) == 0 then return 0 end
return release(b, ARGV[1], ARGV[2], ARGV[4])
"#;

/// KEYS: channel base. ARGV: pub, topic, payload, 1 when the publisher is itself a local
/// subscriber, the app's wildcard topic (or ""). Returns the number of subscribed connections
/// cluster-wide, publisher excluded.
const PUBLISH: &str = r#"
local b = KEYS[1]
redis.call(ARGV[1], ARGV[2], ARGV[3])
wh_emit(64, 'message.published', nil, nil, wh().extra)
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[3]) end
local total = 0
for _, v in ipairs(redis.call('HVALS', b .. ':subs')) do total = total + tonumber(v) end
return math.max(0, total - tonumber(ARGV[4]))
"#;

/// KEYS: channel base. ARGV: pub, topic, payload (the `message` event, a JSON object),
/// 1 when the publisher is itself a local subscriber, the app's wildcard topic (or ""),
/// max_messages, max_age in ms, an epoch to use if the channel's history starts here. The
/// publish of a channel that keeps history (`history.rs`): it takes the next offset, stamps
/// the event with its position (`offset`, `epoch`, `ts` from Redis's clock), appends it to the
/// channel's stream (entry id `<offset>-0`), trims the stream by count and age, and publishes
/// the stamped event, all in one step: offsets follow the order in which every node receives
/// the channel's messages. A missing position hash (a new history, or Redis lost it) starts a
/// new epoch at offset 1. Returns {receivers as `PUBLISH` counts them, offset, epoch, ts}.
const PUBLISH_KEPT: &str = r#"
local b = KEYS[1]
local s, p = b .. ':hist', b .. ':hpos'
local max, age = tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ts = string.format('%d', now)
local epoch = redis.call('HGET', p, 'epoch')
if not epoch then
  epoch = ARGV[8]
  redis.call('DEL', s)
  redis.call('HSET', p, 'epoch', epoch)
end
local offset = redis.call('HINCRBY', p, 'offset', 1)
local event = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '","ts":' .. ts .. ',' .. string.sub(ARGV[3], 2)
redis.call('XADD', s, 'MAXLEN', max, offset .. '-0', 't', ts, 'e', event)
-- Age: entries are in offset order, which is time order, so the expired ones are the oldest.
-- The oldest is looked at on every publish; when it expired, up to 64 go at once (reads skip
-- expired entries anyway: this frees memory).
local cutoff = now - age
local head = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)[1]
if tonumber(head[2][2]) < cutoff then
  local oldest = redis.call('XRANGE', s, '-', '+', 'COUNT', 64)
  local minid = nil
  for i, e in ipairs(oldest) do
    if tonumber(e[2][2]) >= cutoff then
      minid = e[1]
      break
    end
    if i == #oldest then minid = (tonumber(string.match(e[1], '^(%d+)')) + 1) .. '-0' end
  end
  redis.call('XTRIM', s, 'MINID', minid)
end
-- The whole history goes when its newest entry expires; the next message starts a new epoch.
redis.call('PEXPIRE', s, age)
redis.call('PEXPIRE', p, age)
redis.call(ARGV[1], ARGV[2], event)
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], event) end
if #wh().streams > 0 then
  wh_emit(64, 'message.published', nil, nil, wh().extra .. ',"offset":' .. offset)
end
local total = 0
for _, v in ipairs(redis.call('HVALS', b .. ':subs')) do total = total + tonumber(v) end
return {math.max(0, total - tonumber(ARGV[4])), offset, epoch, ts}
"#;

/// KEYS: channel base. ARGV: limit, before, after (exclusive offsets, "" for none), max_age in
/// ms. Reads a channel's history: {epoch ("" when none), "1" when older entries within the bounds
/// remain, then up to `limit` stored events, newest first}. Entries past `max_age` are not
/// returned (trimming is lazy).
const HISTORY_READ: &str = r#"
local b = KEYS[1]
local s, p = b .. ':hist', b .. ':hpos'
local epoch = redis.call('HGET', p, 'epoch')
if not epoch then return {'', '0'} end
local limit, age = tonumber(ARGV[1]), tonumber(ARGV[4])
local hi, lo = '+', '-'
if ARGV[2] ~= '' then hi = '(' .. ARGV[2] .. '-0' end
if ARGV[3] ~= '' then lo = '(' .. ARGV[3] .. '-0' end
local t = redis.call('TIME')
local cutoff = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - age
local out = {epoch, '0'}
for _, e in ipairs(redis.call('XREVRANGE', s, hi, lo, 'COUNT', limit + 1)) do
  if tonumber(e[2][2]) < cutoff then break end
  if #out - 2 == limit then
    out[2] = '1'
    break
  end
  table.insert(out, e[2][4])
end
return out
"#;

/// KEYS: channel base. Returns {seq, meta hash as a flat list}, read together.
const ROSTER: &str = r#"
local b = KEYS[1]
return {tonumber(redis.call('GET', b .. ':seq') or '0'), redis.call('HGETALL', b .. ':meta')}
"#;

/// KEYS: route key. ARGV: node topic prefix, payload, sender instance, 1 when the sender is
/// the target peer itself. Single Redis only: publishes to every node holding the peer (on a
/// cluster, node topics live in other slots and the engine publishes them one by one).
/// Returns the connections reached, the sender's own connection excluded.
const ROUTE: &str = r#"
local h = redis.call('HGETALL', KEYS[1])
local topic_prefix, payload, sender, self_send = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local total = 0
for i = 1, #h, 2 do
  local inst, n = h[i], tonumber(h[i + 1])
  if self_send == '1' and inst == sender then n = n - 1 end
  if n > 0 then
    local node = string.match(inst, '^(.*)#[^#]*$') or inst
    redis.call('PUBLISH', topic_prefix .. '{n:' .. node .. '}', payload)
    total = total + n
  end
end
return total
"#;

/// KEYS: route key, then with webhooks the app's pending-offline zset and endpoint bases.
/// ARGV: instance, delta, peer, grace ms, webhook spec. Keeps the direct-routing table. With
/// webhooks, the peer's connections across nodes decide `peer.online` (0 → some, unless the
/// peer went within the grace: then it never was offline) and schedule `peer.offline` a grace
/// after the last one goes (`PEER_SWEEP` sends it if nothing came back).
const ROUTE_ADJUST: &str = r#"
WH_KEY0 = 3
local delta = tonumber(ARGV[2])
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], delta)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
wh_route_moved(KEYS[1], delta, ARGV[3], ARGV[4])
return n
"#;

/// KEYS: route key, then with webhooks the app's pending-offline zset and endpoint bases.
/// ARGV: dead instance, peer, webhook spec. Drops a reaped instance's connections of a peer;
/// when they were the peer's last anywhere, `peer.offline` is sent at once (the lease that
/// lapsed was longer than a grace).
const ROUTE_REAP: &str = r#"
WH_KEY0 = 3
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
redis.call('HDEL', KEYS[1], ARGV[1])
if #KEYS >= 3 and n > 0 then
  local total = 0
  for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
  if total <= 0 then
    redis.call('ZREM', KEYS[2], ARGV[2])
    wh_emit(32, 'peer.offline', ARGV[2])
  end
end
return n
"#;

/// KEYS: the app's pending-offline zset (on a cluster, one slot's: the route keys it reads are
/// in that slot), then endpoint bases. ARGV: the route key's text before and after the peer
/// id, webhook spec. Sends `peer.offline` for every peer whose grace
/// is over and who has no connection anywhere. Any node may run it: each due peer is taken
/// out of the zset in the same step, so its event is produced once. Returns {peers taken,
/// peers still pending}.
pub(super) const PEER_SWEEP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 256)
for _, peer in ipairs(due) do
  redis.call('ZREM', KEYS[1], peer)
  local total = 0
  for _, v in ipairs(redis.call('HVALS', ARGV[1] .. peer .. ARGV[2])) do total = total + tonumber(v) end
  if total <= 0 then wh_emit(32, 'peer.offline', peer) end
end
return {#due, redis.call('ZCARD', KEYS[1])}
"#;

/// KEYS: node index key. ARGV: entry, generation. Forgets an index entry unless it was
/// touched since the generation was read (an operation on it started meanwhile).
const INDEX_PRUNE: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#;

/// KEYS: cluster base. ARGV: instance, lease ms. Returns 1 when the lease was renewed, 0 when
/// it had lapsed without a reap (first start, or Redis lost its data: re-assert), and -1 when
/// the instance was reaped (others saw its peers leave: re-incarnate, then re-assert).
const RENEW: &str = r#"
local c, inst, ttl = KEYS[1], ARGV[1], ARGV[2]
if redis.call('PEXPIRE', c .. ':lease:' .. inst, ttl) == 1 then
  redis.call('SADD', c .. ':nodes', inst)
  return 1
end
if redis.call('EXISTS', c .. ':reaped:' .. inst) == 1 then return -1 end
redis.call('SET', c .. ':lease:' .. inst, '1', 'PX', ttl)
redis.call('SADD', c .. ':nodes', inst)
return 0
"#;

/// KEYS: cluster base. ARGV: own instance, linger ms. Claims every instance whose lease
/// expired (it stops being a member; its wildcard interest goes), then returns
/// {now ms, instances being reaped…}. Reapers clean a claimed instance's keys until its
/// linger ends, which also catches writes that were in flight when it died.
const CLAIM_DEAD: &str = r#"
local c, me, linger = KEYS[1], ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, inst in ipairs(redis.call('SMEMBERS', c .. ':nodes')) do
  if inst ~= me and redis.call('EXISTS', c .. ':lease:' .. inst) == 0 then
    redis.call('SREM', c .. ':nodes', inst)
    redis.call('ZADD', c .. ':reaping', now + linger, inst)
    redis.call('SET', c .. ':reaped:' .. inst, '1', 'PX', 600000)
    local suffix = '\n' .. inst
    for _, e in ipairs(redis.call('SMEMBERS', c .. ':patterns')) do
      if string.sub(e, -#suffix) == suffix then redis.call('SREM', c .. ':patterns', e) end
    end
  end
end
local out = {now}
for _, inst in ipairs(redis.call('ZRANGE', c .. ':reaping', 0, -1)) do table.insert(out, inst) end
return out
"#;

/// KEYS: channel base. ARGV: pub, topic, dead instance. Drops every hold of the instance on
/// the channel; each `left` is published exactly once, here (the holds leave atomically).
const REAP_CHANNEL: &str = r#"
local b, pub, topic, inst = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local n = 0
for peer, e in pairs(held_by(b, inst)) do
  drop_hold(b, e)
  n = n + release(b, pub, topic, peer)
end
redis.call('HDEL', b .. ':subs', inst)
return n
"#;

/// KEYS: channel base. ARGV: pub, topic, instance, local subscriber count, re-assertion
/// generation, then two length-prefixed lists: holds (peer, meta)…, departed peers….
/// Makes the channel agree with the node's local state after an outage, a data loss or a lost
/// lease: stale holds leave (publishing `left`), missing ones are added (publishing `joined`
/// when the peer was no member at all: whoever read the roster since never heard of it), and
/// peers that left during the outage get their `left` if nobody else holds them. A hold is
/// stale only if it is older than this re-assertion: one written by a subscribe that began
/// after the node's state was read is not in the list, and is no less held for that.
const REASSERT_CHANNEL: &str = r#"
local b, pub, topic, inst = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local subs, gen = tonumber(ARGV[4]), tonumber(ARGV[5])
local i = 6
local desired, order = {}, {}
for _ = 1, tonumber(ARGV[i]) do
  desired[ARGV[i + 1]] = ARGV[i + 2]
  table.insert(order, ARGV[i + 1])
  i = i + 2
end
i = i + 1
local announced = {}
for peer, e in pairs(held_by(b, inst)) do
  if desired[peer] == nil and tonumber(redis.call('HGET', b .. ':holdgen', e) or '0') < gen then
    drop_hold(b, e)
    if release(b, pub, topic, peer) == 1 then announced[peer] = true end
  end
end
for _, peer in ipairs(order) do hold(b, pub, topic, inst, peer, desired[peer], gen) end
if subs > 0 then redis.call('HSET', b .. ':subs', inst, subs) else redis.call('HDEL', b .. ':subs', inst) end
for _ = 1, tonumber(ARGV[i]) do
  local peer = ARGV[i + 1]
  i = i + 1
  if not announced[peer] and desired[peer] == nil and redis.call('HEXISTS', b .. ':members', peer) == 0 then
    announce(b, pub, topic, 'left', next_seq(b), peer, nil)
    wh_emit(2, 'presence.left', peer, nil)
    if redis.call('EXISTS', b .. ':members') == 0 then wh_emit(8, 'channel.vacated') end
  end
end
forget_if_empty(b)
return 1
"#;

/// The compiled scripts (each is sent once, then run by its SHA).
pub struct Scripts {
    pub join: Script,
    pub leave: Script,
    pub publish: Script,
    pub roster: Script,
    pub route: Script,
    pub route_adjust: Script,
    pub route_reap: Script,
    pub index_prune: Script,
    pub renew: Script,
    pub claim_dead: Script,
    pub reap_channel: Script,
    pub reassert_channel: Script,
    pub publish_kept: Script,
    pub history_read: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let with_helpers = |body: &str| Script::new(&format!("{WH_HELPERS}\n{HELPERS}\n{body}"));
        let with_webhooks = |body: &str| Script::new(&format!("{WH_HELPERS}\n{body}"));
        Scripts {
            join: with_helpers(JOIN),
            leave: with_helpers(LEAVE),
            publish: with_webhooks(PUBLISH),
            roster: Script::new(ROSTER),
            route: Script::new(ROUTE),
            route_adjust: with_webhooks(ROUTE_ADJUST),
            route_reap: with_webhooks(ROUTE_REAP),
            index_prune: Script::new(INDEX_PRUNE),
            renew: Script::new(RENEW),
            claim_dead: Script::new(CLAIM_DEAD),
            reap_channel: with_helpers(REAP_CHANNEL),
            reassert_channel: with_helpers(REASSERT_CHANNEL),
            publish_kept: with_webhooks(PUBLISH_KEPT),
            history_read: Script::new(HISTORY_READ),
        }
    }
}
