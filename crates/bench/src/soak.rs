//! The soak: a moderate mixed load held for a long time against one Herald node or a cluster,
//! to find leaks (memory, descriptors) and wrong presence rosters rather than limits.
//!
//! The load: stable peers (subscribed to rooms for the whole run) publishing and sending directs
//! to each other; churners that reconnect, join and leave rooms; droppers that vanish without a
//! close frame; slow consumers that stop reading a firehose channel. Every few seconds the load
//! pauses (a write lock on the gate every actor step holds for reading), lets in-flight frames
//! arrive, and then: samples RSS and descriptors of each server process, compares every
//! connection's roster with the generator's truth, and compares deliveries to the stable peers
//! with what was acked. `scripts/soak` starts the servers; docs/soak.md says how to read it.

mod client;
mod slow;
mod stats;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, RwLock, RwLockReadGuard};
use tokio::task::JoinSet;

pub use client::Counters;
use client::{Handle, Op};
pub use slow::SlowSummary;
pub use stats::{Proc, ProcSummary, Sample, Series};

/// Rooms are the channels whose rosters are checked.
const ROOM_PREFIX: &str = "soak/room-";
const FIREHOSE: &str = "soak/firehose";
/// Droppers' channel: a vanished connection may keep its presence here for the reconnect grace
/// on a cluster, so it is never checked.
const DROP_CHANNEL: &str = "soak/drop";
/// Stable connections connect this many at a time during setup.
const SETUP_CONCURRENCY: usize = 16;
/// A check waits until no frame has arrived for this long (after the settle time)...
const QUIET_FOR: Duration = Duration::from_millis(250);
/// ...but no longer than this.
const QUIET_MAX: Duration = Duration::from_secs(10);
/// Wrong rosters described in full; the rest are only counted.
const PRINTED_DIFFS: usize = 5;

/// Sizes and rates of one soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakOpts {
    pub duration: Duration,
    /// Time between two checks (load, pause, settle, sample, check).
    pub check_every: Duration,
    /// How long the paused load is left to settle before a check.
    pub settle: Duration,
    /// Connections that stay for the whole run, each in `rooms_per_peer` rooms.
    pub stable: usize,
    /// Connections that reconnect, join and leave rooms all the time.
    pub churners: usize,
    /// Connections that reconnect without a close frame.
    pub droppers: usize,
    pub slow_consumers: usize,
    pub rooms: usize,
    pub rooms_per_peer: usize,
    /// Publishes per second on the rooms (by stable peers; churners publish on their own).
    pub publish_rate: f64,
    pub direct_rate: f64,
    /// Publishes per second on the firehose channel the slow consumers read.
    pub firehose_rate: f64,
    pub firehose_bytes: usize,
    pub payload_bytes: usize,
    /// How long a slow consumer stops reading.
    pub stall: Duration,
    /// The first part of the run (a fraction) left out of the RSS/descriptor bounds.
    pub warmup_fraction: f64,
    /// The bound: every sample after warm-up within ±tolerance of the median.
    pub tolerance: f64,
    pub seed: u64,
}

impl SoakOpts {
    /// The soak's default load for `duration`: about 300 connections and a few hundred
    /// frames per second in, a few thousand deliveries out.
    pub fn standard(duration: Duration) -> SoakOpts {
        SoakOpts {
            duration,
            check_every: Duration::from_secs(5),
            settle: Duration::from_secs(1),
            stable: 240,
            churners: 40,
            droppers: 8,
            slow_consumers: 4,
            rooms: 8,
            rooms_per_peer: 2,
            publish_rate: 40.0,
            direct_rate: 60.0,
            firehose_rate: 200.0,
            firehose_bytes: 512,
            payload_bytes: 128,
            stall: Duration::from_secs(30),
            warmup_fraction: 0.2,
            tolerance: 0.10,
            seed: 1,
        }
    }

