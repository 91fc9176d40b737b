//! The Lua scripts of lossless reconnect on the Redis engine (`resume.rs`).
//!
//! A peer's resume state lives next to its route hash, under the same hash tag
//! (`P{p:<app>:<peer>}`), so each script touches one slot and can check "is the peer connected
//! anywhere" and "is it parked" in the same atomic step (`keys.rs` lists the keys):
//!
//! - `:parked` (string): the peer is inside its resume window; holds the bytes of its inbox.
//! - `:rpos` (hash): channel → `<offset>\n<epoch>` (`epoch` empty: before any history).
//! - `:rbox` (list): held directs, oldest first, each `<expiry ms>\n<frame>`.
//! - `:lpos` (hash): channel → `<offset>\n<epoch>\n<instance>`, the positions confirmed on a
//!   live connection, written lazily (`resume_lazy.rs`) for a node that dies before it parks.
//!
//! All three expire with the window, so Redis forgets a peer that never comes back.

use std::sync::{Arc, LazyLock};

use redis::Script;

use super::scripts::WH_HELPERS;
use crate::resume::Since;

/// Current Redis time in ms (scripts must not trust the caller's clock across nodes).
const NOW: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Drops the lazily written positions (`:lpos`) this instance wrote for the peer.
local function forget_lazy(b, inst)
  local l = b .. ':lpos'
  local all = redis.call('HGETALL', l)
  local tail = '\n' .. inst
  for i = 1, #all, 2 do
    local v = all[i + 1]
    if string.sub(v, -#tail) == tail then redis.call('HDEL', l, all[i]) end
  end
end
local function live(b)
  for _, v in ipairs(redis.call('HVALS', b .. ':route')) do
    if tonumber(v) > 0 then return true end
  end
  return false
end
"#;

/// KEYS: peer base, then with webhooks the app's pending-offline zset and endpoint bases.
/// ARGV: instance, window ms, peer, grace ms, then (channel, offset, epoch) triples, then the
/// webhook spec. Takes the connection out of the route (in place of the disconnect's
/// decrement; with webhooks, as the route calls do: `wh_route_moved`) and, unless the peer is
/// still connected somewhere, parks it: positions kept, inbox opened, for the window. Returns
/// 1 when parked.
const PARK: &str = r#"
WH_KEY0 = 3
local b = KEYS[1]
local inst, ttl = ARGV[1], tonumber(ARGV[2])
local n = redis.call('HINCRBY', b .. ':route', inst, -1)
if n <= 0 then redis.call('HDEL', b .. ':route', inst) end
wh_route_moved(b .. ':route', -1, ARGV[3], ARGV[4])
forget_lazy(b, inst)
if live(b) then return 0 end
local pk, pos, box = b .. ':parked', b .. ':rpos', b .. ':rbox'
if redis.call('EXISTS', pk) == 0 then redis.call('SET', pk, '0') end
redis.call('PEXPIRE', pk, ttl)
for i = 5, #ARGV - 1, 3 do
  redis.call('HSET', pos, ARGV[i], ARGV[i + 1] .. '\n' .. ARGV[i + 2])
end
if redis.call('EXISTS', pos) == 1 then redis.call('PEXPIRE', pos, ttl) end
if redis.call('EXISTS', box) == 1 then redis.call('PEXPIRE', box, ttl) end
return 1
"#;

/// KEYS: peer base. ARGV: channel. Takes the parked position of the channel (once).
const TAKE: &str = r#"
local pos = KEYS[1] .. ':rpos'
local v = redis.call('HGET', pos, ARGV[1])
if not v then return false end
redis.call('HDEL', pos, ARGV[1])
return v
"#;

/// KEYS: peer base. ARGV: frame, max directs, max bytes, direct ttl ms. Returns {outcome,
/// expired}: outcome -1 when the peer is connected somewhere (send it again), 0 when it is not
/// parked, 1 when queued, -2 when the inbox is full. Directs past their time leave first.
const QUEUE: &str = r#"
local b = KEYS[1]
if live(b) then return {-1, 0} end
local pk, box = b .. ':parked', b .. ':rbox'
local left = redis.call('PTTL', pk)
if left <= 0 then return {0, 0} end
local now = now_ms()
local bytes = tonumber(redis.call('GET', pk) or '0')
local expired = 0
while true do
  local head = redis.call('LINDEX', box, 0)
  if not head then break end
  local nl = string.find(head, '\n', 1, true)
  if tonumber(string.sub(head, 1, nl - 1)) > now then break end
  redis.call('LPOP', box)
  bytes = bytes - (#head - nl)
  expired = expired + 1
end
local frame = ARGV[1]
if redis.call('LLEN', box) >= tonumber(ARGV[2]) or bytes + #frame > tonumber(ARGV[3]) then
  redis.call('SET', pk, math.max(bytes, 0), 'KEEPTTL')
  return {-2, expired}
end
redis.call('RPUSH', box, (now + tonumber(ARGV[4])) .. '\n' .. frame)
redis.call('PEXPIRE', box, left)
redis.call('SET', pk, bytes + #frame, 'KEEPTTL')
return {1, expired}
"#;

/// KEYS: peer base, then with webhooks the app's pending-offline zset and endpoint bases.
/// ARGV: instance, peer, grace ms, webhook spec. Counts a connection of the peer in its route
/// (with webhooks, as the route calls do: `wh_route_moved`) and takes its inbox in the same
/// step, so a direct is either in the inbox returned here or routed to the connection, never
/// neither, and the held ones come first. Returns {expired, frames…}.
const REGISTER: &str = r#"
WH_KEY0 = 3
local b = KEYS[1]
local box, pk = b .. ':rbox', b .. ':parked'
redis.call('HINCRBY', b .. ':route', ARGV[1], 1)
wh_route_moved(b .. ':route', 1, ARGV[2], ARGV[3])
local items = redis.call('LRANGE', box, 0, -1)
if #items == 0 then return {'0'} end
redis.call('DEL', box)
if redis.call('EXISTS', pk) == 1 then redis.call('SET', pk, '0', 'KEEPTTL') end
local now = now_ms()
local out, expired = {'0'}, 0
for _, it in ipairs(items) do
  local nl = string.find(it, '\n', 1, true)
  if tonumber(string.sub(it, 1, nl - 1)) > now then
    table.insert(out, string.sub(it, nl + 1))
  else
    expired = expired + 1
  end
end
out[1] = tostring(expired)
return out
"#;

/// KEYS: peer base. ARGV: instance, window ms, then (channel, offset, epoch) triples. Writes
/// the confirmed positions of a live connection (`:lpos`, `<offset>\n<epoch>\n<instance>`),
/// unless the instance no longer routes the peer (it parked or left meanwhile).
const LAZY_WRITE: &str = r#"
local b = KEYS[1]
local inst = ARGV[1]
if tonumber(redis.call('HGET', b .. ':route', inst) or '0') <= 0 then return 0 end
local l = b .. ':lpos'
for i = 3, #ARGV, 3 do
  redis.call('HSET', l, ARGV[i], ARGV[i + 1] .. '\n' .. ARGV[i + 2] .. '\n' .. inst)
end
redis.call('PEXPIRE', l, tonumber(ARGV[2]))
return 1
"#;

/// KEYS: peer base. ARGV: instance. A deliberate close: what it wrote lazily goes.
const LAZY_FORGET: &str = r#"
forget_lazy(KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: peer base. ARGV: channel, the value read. Takes a lazily written position (once).
const LAZY_TAKE: &str = r#"
local l = KEYS[1] .. ':lpos'
if redis.call('HGET', l, ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', l, ARGV[1])
return 1
"#;

/// KEYS: peer base. ARGV: window ms. Parks a peer whose node died before it could (its
/// positions stay in `:lpos`), unless it is routed somewhere now. Returns 1 when parked.
const PARK_ORPHAN: &str = r#"
local b = KEYS[1]
if live(b) then return 0 end
redis.call('SET', b .. ':parked', '0', 'NX', 'PX', tonumber(ARGV[1]))
return 1
"#;

/// KEYS: channel base. ARGV: after offset, limit, max age ms. Returns {epoch, last offset,
/// events after the offset oldest first (at most limit + 1, none past the age)}; {''} when the
/// channel has no history.
const RESUME_READ: &str = r#"
local b = KEYS[1]
local p = b .. ':hpos'
local epoch = redis.call('HGET', p, 'epoch')
if not epoch then return {''} end
local last = redis.call('HGET', p, 'offset') or '0'
local limit, age = tonumber(ARGV[2]), tonumber(ARGV[3])
local cutoff = now_ms() - age
local out = {epoch, last}
local lo = '(' .. ARGV[1] .. '-0'
for _, e in ipairs(redis.call('XRANGE', b .. ':hist', lo, '+', 'COUNT', limit + 1)) do
  if tonumber(e[2][2]) >= cutoff then table.insert(out, e[2][4]) end
end
return out
"#;

/// The resume scripts, compiled (hashed) once per process.
pub static SCRIPTS: LazyLock<ResumeScripts> = LazyLock::new(ResumeScripts::new);

pub struct ResumeScripts {
    pub park: Script,
    pub take: Script,
    pub queue: Script,
    pub register: Script,
    pub read: Script,
    pub lazy_write: Script,
    pub lazy_forget: Script,
    pub lazy_take: Script,
    pub park_orphan: Script,
}

impl ResumeScripts {
    pub fn new() -> ResumeScripts {
        let with_helpers = |body: &str| Script::new(&format!("{NOW}\n{body}"));
        // The route scripts announce peer.online/offline as `ROUTE_ADJUST` does.
        let with_webhooks = |body: &str| Script::new(&format!("{WH_HELPERS}\n{NOW}\n{body}"));
        ResumeScripts {
            park: with_webhooks(PARK),
            take: Script::new(TAKE),
            queue: with_helpers(QUEUE),
            register: with_webhooks(REGISTER),
            read: with_helpers(RESUME_READ),
            lazy_write: Script::new(LAZY_WRITE),
            lazy_forget: with_helpers(LAZY_FORGET),
            lazy_take: Script::new(LAZY_TAKE),
            park_orphan: with_helpers(PARK_ORPHAN),
        }
    }
}

/// A position as `:rpos` stores it: `<offset>\n<epoch>`.
pub(super) fn encode_since(since: &Since) -> (u64, String) {
    (
        since.offset,
        since.epoch.as_deref().unwrap_or_default().to_string(),
    )
}

pub(super) fn decode_since(text: &str) -> Option<Since> {
    let (offset, epoch) = text.split_once('\n')?;
    Some(Since {
        epoch: (!epoch.is_empty()).then(|| Arc::from(epoch)),
        offset: offset.parse().ok()?,
    })
}
