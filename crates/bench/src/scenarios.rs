//! The scenarios: fan-out, idle connections, presence churn and direct messages. Each drives a
//! running server over real WebSockets and returns a serializable result.
//!
//! Every run is bounded in time: a scenario stops publishing at its deadline, drains for at most
//! a few seconds and then reports what is still missing instead of waiting for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::procstat::{CpuSampler, CpuUse};
use crate::proto::{classify, push_u64, Client, Inbound, Proto, Target};
use crate::ws::Frame;

/// All timestamps are nanoseconds since this instant; senders and receivers share the process.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

pub(crate) fn now_ns() -> u64 {
    EPOCH.elapsed().as_nanos() as u64
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 100 s in nanoseconds, 3 significant digits.
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

pub(crate) fn record(hist: &mut Histogram<u64>, sent_ns: u64) {
    let latency = now_ns().saturating_sub(sent_ns).max(1_000);
    hist.saturating_record(latency);
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub(crate) fn from(hist: &Histogram<u64>) -> Latency {
        if hist.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            samples: hist.len(),
            p50_us: us(hist.value_at_quantile(0.50)),
            p90_us: us(hist.value_at_quantile(0.90)),
            p99_us: us(hist.value_at_quantile(0.99)),
            p999_us: us(hist.value_at_quantile(0.999)),
            max_us: us(hist.max()),
        }
    }
}

/// A JSON `data` payload of about `size` bytes carrying the send timestamp.
pub(crate) fn payload(buf: &mut Vec<u8>, size: usize) {
    buf.clear();
    buf.extend_from_slice(b"{\"t\":");
    push_u64(buf, now_ns());
    buf.extend_from_slice(b",\"p\":\"");
    while buf.len() + 2 < size {
        buf.push(b'x');
    }
    buf.extend_from_slice(b"\"}");
}

/// Prints a progress line to stderr (the results go to files).
pub fn progress(msg: impl AsRef<str>) {
    eprintln!(
        "[herald-bench +{:>6.1}s] {}",
        EPOCH.elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

/// Connects client `index` (spread over the target's nodes) and optionally subscribes it.
async fn connect_ready(
    target: &Target,
    index: usize,
    presence: bool,
    channel: Option<&str>,
) -> std::io::Result<Client> {
    let mut client = Client::connect(target, index, presence).await?;
    if let Some(channel) = channel {
        let id = client.tx.queue_subscribe(channel, presence);
        client.await_ack(id).await?;
    }
    Ok(client)
}

/// Connects `count` clients with at most `concurrency` handshakes in flight. Returns the clients
/// in index order (failures are dropped and counted) and each handshake's latency.
pub(crate) async fn connect_many(
    target: &Target,
    count: usize,
    offset: usize,
    concurrency: usize,
    presence: bool,
    channel: Option<&str>,
) -> (Vec<Client>, usize, Histogram<u64>) {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..count {
        let target = target.clone();
        let gate = gate.clone();
        let channel = channel.map(str::to_owned);
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let started = now_ns();
            let client = tokio::time::timeout(
                Duration::from_secs(15),
                connect_ready(&target, offset + i, presence, channel.as_deref()),
            )
            .await;
            (i, client, started)
        });
    }
    let mut slots: Vec<Option<Client>> = (0..count).map(|_| None).collect();
    let mut failures = 0;
    let mut hist = new_histogram();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(Ok(client)), started)) => {
                record(&mut hist, started);
                slots[i] = Some(client);
            }
            Ok((_, Ok(Err(err)), _)) => {
                if failures < 3 {
                    progress(format!("connect failed: {err}"));
                }
                failures += 1;
            }
            _ => failures += 1,
        }
    }
    (slots.into_iter().flatten().collect(), failures, hist)
}

