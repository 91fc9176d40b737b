//! `presence-storm`: what presence costs in a big room on one node.
//!
//! M members subscribe to one channel with presence, each with a small `peerMetadata` (tokens
//! signed by the generator, so peer ids are ours: `m<i>`). A few samplers time the snapshot a
//! new subscriber gets. Then J churners join at a fixed rate and leave at the same rate while
//! the members watch. Reported: per-watcher bytes and frames during the storm, server CPU and
//! RSS, and whether every watcher's roster (snapshot + deltas) ends equal to the membership.
//!
//! Presence frames are read generically: several `joined`/`left` entries per frame and an
//! `occupancy` count are both understood, so coalescing and occupancy modes can be compared.

pub mod peers;
pub mod roster;
mod summary;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::procstat::{self, CpuSampler, CpuUse};
use crate::scenarios::{progress, Latency};
use crate::token::SigningKey;
use peers::{ChurnEnd, Dial, LastRx, SnapshotSample, WatcherEnd, WatcherShared};
use roster::{Ids, Roster};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormOpts {
    pub members: usize,
    /// Members that receive presence (the first `watchers`); the others have no `presence`
    /// permission: they are in the roster but are sent no snapshot and no deltas. Building a
    /// room where all M watch costs M²/2 presence deliveries before the storm starts.
    pub watchers: usize,
    pub joins: usize,
    /// Joins per second, and leaves per second after them.
    pub rate: f64,
    pub snapshot_samples: usize,
    /// Whether churners receive presence (a snapshot and deltas) like real members.
    pub churner_presence: bool,
    /// Approximate size of each peer's `peerMetadata` (0 = none).
    pub metadata_bytes: usize,
    /// Member handshakes + subscribes in flight during setup.
    pub connect_concurrency: usize,
    /// Bound on connecting the members and their rosters settling.
    pub setup_timeout_secs: f64,
    /// The storm has ended when no watcher has read anything for this long.
    pub quiet_ms: u64,
    /// Bound on the wait for the storm's traffic after the last churner left.
    pub drain_max_secs: f64,
}

impl StormOpts {
    pub fn standard() -> StormOpts {
        StormOpts {
            members: 10_000,
            watchers: 10_000,
            joins: 1_000,
            rate: 1_000.0,
            snapshot_samples: 5,
            churner_presence: true,
            metadata_bytes: 40,
            connect_concurrency: 512,
            setup_timeout_secs: 90.0,
            quiet_ms: 1_000,
            drain_max_secs: 30.0,
        }
    }

    pub fn smoke() -> StormOpts {
        StormOpts {
            members: 40,
            watchers: 40,
            joins: 20,
            rate: 200.0,
            snapshot_samples: 2,
            setup_timeout_secs: 15.0,
            quiet_ms: 300,
            drain_max_secs: 5.0,
            ..StormOpts::standard()
        }
    }
}

/// The server under test.
#[derive(Debug, Clone)]
pub struct StormTarget {
    pub addr: SocketAddr,
    pub pids: Vec<u32>,
    pub key: SigningKey,
    pub channel: String,
}