    /// A few seconds with a few dozen connections, for the test suite.
    pub fn smoke() -> SoakOpts {
        SoakOpts {
            duration: Duration::from_secs(4),
            check_every: Duration::from_millis(1000),
            settle: Duration::from_millis(300),
            stable: 16,
            churners: 6,
            droppers: 2,
            slow_consumers: 1,
            rooms: 3,
            rooms_per_peer: 2,
            publish_rate: 20.0,
            direct_rate: 20.0,
            firehose_rate: 50.0,
            firehose_bytes: 512,
            payload_bytes: 64,
            stall: Duration::from_secs(1),
            ..SoakOpts::standard(Duration::from_secs(4))
        }
    }
}

/// What the soak drives.
#[derive(Debug, Clone)]
pub struct SoakTarget {
    /// One address per node (loopback); connections are spread over them round-robin.
    pub addrs: Vec<SocketAddr>,
    /// A publishable key with the presence action.
    pub key: String,
    /// A publishable key without it (firehose publisher and slow consumers).
    pub quiet_key: String,
    /// Processes to sample (every node, redis-server).
    pub procs: Vec<Proc>,
}

/// Everything a soak measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub duration_secs: f64,
    pub nodes: usize,
    pub opts: SoakOpts,
    pub checks: u64,
    pub rosters_compared: u64,
    pub wrong_rosters: u64,
    pub presence_anomalies: u64,
    pub room_publishes: u64,
    pub firehose_publishes: u64,
    pub messages_delivered: u64,
    pub stable_messages_expected: u64,
    pub stable_messages_received: u64,
    pub directs_sent: u64,
    pub directs_received: u64,
    pub presence_frames: u64,
    pub connects: u64,
    pub graceful_closes: u64,
    pub abrupt_drops: u64,
    pub joins: u64,
    pub leaves: u64,
    pub slow: SlowSummary,
    pub error_frames: u64,
    pub unexpected_closes: u64,
    pub timeouts: u64,
    pub connect_failures: u64,
    pub procs: Vec<ProcSummary>,
    /// The first wrong rosters and presence anomalies, described.
    pub examples: Vec<String>,
    #[serde(skip)]
    pub samples: Vec<Sample>,
    /// Why the soak failed; empty when it passed.
    pub failures: Vec<String>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Messages the stable peers should have and did not (negative: duplicates).
    pub fn messages_missing(&self) -> i64 {
        self.stable_messages_expected as i64 - self.stable_messages_received as i64
    }

    pub fn directs_missing(&self) -> i64 {
        self.directs_sent as i64 - self.directs_received as i64
    }

    pub fn csv(&self) -> String {
        stats::csv(&self.samples)
    }

    /// The summary to record: one block of plain text.
    pub fn render(&self) -> String {
        let o = &self.opts;
        let mut s = String::new();
        let _ = writeln!(s, "== soak summary ==");
        let _ = writeln!(
            s,
            "duration: {:.0} s ({} node(s)); warm-up: first {:.0} % ({:.0} s); {} checks",
            self.duration_secs,
            self.nodes,
            o.warmup_fraction * 100.0,
            o.duration.as_secs_f64() * o.warmup_fraction,
            self.checks
        );
        let _ = writeln!(
            s,
            "load: {} stable + {} churning + {} dropping + {} slow connections; {} rooms; \
             {}/s publishes, {}/s directs, firehose {}/s x {} B",
            o.stable,
            o.churners,
            o.droppers,
            o.slow_consumers,
            o.rooms,
            o.publish_rate,
            o.direct_rate,
            o.firehose_rate,
            o.firehose_bytes
        );
        let tol = o.tolerance * 100.0;
        for p in &self.procs {
            let line = |what: &str, series: &Option<Series>| match series {
                Some(x) => format!(
                    "  {what:<8} first {} last {} min {} max {} median {} ({} samples): {}",
                    x.first,
                    x.last,
                    x.min,
                    x.max,
                    x.median,
                    x.samples,
                    if x.within {
                        format!("within ±{tol:.0} %")
                    } else {
                        format!("DRIFT beyond ±{tol:.0} %")
                    }
                ),
                None => format!("  {what:<8} no samples after warm-up"),
            };
            let _ = writeln!(s, "process {} (pid {}), after warm-up:", p.process, p.pid);
            let _ = writeln!(s, "{}", line("anon KiB", &p.anon_kb));
            let _ = writeln!(s, "{} (reported only)", line("RSS KiB", &p.rss_kb));
            let _ = writeln!(s, "{}", line("fds", &p.fds));
        }
        let _ = writeln!(
            s,
            "wrong rosters: {} (of {} compared); presence anomalies: {}",
            self.wrong_rosters, self.rosters_compared, self.presence_anomalies
        );
        let _ = writeln!(
            s,
            "deliveries: {} room publishes, {} messages delivered; to stable peers {} expected, \
             {} received, missing {}",
            self.room_publishes,
            self.messages_delivered,
            self.stable_messages_expected,
            self.stable_messages_received,
            self.messages_missing()
        );
        let _ = writeln!(
            s,
            "directs: {} sent, {} received, missing {}; presence frames: {}; firehose publishes: {}",
            self.directs_sent,
            self.directs_received,
            self.directs_missing(),
            self.presence_frames,
            self.firehose_publishes
        );
        let _ = writeln!(
            s,
            "churn: {} connects, {} graceful closes, {} abrupt drops, {} joins, {} leaves",
            self.connects, self.graceful_closes, self.abrupt_drops, self.joins, self.leaves
        );
        let _ = writeln!(
            s,
            "slow consumers: {} stalls, {} closed by the server, {} still open after the stall",
            self.slow.stalls, self.slow.closed_by_server, self.slow.survived
        );
        let _ = writeln!(
            s,
            "errors: {} error frames, {} unexpected closes, {} timeouts, {} connect failures",
            self.error_frames,
            self.unexpected_closes,
            self.timeouts,
            self.connect_failures + self.slow.connect_failures
        );
        for example in &self.examples {
            let _ = writeln!(s, "  {example}");
        }
        if self.passed() {
            let _ = writeln!(s, "result: PASS");
        } else {
            let _ = writeln!(s, "result: FAIL ({})", self.failures.join("; "));
        }
        s
    }
}