/// One subscriber with presence, one publisher (through the events API on Pusher), one
/// message seen: proves the server accepted the bench's credentials and config.
pub async fn probe(target: &Target) -> anyhow::Result<()> {
    let channel = "bench/probe";
    let mut sub = connect_ready(target, 0, true, Some(channel)).await?;
    let mut publisher = Client::connect(target, 1, true).await?;
    let http = publisher.attach_http(target, 1, 1).await?;
    let mut frame = Vec::new();
    let mut data = Vec::new();
    payload(&mut data, 32);
    let wire = match target.proto {
        Proto::Pusher => crate::pusher::channel_name(channel, true),
        _ => channel.to_string(),
    };
    publisher.tx.queue_publish(&mut frame, &wire, &data);
    publisher.tx.flush().await?;
    if let Some(mut http) = http {
        let statuses = http.next_batch().await?;
        anyhow::ensure!(
            statuses.first().is_some_and(|s| (200..300).contains(s)),
            "events API answered {statuses:?}"
        );
    }
    loop {
        match sub.rd.next().await? {
            Frame::Data(range) => match classify(target.proto, sub.rd.payload(&range)) {
                Inbound::Message(Some(_)) => return Ok(()),
                Inbound::Error => anyhow::bail!(
                    "server error: {}",
                    String::from_utf8_lossy(sub.rd.payload(&range))
                ),
                _ => {}
            },
            Frame::Control => {}
            Frame::Closed => anyhow::bail!("closed before the message arrived"),
        }
    }
}

// ---- fan-out ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutOpts {
    pub subscribers: usize,
    pub publishers: usize,
    /// Total publishes per second across publishers; `None` = as fast as the window allows.
    pub rate: Option<f64>,
    pub duration_secs: f64,
    pub payload_bytes: usize,
    /// Max mode: publishes whose deliveries have not all arrived, per publisher.
    pub window: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutResult {
    pub opts: FanoutOpts,
    pub subscribers_connected: usize,
    pub connect_failures: usize,
    pub published: u64,
    pub acked: u64,
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries that had not arrived when the bounded drain ended (lost or still queued).
    pub missing: u64,
    pub offered_deliveries_per_sec: Option<f64>,
    pub deliveries_per_sec: f64,
    pub latency: Latency,
    pub cpu: CpuUse,
    pub server_cpu_us_per_delivery: f64,
}

struct Flow {
    received: AtomicU64,
    progress: Notify,
    stop: AtomicBool,
}

/// Reads one receiver until `stop` fires, recording the latency of every message or direct.
async fn receive(
    mut client: Client,
    flow: Arc<Flow>,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut hist = new_histogram();
    let proto = client.proto;
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            frame = client.rd.next() => frame,
        };
        match frame {
            Ok(Frame::Data(range)) => {
                match classify(proto, client.rd.payload(&range)) {
                    Inbound::Message(Some(t)) | Inbound::Direct(Some(t)) => {
                        record(&mut hist, t);
                        flow.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Inbound::Ping => {
                        client.tx.queue_pong();
                        let _ = client.tx.wr.flush().await;
                    }
                    _ => {}
                }
                if !client.rd.has_buffered() {
                    flow.progress.notify_one();
                }
            }
            Ok(Frame::Control) => {}
            Ok(Frame::Closed) | Err(_) => break,
        }
    }
    client.close().await;
    hist
}

/// Counts acks on a sender's read side until `stop` fires.
async fn count_acks(
    mut rd: crate::ws::WsReader,
    proto: Proto,
    acked: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            frame = rd.next() => frame,
        };
        match frame {
            Ok(Frame::Data(range)) => {
                if let Inbound::Ack(_) = classify(proto, rd.payload(&range)) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Frame::Control) => {}
            Ok(Frame::Closed) | Err(_) => break,
        }
    }
}

/// Counts the 2xx responses of a Pusher events-API connection until `stop` fires.
pub(crate) async fn count_http_acks(
    mut rd: crate::pusher::HttpReader,
    acked: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failed = 0u64;
    loop {
        let batch = tokio::select! {
            biased;
            _ = stop.changed() => break,
            batch = rd.next_batch() => batch,
        };
        match batch {
            Ok(statuses) if !statuses.is_empty() => {
                let ok = statuses.iter().filter(|s| (200..300).contains(*s)).count() as u64;
                acked.fetch_add(ok, Ordering::Relaxed);
                let bad = statuses.len() as u64 - ok;
                if bad > 0 && failed == 0 {
                    progress(format!("events API refused a request (HTTP {statuses:?})"));
                }
                failed += bad;
            }
            _ => break,
        }
    }
}

/// Waits until `done()` or the bounded drain ends (no progress for `idle`, or `max` in total).
async fn drain(received: &AtomicU64, expected: u64, idle: Duration, max: Duration) {
    let started = Instant::now();
    let mut last = received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while received.load(Ordering::Relaxed) < expected && started.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > idle {
            break;
        }
    }
}