/// Median and max over watchers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        Spread {
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StormPhase {
    pub joins_attempted: usize,
    pub joins_acked: usize,
    /// Churners the server closed before they left.
    pub churners_closed_by_server: usize,
    /// First to last join ack.
    pub achieved_join_rate: f64,
    /// Churner subscribe → ack.
    pub join_ack: Latency,
    /// Nominal length: joins then leaves at `rate`.
    pub nominal_secs: f64,
    /// Storm start → the last byte any watcher read.
    pub secs: f64,
    /// Per watcher, between the storm's start and its end.
    pub watcher_bytes: Spread,
    pub watcher_frames: Spread,
    pub watcher_bytes_per_sec: Spread,
    pub watcher_frames_per_sec: Spread,
    pub watcher_presence_frames: Spread,
    /// `joined`/`left` entries per watcher, and per presence frame (above 1: coalesced).
    pub watcher_entries: Spread,
    pub entries_per_presence_frame: f64,
    /// Entries about churners per watcher; without occupancy mode each should see 2 × J.
    pub watcher_churn_events: Spread,
    pub watcher_occupancy_frames: Spread,
    /// Bytes all churners read (their snapshots and deltas).
    pub churner_bytes: u64,
    pub cpu: CpuUse,
    /// Server CPU per churner (its join and its leave), µs.
    pub server_cpu_us_per_join: f64,
    pub rss_peak_kb: u64,
    /// Time the server's and the generator's threads were runnable but not running during the
    /// storm: high values mean other load on the machine, not Herald, set the pace.
    pub server_runqueue_wait_secs: f64,
    pub generator_runqueue_wait_secs: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Completeness {
    /// Members still connected at the end (the true roster).
    pub members_at_end: usize,
    pub watchers_checked: usize,
    pub watchers_exact: usize,
    pub watchers_mismatched: usize,
    /// Roster entries missing or in excess, summed over watchers.
    pub missing_entries: u64,
    pub extra_entries: u64,
    pub duplicate_joins: u64,
    pub absent_lefts: u64,
    pub foreign_entries: u64,
    /// Watchers whose last presence frame carried an occupancy count, and of them those whose
    /// count equals the true number of peers.
    pub watchers_with_occupancy: usize,
    pub occupancy_exact: usize,
    pub unknown_occupancy_shape: usize,
    /// Members closed by the server during the run, by close code (0 = no close frame).
    pub watchers_closed_by_server: Vec<(u16, usize)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormResult {
    pub label: String,
    pub opts: StormOpts,
    pub members_connected: usize,
    pub member_failures: usize,
    pub setup_secs: f64,
    /// Watchers whose roster count was (members subscribed − 1) when the storm began.
    pub setup_converged: usize,
    pub setup_cpu: CpuUse,
    pub snapshots: Vec<SnapshotSample>,
    pub storm: StormPhase,
    pub completeness: Completeness,
    pub rss_before_kb: u64,
    pub rss_members_kb: u64,
    pub rss_after_kb: u64,
}

/// Waits until `done()`, or nothing was read for `quiet`, or `max` passed. Returns `done()`.
async fn settle(last_rx: &LastRx, quiet: Duration, max: Duration, done: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if done() {
            return true;
        }
        let idle = Instant::now().saturating_duration_since(last_rx.at().max(started));
        if idle >= quiet || started.elapsed() >= max {
            return done();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn load(shared: &[WatcherShared], f: impl Fn(&WatcherShared) -> &AtomicU64) -> Vec<u64> {
    shared
        .iter()
        .map(|w| f(w).load(Ordering::Relaxed))
        .collect()
}

pub async fn run(
    label: &str,
    target: &StormTarget,
    opts: &StormOpts,
) -> anyhow::Result<StormResult> {
    anyhow::ensure!(
        opts.members >= 2 && opts.rate > 0.0,
        "need 2+ members and a rate"
    );
    let ids = Ids {
        members: opts.members,
        churners: opts.joins,
        samplers: opts.snapshot_samples,
    };
    let dial = Dial {
        addr: target.addr,
        key: target.key.clone(),
        channel: target.channel.clone(),
        ids,
        metadata_bytes: opts.metadata_bytes,
    };
    let m = opts.members;
    let w = opts.watchers.min(m);
    let rss_before_kb = procstat::rss_kb(&target.pids);
    progress(format!("presence-storm: connecting {m} members"));
    let shared: Arc<Vec<WatcherShared>> =
        Arc::new((0..m).map(|_| WatcherShared::default()).collect());
    let last_rx = Arc::new(LastRx {
        epoch: Instant::now(),
        ns: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel::<Option<Arc<Roster>>>(None);
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let setup_cpu = CpuSampler::start(&target.pids);
    let setup_started = Instant::now();
    let setup_max = Duration::from_secs_f64(opts.setup_timeout_secs);
    let mut members = JoinSet::new();
    // Members without presence first, so the watchers get them in one snapshot each rather
    // than as a delta per member; then the watchers.
    let states = || load_states(&shared);
    for (range, settled) in [(w..m, m - w), (0..w, m)] {
        for i in range {
            members.spawn(peers::member(
                dial.clone(),
                i,
                i < w,
                gate.clone(),
                shared.clone(),
                last_rx.clone(),
                stop_rx.clone(),
            ));
        }
        while states().0 < settled && setup_started.elapsed() < setup_max {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (_, watching, failed) = states();
    progress(format!(
        "presence-storm: {watching} members subscribed, {failed} failed, in {:.1} s; waiting for rosters",
        setup_started.elapsed().as_secs_f64()
    ));
    let want = watching.saturating_sub(1) as u64;
    let watchers = &shared[..w];
    let live = || {
        watchers
            .iter()
            .filter(|s| s.state.load(Ordering::Relaxed) == peers::WATCHING)
            .count()
    };
    let converged = || {
        watchers
            .iter()
            .filter(|s| s.roster.load(Ordering::Relaxed) == want)
            .count()
    };
    let left = setup_max.saturating_sub(setup_started.elapsed());
    settle(&last_rx, Duration::from_secs(2), left, || {
        converged() == live()
    })
    .await;
    let setup_converged = converged();
    let setup_cpu = setup_cpu.finish();
    let setup_secs = setup_started.elapsed().as_secs_f64();
    let rss_members_kb = procstat::rss_kb(&target.pids);
    progress(format!(
        "presence-storm: setup {setup_secs:.1} s, {setup_converged} of {w} watchers' rosters complete, server {:.1} CPU s, RSS {} MB",
        setup_cpu.server_cpu_secs,
        rss_members_kb / 1024
    ));

    let mut snapshots = Vec::new();
    for s in 0..opts.snapshot_samples {
        match peers::sample(&dial, s, Duration::from_secs(10)).await {
            Ok(sample) => snapshots.push(sample),
            Err(err) => progress(format!("snapshot sample {s}: {err}")),
        }
        // Let the watchers absorb the sampler's join and leave before the next one.
        settle(
            &last_rx,
            Duration::from_millis(200),
            Duration::from_secs(10),
            || false,
        )
        .await;
    }
    for s in &snapshots {
        progress(format!(
            "presence-storm: snapshot {:.1} ms, {} bytes, {} entries",
            s.latency_ms.unwrap_or(f64::NAN),
            s.bytes,
            s.entries
        ));
    }

    let storm = storm(&dial, target, opts, &shared[..w], &last_rx).await;

    // The truth: every member still connected, no churner, no sampler.
    let mut truth = Roster::new(ids.total());
    for (i, w) in shared.iter().enumerate() {
        if w.state.load(Ordering::Relaxed) == peers::WATCHING {
            truth.apply(true, Some(i));
        }
    }
    let members_at_end = truth.count;
    let _ = stop_tx.send(Some(Arc::new(truth)));
    let mut ends: Vec<WatcherEnd> = Vec::with_capacity(m);
    let mut open = Vec::with_capacity(m);
    while let Some(done) = members.join_next().await {
        if let Ok((end, client)) = done {
            ends.push(end);
            open.extend(client);
        }
    }
    // Every watcher has compared: only now may members leave (see `peers::member`).
    let mut closing = JoinSet::new();
    for client in open {
        closing.spawn(client.close());
    }
    while closing.join_next().await.is_some() {}
    let completeness = completeness(&ends, members_at_end);
    let rss_after_kb = procstat::rss_kb(&target.pids);
    let result = StormResult {
        label: label.to_string(),
        opts: opts.clone(),
        members_connected: watching,
        member_failures: failed,
        setup_secs,
        setup_converged,
        setup_cpu,
        snapshots,
        storm,
        completeness,
        rss_before_kb,
        rss_members_kb,
        rss_after_kb,
    };
    Ok(result)
}

/// (settled: subscribed or failed, watching, failed)
fn load_states(shared: &[WatcherShared]) -> (usize, usize, usize) {
    let (mut watching, mut failed) = (0, 0);
    for w in shared {
        match w.state.load(Ordering::Relaxed) {
            peers::WATCHING | peers::CLOSED => watching += 1,
            peers::FAILED => failed += 1,
            _ => {}
        }
    }
    (watching + failed, watching, failed)
}

fn completeness(ends: &[WatcherEnd], at_end: usize) -> Completeness {
    let mut c = Completeness {
        members_at_end: at_end,
        ..Completeness::default()
    };
    let mut closed: std::collections::BTreeMap<u16, usize> = Default::default();
    for e in ends {
        c.duplicate_joins += e.duplicate_joins;
        c.absent_lefts += e.absent_lefts;
        c.foreign_entries += e.foreign;
        if let Some(code) = e.closed_by_server {
            *closed.entry(code).or_default() += 1;
            continue;
        }
        if !e.watched {
            continue;
        }
        c.watchers_checked += 1;
        if e.missing == 0 && e.extra == 0 {
            c.watchers_exact += 1;
        } else {
            c.watchers_mismatched += 1;
        }
        c.missing_entries += e.missing;
        c.extra_entries += e.extra;
        if let Some(n) = e.last_occupancy {
            c.watchers_with_occupancy += 1;
            if n as usize == at_end {
                c.occupancy_exact += 1;
            }
        }
        c.unknown_occupancy_shape += usize::from(e.unknown_occupancy);
    }
    c.watchers_closed_by_server = closed.into_iter().collect();
    c
}

/// The storm itself: churners join at `rate`, then leave at `rate`, while the members watch.
async fn storm(
    dial: &Dial,
    target: &StormTarget,
    opts: &StormOpts,
    shared: &[WatcherShared],
    last_rx: &LastRx,
) -> StormPhase {
    let j = opts.joins;
    let watching: Vec<bool> = shared
        .iter()
        .map(|w| w.state.load(Ordering::Relaxed) == peers::WATCHING)
        .collect();
    let counters = |f: fn(&WatcherShared) -> &AtomicU64| load(shared, f);
    let bytes0 = counters(|w| &w.bytes);
    let frames0 = counters(|w| &w.frames);
    let presence0 = counters(|w| &w.presence_frames);
    let entries0 = counters(|w| &w.entries);
    let churn0 = counters(|w| &w.churn_events);
    let occ0 = counters(|w| &w.occupancy_frames);
    progress(format!(
        "presence-storm: {j} churners join at {:.0}/s, then leave",
        opts.rate
    ));
    // RSS peak, sampled every 50 ms while the storm runs.
    let (rss_stop, mut rss_rx) = watch::channel(false);
    let pids = target.pids.clone();
    let rss = tokio::spawn(async move {
        let mut peak = 0;
        loop {
            peak = peak.max(procstat::rss_kb(&pids));
            tokio::select! {
                _ = rss_rx.changed() => break peak,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
    let server_wait = || -> f64 {
        target
            .pids
            .iter()
            .map(|p| procstat::runqueue_wait_secs(&p.to_string()))
            .sum()
    };
    let waits0 = (server_wait(), procstat::runqueue_wait_secs("self"));
    let cpu = CpuSampler::start(&target.pids);
    let start = Instant::now();
    let step = Duration::from_secs_f64(1.0 / opts.rate);
    let leaves_from = start + step * j as u32;
    let mut churners = JoinSet::new();
    for c in 0..j {
        tokio::time::sleep_until((start + step * c as u32).into()).await;
        churners.spawn(peers::churner(
            dial.clone(),
            c,
            opts.churner_presence,
            start,
            leaves_from + step * c as u32,
        ));
    }
    let mut ends: Vec<ChurnEnd> = Vec::with_capacity(j);
    while let Some(done) = churners.join_next().await {
        if let Ok(end) = done {
            ends.push(end);
        }
    }
    let expected = 2 * ends.iter().filter(|e| e.joined).count() as u64;
    let all_seen = || {
        shared
            .iter()
            .zip(&churn0)
            .zip(&watching)
            .filter(|(_, w)| **w)
            .all(|((s, c0), _)| s.churn_events.load(Ordering::Relaxed) - c0 >= expected)
    };
    settle(
        last_rx,
        Duration::from_millis(opts.quiet_ms),
        Duration::from_secs_f64(opts.drain_max_secs),
        all_seen,
    )
    .await;
    let cpu = cpu.finish();
    let waits = (
        server_wait() - waits0.0,
        procstat::runqueue_wait_secs("self") - waits0.1,
    );
    let _ = rss_stop.send(true);
    let rss_peak_kb = rss.await.unwrap_or(0);
    let end = last_rx.at().max(start);
    let secs = end.duration_since(start).as_secs_f64().max(1e-3);
    let delta = |now: Vec<u64>, before: &[u64]| -> Vec<f64> {
        now.iter()
            .zip(before)
            .zip(&watching)
            .filter(|(_, w)| **w)
            .map(|((n, b), _)| n.saturating_sub(*b) as f64)
            .collect()
    };
    let bytes = delta(counters(|w| &w.bytes), &bytes0);
    let frames = delta(counters(|w| &w.frames), &frames0);
    let presence = delta(counters(|w| &w.presence_frames), &presence0);
    let entries = delta(counters(|w| &w.entries), &entries0);
    let per_sec = |v: &[f64]| v.iter().map(|x| x / secs).collect::<Vec<_>>();
    let mut acks = crate::scenarios::new_histogram();
    let mut acked_at: Vec<u64> = Vec::new();
    for e in ends.iter().filter(|e| e.joined) {
        let _ = acks.record(e.ack_ns.max(1_000));
        acked_at.push(e.acked_at_ns);
    }
    acked_at.sort_unstable();
    let achieved_join_rate = match (acked_at.first(), acked_at.last()) {
        (Some(a), Some(b)) if b > a => (acked_at.len() - 1) as f64 / ((b - a) as f64 / 1e9),
        _ => 0.0,
    };
    let (entries_sum, presence_sum) = (entries.iter().sum::<f64>(), presence.iter().sum::<f64>());
    let phase = StormPhase {
        joins_attempted: j,
        joins_acked: acked_at.len(),
        churners_closed_by_server: ends.iter().filter(|e| e.closed_by_server).count(),
        achieved_join_rate,
        join_ack: Latency::from(&acks),
        nominal_secs: 2.0 * j as f64 / opts.rate,
        secs,
        watcher_bytes_per_sec: Spread::of(per_sec(&bytes)),
        watcher_frames_per_sec: Spread::of(per_sec(&frames)),
        watcher_bytes: Spread::of(bytes),
        watcher_frames: Spread::of(frames),
        watcher_presence_frames: Spread::of(presence),
        watcher_entries: Spread::of(entries),
        entries_per_presence_frame: entries_sum / presence_sum.max(1.0),
        watcher_churn_events: Spread::of(delta(counters(|w| &w.churn_events), &churn0)),
        watcher_occupancy_frames: Spread::of(delta(counters(|w| &w.occupancy_frames), &occ0)),
        churner_bytes: ends.iter().map(|e| e.bytes).sum(),
        server_cpu_us_per_join: cpu.server_cpu_secs * 1e6 / (acked_at.len().max(1) as f64),
        cpu,
        rss_peak_kb,
        server_runqueue_wait_secs: waits.0,
        generator_runqueue_wait_secs: waits.1,
    };
    progress(format!(
        "presence-storm: storm {:.2} s (nominal {:.2} s); per watcher {:.0} B/s, {:.0} frames/s (median); server {:.2} CPU s, {:.0} µs per join",
        phase.secs,
        phase.nominal_secs,
        phase.watcher_bytes_per_sec.median,
        phase.watcher_frames_per_sec.median,
        phase.cpu.server_cpu_secs,
        phase.server_cpu_us_per_join
    ));
    phase
}