/// A small deterministic generator (xorshift64*), so a run's choices depend only on its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(self.next() % span.max(1))
    }
}

/// Sleeps for `d` unless `stop` turns true first; returns whether to carry on.
async fn nap(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

fn room(i: usize) -> String {
    format!("{ROOM_PREFIX}{i}")
}

/// JSON data of about `bytes` bytes.
fn payload(bytes: usize) -> Arc<[u8]> {
    format!(r#"{{"soak":"{}"}}"#, "x".repeat(bytes.saturating_sub(12)))
        .into_bytes()
        .into()
}

/// Generator-side counters the report needs besides the connections' own.
#[derive(Default)]
struct Tally {
    room_publishes: AtomicU64,
    firehose_publishes: AtomicU64,
    stable_messages_expected: AtomicU64,
    directs_sent: AtomicU64,
    connects: AtomicU64,
    graceful_closes: AtomicU64,
    abrupt_drops: AtomicU64,
    joins: AtomicU64,
    leaves: AtomicU64,
    connect_failures: AtomicU64,
}

/// What every actor shares.
struct World {
    target: SoakTarget,
    opts: SoakOpts,
    counters: Arc<Counters>,
    tally: Tally,
    slow: Arc<slow::SlowCounters>,
    /// Actors hold it for reading across each step; a check takes it for writing.
    gate: RwLock<()>,
    /// The truth: peers the generator knows are subscribed, per room.
    truth: Mutex<HashMap<String, HashSet<String>>>,
    /// Connections whose rosters are checked, by slot.
    tracked: Mutex<HashMap<usize, Handle>>,
    /// Stable peers per room, fixed after setup: how many stable deliveries a publish makes.
    stable_rooms: HashMap<String, HashSet<String>>,
    stable: Vec<Handle>,
    next_index: AtomicUsize,
    open: AtomicUsize,
}

impl World {
    /// Opens a connection, to the nodes in turn.
    async fn connect(&self, key: &str, stable: bool) -> Option<Handle> {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed);
        let addr = self.target.addrs[index % self.target.addrs.len()];
        match client::connect(addr, key, index, stable, self.counters.clone()).await {
            Ok(handle) => {
                self.tally.connects.fetch_add(1, Ordering::Relaxed);
                self.open.fetch_add(1, Ordering::Relaxed);
                Some(handle)
            }
            Err(e) => {
                self.tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: connect to {addr} failed: {e}");
                None
            }
        }
    }

    async fn close(&self, handle: &Handle, graceful: bool) {
        handle.close(graceful).await;
        self.open.fetch_sub(1, Ordering::Relaxed);
        let counter = if graceful {
            &self.tally.graceful_closes
        } else {
            &self.tally.abrupt_drops
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn set_truth(&self, channel: &str, peer: &str, member: bool) {
        let mut truth = self.truth.lock().unwrap_or_else(|e| e.into_inner());
        let peers = truth.entry(channel.to_string()).or_default();
        if member {
            peers.insert(peer.to_string());
        } else {
            peers.remove(peer);
        }
    }

    async fn subscribe(&self, handle: &Handle, channel: &str) -> bool {
        let ok = handle
            .request(Op::Subscribe(channel.to_string()), &self.counters)
            .await
            .is_ok();
        if ok && channel.starts_with(ROOM_PREFIX) {
            self.set_truth(channel, &handle.peer, true);
            self.tally.joins.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    async fn unsubscribe(&self, handle: &Handle, channel: &str) {
        // Whatever the answer, the generator no longer counts it as a member: an error here is
        // reported as an error, and would show as a wrong roster too.
        let _ = handle
            .request(Op::Unsubscribe(channel.to_string()), &self.counters)
            .await;
        self.set_truth(channel, &handle.peer, false);
        self.tally.leaves.fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes on a room and, once acked, counts the deliveries the stable peers are owed.
    async fn publish_room(&self, handle: &Handle, channel: &str, data: &Arc<[u8]>) {
        let op = Op::Publish(channel.to_string(), data.clone());
        if handle.request(op, &self.counters).await.is_ok() {
            let stable = self.stable_rooms.get(channel);
            let owed = stable.map_or(0, |s| s.len() - usize::from(s.contains(&*handle.peer)));
            self.tally.room_publishes.fetch_add(1, Ordering::Relaxed);
            self.tally
                .stable_messages_expected
                .fetch_add(owed as u64, Ordering::Relaxed);
        }
    }
}

/// Stable peers publish on random rooms at `publish_rate`.
async fn publisher(world: Arc<World>, mut stop: watch::Receiver<bool>) {
    let mut rng = Rng::new(world.opts.seed ^ 0x5050);
    let data = payload(world.opts.payload_bytes);
    let mut tick = ticker(world.opts.publish_rate);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let Some(_step) = world.step(&stop).await else {
            break;
        };
        let from = &world.stable[rng.below(world.stable.len())];
        let channel = room(rng.below(world.opts.rooms));
        world.publish_room(from, &channel, &data).await;
    }
}

/// Stable peers send directs to each other at `direct_rate`.
async fn director(world: Arc<World>, mut stop: watch::Receiver<bool>) {
    let mut rng = Rng::new(world.opts.seed ^ 0xd1d1);
    let data = payload(world.opts.payload_bytes);
    let mut tick = ticker(world.opts.direct_rate);
    let n = world.stable.len();
    while !*stop.borrow() && n > 1 {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let Some(_step) = world.step(&stop).await else {
            break;
        };
        let from = rng.below(n);
        let to = (from + 1 + rng.below(n - 1)) % n;
        let op = Op::Send(world.stable[to].peer.to_string(), data.clone());
        if world.stable[from]
            .request(op, &world.counters)
            .await
            .is_ok()
        {
            world.tally.directs_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One publisher (not subscribed anywhere) feeds the slow consumers' channel.
async fn firehose(world: Arc<World>, handle: Handle, mut stop: watch::Receiver<bool>) {
    let data = payload(world.opts.firehose_bytes);
    let mut tick = ticker(world.opts.firehose_rate);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let Some(_step) = world.step(&stop).await else {
            break;
        };
        let op = Op::Publish(FIREHOSE.to_string(), data.clone());
        if handle.request(op, &world.counters).await.is_ok() {
            world
                .tally
                .firehose_publishes
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    world.close(&handle, true).await;
}

fn ticker(rate: f64) -> tokio::time::Interval {
    let period = Duration::from_secs_f64(1.0 / rate.max(0.01));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// A churner: connect, join one or two rooms, join or leave one, publish, then close with a
/// close frame and start over on a new connection, in one step, so that at every check each
/// churner holds exactly one connection (the descriptor count stays comparable).
async fn churner(world: Arc<World>, slot: usize, mut stop: watch::Receiver<bool>) {
    let mut rng = Rng::new(world.opts.seed ^ ((slot as u64) << 20));
    let data = payload(world.opts.payload_bytes);
    let rooms = world.opts.rooms;
    let mut current: Option<(Handle, Vec<String>)> = None;
    while !*stop.borrow() {
        {
            let Some(_step) = world.step(&stop).await else {
                break;
            };
            if let Some((old, channels)) = current.take() {
                world.close(&old, true).await;
                forget(&world, slot, &old, &channels);
            }
            if let Some(handle) = world.connect(&world.target.key, false).await {
                let mut channels = Vec::new();
                for _ in 0..1 + rng.below(2) {
                    let channel = room(rng.below(rooms));
                    if !channels.contains(&channel) && world.subscribe(&handle, &channel).await {
                        channels.push(channel);
                    }
                }
                world.tracked_insert(slot, handle.clone());
                current = Some((handle, channels));
            }
        }
        if current.is_none() {
            nap(&mut stop, Duration::from_secs(1)).await;
            continue;
        }
        if !nap(
            &mut stop,
            rng.between(Duration::from_millis(500), Duration::from_secs(2)),
        )
        .await
        {
            break;
        }
        if let Some((handle, channels)) = current.as_mut() {
            let Some(_step) = world.step(&stop).await else {
                break;
            };
            let channel = room(rng.below(rooms));
            if let Some(at) = channels.iter().position(|c| *c == channel) {
                world.unsubscribe(handle, &channel).await;
                channels.remove(at);
            } else if world.subscribe(handle, &channel).await {
                channels.push(channel);
            }
        }
        if !nap(
            &mut stop,
            rng.between(Duration::from_millis(500), Duration::from_secs(2)),
        )
        .await
        {
            break;
        }
        if let Some((handle, _)) = current.as_ref() {
            let Some(_step) = world.step(&stop).await else {
                break;
            };
            let channel = room(rng.below(rooms));
            world.publish_room(handle, &channel, &data).await;
        }
        if !nap(
            &mut stop,
            rng.between(Duration::from_millis(200), Duration::from_secs(1)),
        )
        .await
        {
            break;
        }
    }
    if let Some((handle, channels)) = current.take() {
        world.close(&handle, true).await;
        forget(&world, slot, &handle, &channels);
    }
}

/// A closed churner is no longer in any room, nor checked.
fn forget(world: &World, slot: usize, handle: &Handle, channels: &[String]) {
    for channel in channels {
        world.set_truth(channel, &handle.peer, false);
        world.tally.leaves.fetch_add(1, Ordering::Relaxed);
    }
    world
        .tracked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&slot);
}

impl World {
    /// Waits until the load may run (no check in progress) and holds that for one step;
    /// `None` once the soak is stopping, so nothing starts after the last check.
    async fn step(&self, stop: &watch::Receiver<bool>) -> Option<RwLockReadGuard<'_, ()>> {
        let guard = self.gate.read().await;
        (!*stop.borrow()).then_some(guard)
    }

    fn tracked_insert(&self, slot: usize, handle: Handle) {
        self.tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(slot, handle);
    }
}

/// A dropper: join the drop channel, then vanish without a close frame and come back.
async fn dropper(world: Arc<World>, slot: usize, mut stop: watch::Receiver<bool>) {
    let mut rng = Rng::new(world.opts.seed ^ 0xd7 ^ ((slot as u64) << 24));
    let mut current: Option<Handle> = None;
    loop {
        {
            let _step = world.gate.read().await;
            if let Some(old) = current.take() {
                world.close(&old, false).await;
            }
            if *stop.borrow() {
                break;
            }
            if let Some(handle) = world.connect(&world.target.key, false).await {
                world.subscribe(&handle, DROP_CHANNEL).await;
                current = Some(handle);
            }
        }
        if !nap(
            &mut stop,
            rng.between(Duration::from_secs(1), Duration::from_secs(4)),
        )
        .await
        {
            if let Some(old) = current.take() {
                world.close(&old, false).await;
            }
            break;
        }
    }
}

/// Connects the stable peers and subscribes each to its rooms.
async fn setup_stable(
    target: &SoakTarget,
    opts: &SoakOpts,
    counters: &Arc<Counters>,
    next_index: &AtomicUsize,
) -> anyhow::Result<Vec<(Handle, Vec<String>)>> {
    let mut stable = Vec::with_capacity(opts.stable);
    let mut tasks = JoinSet::new();
    let per = opts.rooms_per_peer.clamp(1, opts.rooms.max(1));
    for i in 0..opts.stable {
        if tasks.len() >= SETUP_CONCURRENCY {
            if let Some(done) = tasks.join_next().await {
                stable.push(done??);
            }
        }
        let index = next_index.fetch_add(1, Ordering::Relaxed);
        let addr = target.addrs[index % target.addrs.len()];
        let key = target.key.clone();
        let counters = counters.clone();
        // Room i % rooms, then the next ones with a stride that varies with i, so rooms get
        // even and overlapping memberships.
        let stride = 1 + (i / opts.rooms.max(1)) % opts.rooms.saturating_sub(1).max(1);
        let channels: Vec<String> = (0..per)
            .map(|j| room((i + j * stride) % opts.rooms.max(1)))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        tasks.spawn(async move {
            let handle = client::connect(addr, &key, index, true, counters.clone()).await?;
            for channel in &channels {
                handle
                    .request(Op::Subscribe(channel.clone()), &counters)
                    .await
                    .map_err(|e| anyhow::anyhow!("stable subscribe: {e}"))?;
            }
            anyhow::Ok((handle, channels))
        });
    }
    while let Some(done) = tasks.join_next().await {
        stable.push(done??);
    }
    Ok(stable)
}

/// Waits (up to `QUIET_MAX`) until no frame has arrived for `QUIET_FOR`, so a check on a loaded
/// machine does not catch deltas still on their way and call the roster wrong.
async fn wait_for_quiet(counters: &Counters) {
    let inbound = || {
        counters.messages.load(Ordering::Relaxed)
            + counters.directs.load(Ordering::Relaxed)
            + counters.presence_frames.load(Ordering::Relaxed)
    };
    let until = Instant::now() + QUIET_MAX;
    let mut seen = inbound();
    while Instant::now() < until {
        tokio::time::sleep(QUIET_FOR).await;
        let now = inbound();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Compares every tracked connection's rosters with the truth; returns (compared, wrong).
async fn check_rosters(world: &World, examples: &mut Vec<String>) -> (u64, u64) {
    let truth = world
        .truth
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let tracked: Vec<Handle> = world
        .tracked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let (mut compared, mut wrong) = (0, 0);
    for handle in tracked {
        let peer = &*handle.peer;
        let Some(rosters) = handle.rosters().await else {
            // Gone: an unexpected close, counted as such.
            continue;
        };
        let mut channels: BTreeSet<&String> = truth
            .iter()
            .filter(|(_, peers)| peers.contains(peer))
            .map(|(channel, _)| channel)
            .collect();
        channels.extend(rosters.keys().filter(|c| c.starts_with(ROOM_PREFIX)));
        for channel in channels {
            compared += 1;
            let mut expected: BTreeSet<String> = truth
                .get(channel)
                .map(|peers| peers.iter().cloned().collect())
                .unwrap_or_default();
            let member = expected.remove(peer);
            let told = rosters.get(channel);
            let right = member && told.is_some_and(|r| r.snapshot_seen && r.peers == expected);
            if right {
                continue;
            }
            wrong += 1;
            if examples.len() < PRINTED_DIFFS {
                let example = match told {
                    None => format!("wrong roster at {peer} on {channel}: no roster"),
                    Some(r) if !member => format!(
                        "wrong roster at {peer} on {channel}: has a roster ({} peers) but is not \
                         subscribed",
                        r.peers.len()
                    ),
                    Some(r) => format!(
                        "wrong roster at {peer} on {channel}: snapshot seen {}, missing {:?}, \
                         extra {:?}",
                        r.snapshot_seen,
                        expected.difference(&r.peers).collect::<Vec<_>>(),
                        r.peers.difference(&expected).collect::<Vec<_>>()
                    ),
                };
                eprintln!("soak: {example}");
                examples.push(example);
            }
        }
    }
    (compared, wrong)
}

/// Runs the soak for `opts.duration` and reports. Every task it starts has ended (or been
/// aborted) when it returns.
pub async fn run(target: &SoakTarget, opts: &SoakOpts) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(!target.addrs.is_empty(), "no node to soak");
    anyhow::ensure!(
        opts.rooms >= 1 && opts.stable >= 2,
        "need a room and two stable peers"
    );
    let counters = Arc::new(Counters::default());
    let next_index = AtomicUsize::new(0);
    crate::scenarios::progress(format!(
        "soak: connecting {} stable peers to {} node(s)",
        opts.stable,
        target.addrs.len()
    ));
    let stable = setup_stable(target, opts, &counters, &next_index).await?;
    let mut truth: HashMap<String, HashSet<String>> = HashMap::new();
    let mut tracked = HashMap::new();
    for (slot, (handle, channels)) in stable.iter().enumerate() {
        for channel in channels {
            truth
                .entry(channel.clone())
                .or_default()
                .insert(handle.peer.to_string());
        }
        tracked.insert(slot, handle.clone());
    }
    let world = Arc::new(World {
        target: target.clone(),
        opts: opts.clone(),
        counters: counters.clone(),
        tally: Tally::default(),
        slow: Arc::new(slow::SlowCounters::default()),
        gate: RwLock::new(()),
        stable_rooms: truth.clone(),
        truth: Mutex::new(truth),
        tracked: Mutex::new(tracked),
        stable: stable.iter().map(|(h, _)| h.clone()).collect(),
        next_index,
        open: AtomicUsize::new(stable.len()),
    });
    world
        .tally
        .connects
        .fetch_add(stable.len() as u64, Ordering::Relaxed);
    world.tally.joins.fetch_add(
        stable.iter().map(|(_, c)| c.len() as u64).sum(),
        Ordering::Relaxed,
    );

    let (stop_tx, stop) = watch::channel(false);
    let mut actors = JoinSet::new();
    actors.spawn(publisher(world.clone(), stop.clone()));
    actors.spawn(director(world.clone(), stop.clone()));
    if opts.slow_consumers > 0 {
        if let Some(handle) = world.connect(&target.quiet_key, false).await {
            actors.spawn(firehose(world.clone(), handle, stop.clone()));
        }
    }
    for i in 0..opts.churners {
        actors.spawn(churner(world.clone(), opts.stable + i, stop.clone()));
    }
    for i in 0..opts.droppers {
        actors.spawn(dropper(world.clone(), i, stop.clone()));
    }
    for i in 0..opts.slow_consumers {
        let index = world.next_index.fetch_add(1, Ordering::Relaxed);
        let consumer = slow::SlowConsumer {
            addr: target.addrs[index % target.addrs.len()],
            key: target.quiet_key.clone(),
            index,
            channel: FIREHOSE.to_string(),
            // Staggered, so the consumers do not stall in step.
            stall: opts.stall + opts.stall * i as u32 / (2 * opts.slow_consumers as u32),
            counters: world.slow.clone(),
        };
        actors.spawn(consumer.run(stop.clone()));
    }

    let start = Instant::now();
    let mut samples = Vec::new();
    let (mut checks, mut compared, mut wrong) = (0u64, 0u64, 0u64);
    let mut examples = Vec::new();
    let load_time = opts.check_every.saturating_sub(opts.settle);
    loop {
        tokio::time::sleep(load_time).await;
        let pause = world.gate.write().await;
        tokio::time::sleep(opts.settle).await;
        wait_for_quiet(&counters).await;
        let elapsed = start.elapsed().as_secs_f64();
        let open = world.open.load(Ordering::Relaxed);
        let taken = stats::sample(&target.procs, elapsed, open);
        let (c, w) = check_rosters(&world, &mut examples).await;
        checks += 1;
        compared += c;
        wrong += w;
        let expected = world.tally.stable_messages_expected.load(Ordering::Relaxed);
        let received = counters.stable_messages.load(Ordering::Relaxed);
        let sent = world.tally.directs_sent.load(Ordering::Relaxed);
        let directs = counters.directs.load(Ordering::Relaxed);
        let procs: Vec<String> = taken
            .iter()
            .map(|s| format!("{} {} KiB {} fds", s.process, s.rss_kb, s.fds))
            .collect();
        crate::scenarios::progress(format!(
            "soak [{elapsed:>6.0} s] {open} conns | rosters {c} wrong {w} | messages missing {} | \
             directs missing {} | {}",
            expected as i64 - received as i64,
            sent as i64 - directs as i64,
            procs.join(" | ")
        ));
        samples.extend(taken);
        let finished = start.elapsed() + opts.check_every / 2 >= opts.duration;
        if finished {
            let _ = stop_tx.send(true);
            drop(pause);
            break;
        }
        drop(pause);
    }
    let duration = start.elapsed().as_secs_f64();
    // Actors finish their step and leave; whatever hangs is aborted.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while actors.join_next().await.is_some() {}
    })
    .await;
    if ended.is_err() {
        eprintln!("soak: some load tasks did not stop in 15 s; aborted");
        actors.abort_all();
    }
    for handle in &world.stable {
        world.close(handle, true).await;
    }

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let warmup = opts.duration.as_secs_f64() * opts.warmup_fraction;
    let procs = stats::summarize(&target.procs, &samples, warmup, opts.tolerance);
    let mut report = SoakReport {
        duration_secs: duration,
        nodes: target.addrs.len(),
        opts: opts.clone(),
        checks,
        rosters_compared: compared,
        wrong_rosters: wrong,
        presence_anomalies: get(&counters.presence_anomalies),
        room_publishes: get(&world.tally.room_publishes),
        firehose_publishes: get(&world.tally.firehose_publishes),
        messages_delivered: get(&counters.messages),
        stable_messages_expected: get(&world.tally.stable_messages_expected),
        stable_messages_received: get(&counters.stable_messages),
        directs_sent: get(&world.tally.directs_sent),
        directs_received: get(&counters.directs),
        presence_frames: get(&counters.presence_frames),
        connects: get(&world.tally.connects),
        graceful_closes: get(&world.tally.graceful_closes),
        abrupt_drops: get(&world.tally.abrupt_drops),
        joins: get(&world.tally.joins),
        leaves: get(&world.tally.leaves),
        slow: world.slow.summary(),
        error_frames: get(&counters.error_frames),
        unexpected_closes: get(&counters.unexpected_closes),
        timeouts: get(&counters.timeouts),
        connect_failures: get(&world.tally.connect_failures),
        procs,
        examples: {
            examples.extend(counters.anomaly_examples());
            examples
        },
        samples,
        failures: Vec::new(),
    };
    report.failures = failures(&report);
    Ok(report)
}

/// The reasons a soak fails: a wrong roster, a lost or duplicated delivery to a well-behaved
/// peer, a server error on a valid request, or memory/descriptors drifting after warm-up.
fn failures(r: &SoakReport) -> Vec<String> {
    let mut out = Vec::new();
    if r.wrong_rosters > 0 {
        out.push(format!("{} wrong rosters", r.wrong_rosters));
    }
    if r.rosters_compared == 0 {
        out.push("no roster was compared".into());
    }
    if r.messages_missing() != 0 {
        out.push(format!("{} messages missing", r.messages_missing()));
    }
    if r.directs_missing() != 0 {
        out.push(format!("{} directs missing", r.directs_missing()));
    }
    let errors = r.error_frames + r.unexpected_closes + r.timeouts;
    if errors > 0 {
        out.push(format!("{errors} errors"));
    }
    for p in &r.procs {
        if !p.flat() {
            out.push(format!(
                "{} anonymous memory or fds beyond the bound",
                p.process
            ));
        }
    }
    out
}