/// Events-API requests in flight per Pusher fan-out publisher.
const FANOUT_HTTP_LANES: usize = 16;

pub async fn fanout(target: &Target, opts: &FanoutOpts) -> anyhow::Result<FanoutResult> {
    let channel = "bench/fanout";
    progress(format!(
        "{} fan-out: connecting {} subscribers",
        target.proto.name(),
        opts.subscribers
    ));
    let (subs, connect_failures, _) =
        connect_many(target, opts.subscribers, 0, 64, false, Some(channel)).await;
    let (pubs, pub_failures, _) = connect_many(target, opts.publishers, 0, 8, false, None).await;
    anyhow::ensure!(pub_failures == 0, "publishers failed to connect");
    let fan = subs.len() as u64;
    let flow = Arc::new(Flow {
        received: AtomicU64::new(0),
        progress: Notify::new(),
        stop: AtomicBool::new(false),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = JoinSet::new();
    for client in subs {
        receivers.spawn(receive(client, flow.clone(), stop_rx.clone()));
    }
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let cpu = CpuSampler::start(&target.pids);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(opts.duration_secs);
    let mut senders = JoinSet::new();
    let publishers = pubs.len().max(1);
    for (i, mut client) in pubs.into_iter().enumerate() {
        // Pusher publishes through the events API; its responses are the acks. Sockudo answers
        // a publish only after its fan-out (tens of ms with 1,000 subscribers), so one ordered
        // lane could not offer the curve's rates: fan-out latency is stamped in each payload,
        // so publishes go over unordered lanes.
        if let Some(http) = client.attach_http(target, i, FANOUT_HTTP_LANES).await? {
            tokio::spawn(count_http_acks(http, acked.clone(), stop_rx.clone()));
        }
        // The read side counts acks while the writer runs.
        let Client {
            rd, tx: mut client, ..
        } = client;
        tokio::spawn(count_acks(rd, client.proto, acked.clone(), stop_rx.clone()));
        let flow = flow.clone();
        let sent = sent.clone();
        let opts = opts.clone();
        senders.spawn(async move {
            let mut frame = Vec::with_capacity(256);
            let mut data = Vec::with_capacity(opts.payload_bytes + 32);
            let mut mine: u64 = 0;
            let per_pub_rate = opts.rate.map(|r| r / publishers as f64);
            while Instant::now() < deadline && !flow.stop.load(Ordering::Relaxed) {
                let batch = match per_pub_rate {
                    Some(rate) => {
                        let due = (started.elapsed().as_secs_f64() * rate) as u64;
                        if due <= mine {
                            tokio::time::sleep(Duration::from_micros(500)).await;
                            continue;
                        }
                        (due - mine).min(1024)
                    }
                    None => {
                        let in_flight = sent.load(Ordering::Relaxed) * fan
                            - flow
                                .received
                                .load(Ordering::Relaxed)
                                .min(sent.load(Ordering::Relaxed) * fan);
                        let limit = opts.window * fan * publishers as u64;
                        if in_flight >= limit {
                            let _ = tokio::time::timeout(
                                Duration::from_millis(2),
                                flow.progress.notified(),
                            )
                            .await;
                            continue;
                        }
                        ((limit - in_flight) / fan.max(1)).clamp(1, 64)
                    }
                };
                for _ in 0..batch {
                    payload(&mut data, opts.payload_bytes);
                    client.queue_publish(&mut frame, channel, &data);
                }
                if client.flush().await.is_err() {
                    break;
                }
                mine += batch;
                sent.fetch_add(batch, Ordering::Relaxed);
            }
            client
        });
    }
    let mut publishers_back = Vec::new();
    while let Some(done) = senders.join_next().await {
        if let Ok(client) = done {
            publishers_back.push(client);
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let published = sent.load(Ordering::Relaxed);
    let expected = published * fan;
    drain(
        &flow.received,
        expected,
        Duration::from_millis(1500),
        Duration::from_secs(5),
    )
    .await;
    let wall = started.elapsed();
    let cpu = cpu.finish();
    let delivered = flow.received.load(Ordering::Relaxed);
    flow.stop.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut hist = new_histogram();
    while let Some(done) = receivers.join_next().await {
        if let Ok(h) = done {
            let _ = hist.add(&h);
        }
    }
    for client in publishers_back {
        client.wr.close().await;
    }
    let result = FanoutResult {
        opts: opts.clone(),
        subscribers_connected: fan as usize,
        connect_failures,
        published,
        acked: acked.load(Ordering::Relaxed),
        expected,
        delivered,
        missing: expected.saturating_sub(delivered),
        offered_deliveries_per_sec: opts.rate.map(|r| r * fan as f64),
        deliveries_per_sec: delivered as f64 / wall.as_secs_f64().max(publish_secs),
        latency: Latency::from(&hist),
        server_cpu_us_per_delivery: cpu.server_cpu_secs * 1e6 / (delivered.max(1) as f64),
        cpu,
    };
    progress(format!(
        "{} fan-out S={} P={} rate={}: {:.0} deliveries/s, p99 {:.0} µs, missing {}, server {:.2} µs CPU/delivery, generator CPU {:.0} %",
        target.proto.name(),
        fan,
        opts.publishers,
        opts.rate.map_or("max".to_string(), |r| format!("{r:.0}/s")),
        result.deliveries_per_sec,
        result.latency.p99_us,
        result.missing,
        result.server_cpu_us_per_delivery,
        result.cpu.bench_util * 100.0
    ));
    Ok(result)
}

// ---- direct ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectOpts {
    pub pairs: usize,
    pub duration_secs: f64,
    pub payload_bytes: usize,
    /// Messages in flight (sent, not yet received) per pair.
    pub window: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectResult {
    pub opts: DirectOpts,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub missing: u64,
    pub messages_per_sec: f64,
    pub latency: Latency,
    pub cpu: CpuUse,
    pub server_cpu_us_per_message: f64,
}

pub async fn direct(target: &Target, opts: &DirectOpts) -> anyhow::Result<DirectResult> {
    progress(format!(
        "{} direct: connecting {} pairs",
        target.proto.name(),
        opts.pairs
    ));
    // Sender i on node i, its receiver on node i+1: on a cluster every message crosses nodes.
    let (senders, f1, _) = connect_many(target, opts.pairs, 0, 32, false, None).await;
    let (mut receivers, f2, _) = connect_many(target, opts.pairs, 1, 32, false, None).await;
    anyhow::ensure!(f1 + f2 == 0, "direct: {} connections failed", f1 + f2);
    for r in &mut receivers {
        r.open_inbox().await?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let acked = Arc::new(AtomicU64::new(0));
    let total_sent = Arc::new(AtomicU64::new(0));
    let mut flows = Vec::new();
    let mut readers = JoinSet::new();
    for client in receivers {
        let flow = Arc::new(Flow {
            received: AtomicU64::new(0),
            progress: Notify::new(),
            stop: AtomicBool::new(false),
        });
        flows.push((client.peer_id.clone(), flow.clone()));
        readers.spawn(receive(client, flow, stop_rx.clone()));
    }
    let cpu = CpuSampler::start(&target.pids);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(opts.duration_secs);
    let mut tasks = JoinSet::new();
    for (i, (mut client, (to, flow))) in senders.into_iter().zip(flows.iter().cloned()).enumerate()
    {
        if let Some(http) = client.attach_http(target, i, 1).await? {
            tokio::spawn(count_http_acks(http, acked.clone(), stop_rx.clone()));
        }
        let Client {
            rd, tx: mut client, ..
        } = client;
        tokio::spawn(count_acks(rd, client.proto, acked.clone(), stop_rx.clone()));
        let opts = opts.clone();
        let total_sent = total_sent.clone();
        tasks.spawn(async move {
            let mut frame = Vec::with_capacity(256);
            let mut data = Vec::with_capacity(opts.payload_bytes + 32);
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let in_flight = sent - flow.received.load(Ordering::Relaxed).min(sent);
                if in_flight >= opts.window {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(2), flow.progress.notified())
                            .await;
                    continue;
                }
                let batch = opts.window - in_flight;
                for _ in 0..batch {
                    payload(&mut data, opts.payload_bytes);
                    client.queue_send(&mut frame, &to, &data);
                }
                if client.flush().await.is_err() {
                    break;
                }
                sent += batch;
                total_sent.fetch_add(batch, Ordering::Relaxed);
            }
            client
        });
    }
    let mut back = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(c) = done {
            back.push(c);
        }
    }
    let sent = total_sent.load(Ordering::Relaxed);
    let total = || {
        flows
            .iter()
            .map(|(_, f)| f.received.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let drain_started = Instant::now();
    while total() < sent && drain_started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    let delivered = total();
    let _ = stop_tx.send(true);
    let mut hist = new_histogram();
    while let Some(done) = readers.join_next().await {
        if let Ok(h) = done {
            let _ = hist.add(&h);
        }
    }
    for c in back {
        c.wr.close().await;
    }
    let result = DirectResult {
        opts: opts.clone(),
        sent,
        acked: acked.load(Ordering::Relaxed),
        delivered,
        missing: sent.saturating_sub(delivered),
        messages_per_sec: delivered as f64 / wall,
        latency: Latency::from(&hist),
        server_cpu_us_per_message: cpu.server_cpu_secs * 1e6 / (delivered.max(1) as f64),
        cpu,
    };
    progress(format!(
        "{} direct pairs={}: {:.0} msgs/s, p99 {:.0} µs, missing {}, generator CPU {:.0} %",
        target.proto.name(),
        opts.pairs,
        result.messages_per_sec,
        result.latency.p99_us,
        result.missing,
        result.cpu.bench_util * 100.0
    ));
    Ok(result)
}

// ---- presence churn --------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceOpts {
    pub watchers: usize,
    pub churners: usize,
    pub duration_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceResult {
    pub opts: PresenceOpts,
    pub cycles: u64,
    pub cycles_per_sec: f64,
    /// `joined` deltas the watchers saw, of cycles × watchers expected.
    pub joins_seen: u64,
    pub joins_expected: u64,
    /// From the churner's subscribe to a watcher seeing its `joined`.
    pub join_visible: Latency,
    pub cpu: CpuUse,
}

/// Subscribe times per churner peer id, in order; watchers walk them with their own index.
type JoinLog = Mutex<HashMap<Vec<u8>, Vec<u64>>>;

async fn watch_presence(
    mut client: Client,
    log: Arc<JoinLog>,
    seen: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Histogram<u64> {
    let mut hist = new_histogram();
    let mut next: HashMap<Vec<u8>, usize> = HashMap::new();
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            frame = client.rd.next() => frame,
        };
        match frame {
            Ok(Frame::Data(range)) => match classify(client.proto, client.rd.payload(&range)) {
                Inbound::Presence { joined: Some(_) } => {
                    let payload = client.rd.payload(&range);
                    for peer in crate::proto::joined_peers(client.proto, payload) {
                        let sent_at = {
                            let log = log.lock().unwrap_or_else(|p| p.into_inner());
                            log.get(&peer).map(|times| {
                                let i = next.entry(peer.clone()).or_insert(0);
                                let at = times.get(*i).copied();
                                *i += 1;
                                at
                            })
                        };
                        if let Some(Some(at)) = sent_at {
                            record(&mut hist, at);
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Inbound::Ping => {
                    client.tx.queue_pong();
                    let _ = client.tx.wr.flush().await;
                }
                _ => {}
            },
            Ok(Frame::Control) => {}
            Ok(Frame::Closed) | Err(_) => break,
        }
    }
    client.close().await;
    hist
}

pub async fn presence(target: &Target, opts: &PresenceOpts) -> anyhow::Result<PresenceResult> {
    let channel = "bench/presence";
    progress(format!(
        "{} presence: {} watchers, {} churners",
        target.proto.name(),
        opts.watchers,
        opts.churners
    ));
    let (watchers, f1, _) = connect_many(target, opts.watchers, 0, 32, true, Some(channel)).await;
    let (churners, f2, _) = connect_many(target, opts.churners, 1, 32, true, None).await;
    anyhow::ensure!(f1 + f2 == 0, "presence: {} connections failed", f1 + f2);
    let log: Arc<JoinLog> = Arc::new(Mutex::new(HashMap::new()));
    for c in &churners {
        lock(&log).insert(c.peer_id.as_bytes().to_vec(), Vec::new());
    }
    let seen = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = JoinSet::new();
    let k = watchers.len() as u64;
    for w in watchers {
        readers.spawn(watch_presence(
            w,
            log.clone(),
            seen.clone(),
            stop_rx.clone(),
        ));
    }
    let cycles = Arc::new(AtomicU64::new(0));
    let cpu = CpuSampler::start(&target.pids);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(opts.duration_secs);
    let mut tasks = JoinSet::new();
    for mut c in churners {
        let log = log.clone();
        let cycles = cycles.clone();
        tasks.spawn(async move {
            let key = c.peer_id.as_bytes().to_vec();
            while Instant::now() < deadline {
                if let Some(times) = lock(&log).get_mut(&key) {
                    times.push(now_ns());
                }
                let id = c.tx.queue_subscribe(channel, true);
                if c.await_ack(id).await.is_err() {
                    break;
                }
                let id = c.tx.queue_unsubscribe(channel, true);
                if c.await_ack(id).await.is_err() {
                    break;
                }
                cycles.fetch_add(1, Ordering::Relaxed);
            }
            c
        });
    }
    let mut back = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(c) = done {
            back.push(c);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let total_cycles = cycles.load(Ordering::Relaxed);
    // Every started subscribe produced a join for every watcher.
    let expected = lock(&log).values().map(|v| v.len() as u64).sum::<u64>() * k;
    drain(
        &seen,
        expected,
        Duration::from_millis(1000),
        Duration::from_secs(3),
    )
    .await;
    let cpu = cpu.finish();
    let _ = stop_tx.send(true);
    let mut hist = new_histogram();
    while let Some(done) = readers.join_next().await {
        if let Ok(h) = done {
            let _ = hist.add(&h);
        }
    }
    for c in back {
        c.close().await;
    }
    let result = PresenceResult {
        opts: opts.clone(),
        cycles: total_cycles,
        cycles_per_sec: total_cycles as f64 / secs,
        joins_seen: seen.load(Ordering::Relaxed),
        joins_expected: expected,
        join_visible: Latency::from(&hist),
        cpu,
    };
    progress(format!(
        "{} presence K={} C={}: {:.0} cycles/s, join-visible p99 {:.0} µs, joins seen {}/{}",
        target.proto.name(),
        opts.watchers,
        opts.churners,
        result.cycles_per_sec,
        result.join_visible.p99_us,
        result.joins_seen,
        result.joins_expected
    ));
    Ok(result)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- idle connections ------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionsOpts {
    pub count: usize,
    pub concurrency: usize,
    /// How long the connections are held before RSS is read again.
    pub settle_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionsResult {
    pub opts: ConnectionsOpts,
    pub connected: usize,
    pub failures: usize,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    pub handshake: Latency,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub rss_after_close_kb: u64,
    pub bytes_per_connection: f64,
    pub cpu: CpuUse,
}

pub async fn connections(
    target: &Target,
    opts: &ConnectionsOpts,
) -> anyhow::Result<ConnectionsResult> {
    progress(format!(
        "{} connections: opening {} (concurrency {})",
        target.proto.name(),
        opts.count,
        opts.concurrency
    ));
    let rss_before_kb = crate::procstat::rss_kb(&target.pids);
    let cpu = CpuSampler::start(&target.pids);
    let started = Instant::now();
    let (clients, failures, hist) =
        connect_many(target, opts.count, 0, opts.concurrency, false, None).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    tokio::time::sleep(Duration::from_secs_f64(opts.settle_secs)).await;
    let rss_after_kb = crate::procstat::rss_kb(&target.pids);
    let connected = clients.len();
    let mut closing = JoinSet::new();
    for c in clients {
        closing.spawn(c.close());
    }
    while closing.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs_f64(opts.settle_secs)).await;
    let rss_after_close_kb = crate::procstat::rss_kb(&target.pids);
    let result = ConnectionsResult {
        opts: opts.clone(),
        connected,
        failures,
        connect_secs,
        connects_per_sec: connected as f64 / connect_secs,
        handshake: Latency::from(&hist),
        rss_before_kb,
        rss_after_kb,
        rss_after_close_kb,
        bytes_per_connection: (rss_after_kb.saturating_sub(rss_before_kb) * 1024) as f64
            / connected.max(1) as f64,
        cpu,
    };
    progress(format!(
        "{} connections N={}: {} ok, {} failed, {:.0}/s, RSS {} → {} KB ({:.0} B/conn)",
        target.proto.name(),
        opts.count,
        connected,
        failures,
        result.connects_per_sec,
        rss_before_kb,
        rss_after_kb,
        result.bytes_per_connection
    ));
    Ok(result)
}
