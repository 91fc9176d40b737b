//! The chat workload: what presence & chat traffic looks like, at a fixed offered load.
//!
//! - N member connections in rooms of 5–50 (sizes drawn from a Zipf law over 5..=50, so most
//!   rooms are small and a few are large); each member is in one room, with presence.
//! - Every member sends a chat message every `chat_secs` and a typing indicator every
//!   `typing_secs` (random phases), to its room.
//! - Directs between random pairs at `directs_per_sec` in total.
//! - Presence churn: `churners` extra connections join a random room with presence and leave
//!   again, at `churn_per_sec` cycles in total.
//!
//! Each protocol's nearest equivalent:
//! - Herald: `publish` to the room (chat and typing), `send` to the peer id (directs),
//!   presence subscriptions (the members see the churners' joins and leaves).
//! - Socket.IO: the reference server's `publish` (room emit), `send` (`io.to(socketId)`),
//!   `subscribe` with presence (its join/leave events).
//! - Pusher (Sockudo): rooms are presence channels; a chat message is an events-API publish (as
//!   an app backend would, with the sender's socket id excluded), sent over a few keep-alive
//!   connections; typing is a `client-typing` client event from the member's socket; a direct
//!   is an events-API publish to the receiver's `private-inbox-<socket id>` channel.
//!
//! Latency is publish → receipt for every delivered chat message, typing indicator and direct.
//! One generator thread drives every member from one timer heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::procstat::{CpuSampler, CpuUse};
use crate::proto::{classify, Client, Inbound, Proto, Sender, Target};
use crate::scenarios::{
    count_http_acks, new_histogram, now_ns, payload, progress, record, Latency,
};
use crate::ws::{Frame, WsReader};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatOpts {
    pub connections: usize,
    pub duration_secs: f64,
    pub chat_secs: f64,
    pub typing_secs: f64,
    pub directs_per_sec: f64,
    pub churners: usize,
    pub churn_per_sec: f64,
    pub min_room: usize,
    pub max_room: usize,
    /// Zipf exponent over room sizes (rank 1 = the smallest room).
    pub zipf: f64,
    pub chat_bytes: usize,
    pub seed: u64,
}

impl ChatOpts {
    pub fn standard(connections: usize) -> ChatOpts {
        ChatOpts {
            connections,
            duration_secs: 10.0,
            chat_secs: 5.0,
            typing_secs: 3.0,
            directs_per_sec: connections as f64 / 50.0,
            churners: 20,
            churn_per_sec: 50.0,
            min_room: 5,
            max_room: 50,
            zipf: 1.0,
            chat_bytes: 120,
            seed: 18,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatResult {
    pub opts: ChatOpts,
    pub rooms: usize,
    pub members_connected: usize,
    pub connect_failures: usize,
    pub chat_sent: u64,
    pub typing_sent: u64,
    pub directs_sent: u64,
    pub expected: u64,
    pub delivered: u64,
    pub missing: u64,
    pub churn_cycles: u64,
    /// Chat, typing and directs together.
    pub latency: Latency,
    pub direct_latency: Latency,
    pub offered_deliveries_per_sec: f64,
    pub deliveries_per_sec: f64,
    pub server_cpu_us_per_delivery: f64,
    pub rss_kb: u64,
    pub cpu: CpuUse,
}

/// A small deterministic generator (xorshift64*), so every server gets the same rooms.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Room sizes (Zipf over min..=max) until `members` are placed; the last room takes the rest
/// (merged into the previous one when it would be below the minimum).
pub fn room_sizes(members: usize, opts: &ChatOpts, rng: &mut u64) -> Vec<usize> {
    let mut r = Rng(*rng | 1);
    let sizes: Vec<usize> = (opts.min_room..=opts.max_room).collect();
    let weights: Vec<f64> = (1..=sizes.len())
        .map(|rank| 1.0 / (rank as f64).powf(opts.zipf))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut out = Vec::new();
    let mut left = members;
    while left > 0 {
        let mut u = r.unit() * total;
        let mut size = sizes[sizes.len() - 1];
        for (s, w) in sizes.iter().zip(&weights) {
            if u < *w {
                size = *s;
                break;
            }
            u -= w;
        }
        let size = size.min(left);
        if size < opts.min_room && !out.is_empty() {
            if let Some(last) = out.last_mut() {
                *last += size;
            }
        } else {
            out.push(size);
        }
        left -= size;
    }
    *rng = r.0;
    out
}

fn room_channel(proto: Proto, room: usize) -> String {
    match proto {
        Proto::Pusher => format!("presence-chat-room-{room}"),
        _ => format!("chat/room-{room}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Chat,
    Typing,
}

struct Counters {
    delivered: AtomicU64,
}

/// Reads one member until `stop`, recording every chat, typing and direct; asks the driver for
/// a pong (it owns the write sides) when the server pings.
async fn member_reader(
    mut rd: WsReader,
    proto: Proto,
    index: usize,
    counters: Arc<Counters>,
    pongs: mpsc::UnboundedSender<usize>,
    mut stop: watch::Receiver<bool>,
) -> (Histogram<u64>, Histogram<u64>) {
    let mut all = new_histogram();
    let mut directs = new_histogram();
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            frame = rd.next() => frame,
        };
        match frame {
            Ok(Frame::Data(range)) => match classify(proto, rd.payload(&range)) {
                Inbound::Message(Some(t)) => {
                    record(&mut all, t);
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Inbound::Direct(Some(t)) => {
                    record(&mut all, t);
                    record(&mut directs, t);
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Inbound::Ping => {
                    let _ = pongs.send(index);
                }
                _ => {}
            },
            Ok(Frame::Control) => {}
            Ok(Frame::Closed) | Err(_) => break,
        }
    }
    (all, directs)
}

/// Connects member `index`, subscribes it to its room with presence and (Pusher) to its inbox.
async fn connect_member(target: &Target, index: usize, room: usize) -> std::io::Result<Client> {
    let mut c = Client::connect(target, index, true).await?;
    let id =
        c.tx.queue_subscribe(&room_channel(target.proto, room), true);
    c.await_ack(id).await?;
    c.open_inbox().await?;
    Ok(c)
}

pub async fn chat(target: &Target, opts: &ChatOpts) -> anyhow::Result<ChatResult> {
    let mut seed = opts.seed.max(1);
    let sizes = room_sizes(opts.connections, opts, &mut seed);
    let mut room_of = Vec::with_capacity(opts.connections);
    for (room, size) in sizes.iter().enumerate() {
        room_of.extend(std::iter::repeat_n(room, *size));
    }
    progress(format!(
        "{} chat: {} members in {} rooms (sizes {}–{}), connecting",
        target.proto.name(),
        opts.connections,
        sizes.len(),
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0)
    ));
    // Connect every member (bounded concurrency), in index order.
    let gate = Arc::new(Semaphore::new(256));
    let mut set = JoinSet::new();
    for (i, &room) in room_of.iter().enumerate() {
        let target = target.clone();
        let gate = gate.clone();
        set.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let c = tokio::time::timeout(Duration::from_secs(30), connect_member(&target, i, room))
                .await;
            (i, c)
        });
    }
    let mut slots: Vec<Option<Client>> = (0..room_of.len()).map(|_| None).collect();
    let mut connect_failures = 0;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, Ok(Ok(c)))) => slots[i] = Some(c),
            Ok((_, Ok(Err(err)))) => {
                if connect_failures < 3 {
                    progress(format!("chat: connect failed: {err}"));
                }
                connect_failures += 1;
            }
            _ => connect_failures += 1,
        }
    }
    anyhow::ensure!(
        connect_failures == 0,
        "chat: {connect_failures} members failed to connect"
    );
    let clients: Vec<Client> = slots.into_iter().flatten().collect();
    let mut room_members: Vec<Vec<usize>> = vec![Vec::new(); sizes.len()];
    for (i, &room) in room_of.iter().enumerate() {
        room_members[room].push(i);
    }
    // Pusher: the app backend's events-API clients for chat messages and directs, 4 requests
    // in flight each (chat messages to different rooms need no order between them).
    let acked = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut backend = Vec::new();
    if target.proto == Proto::Pusher {
        for b in 0..4 {
            let (rd, wr) = crate::pusher::http_connect_lanes(target.addr(b), 4).await?;
            tokio::spawn(count_http_acks(rd, acked.clone(), stop_rx.clone()));
            backend.push(wr);
        }
    }
    let counters = Arc::new(Counters {
        delivered: AtomicU64::new(0),
    });
    let (pong_tx, mut pong_rx) = mpsc::unbounded_channel();
    let mut readers = JoinSet::new();
    let mut senders: Vec<Sender> = Vec::with_capacity(clients.len());
    let mut peer_ids = Vec::with_capacity(clients.len());
    for (i, c) in clients.into_iter().enumerate() {
        let Client {
            proto,
            rd,
            tx,
            peer_id,
        } = c;
        readers.spawn(member_reader(
            rd,
            proto,
            i,
            counters.clone(),
            pong_tx.clone(),
            stop_rx.clone(),
        ));
        senders.push(tx);
        peer_ids.push(peer_id);
    }
    // Churners: connect now, churn during the run.
    let (churners, f, _) =
        crate::scenarios::connect_many(target, opts.churners, opts.connections, 32, true, None)
            .await;
    anyhow::ensure!(f == 0, "chat: {f} churners failed to connect");
    let churn_cycles = Arc::new(AtomicU64::new(0));

    let members = senders.len();
    let mut rng = Rng(seed | 1);
    let mut heap: BinaryHeap<Reverse<(u64, Kind, usize)>> = BinaryHeap::new();
    let chat_ns = (opts.chat_secs * 1e9) as u64;
    let typing_ns = (opts.typing_secs * 1e9) as u64;
    let start_ns = now_ns();
    for i in 0..members {
        heap.push(Reverse((
            start_ns + (rng.unit() * chat_ns as f64) as u64,
            Kind::Chat,
            i,
        )));
        heap.push(Reverse((
            start_ns + (rng.unit() * typing_ns as f64) as u64,
            Kind::Typing,
            i,
        )));
    }
    progress(format!(
        "{} chat: {} members, {} churners connected; running {:.0} s",
        target.proto.name(),
        members,
        opts.churners,
        opts.duration_secs
    ));
    let cpu = CpuSampler::start(&target.pids);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(opts.duration_secs);
    let end_ns = start_ns + (opts.duration_secs * 1e9) as u64;

    let mut churn_tasks = JoinSet::new();
    let per_churner = opts.churn_per_sec / opts.churners.max(1) as f64;
    for (k, mut c) in churners.into_iter().enumerate() {
        let proto = target.proto;
        let rooms = sizes.len();
        let cycles = churn_cycles.clone();
        let mut r = Rng(seed ^ (k as u64 + 1).wrapping_mul(0x9e37_79b9));
        churn_tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let due = (started.elapsed().as_secs_f64() * per_churner) as u64;
                if due <= done {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let room = room_channel(proto, r.below(rooms));
                let id = c.tx.queue_subscribe(&room, true);
                if c.await_ack(id).await.is_err() {
                    break;
                }
                let id = c.tx.queue_unsubscribe(&room, true);
                if c.await_ack(id).await.is_err() {
                    break;
                }
                done += 1;
                cycles.fetch_add(1, Ordering::Relaxed);
            }
            c
        });
    }

    let mut frame = Vec::with_capacity(512);
    let mut data = Vec::with_capacity(256);
    let (mut chat_sent, mut typing_sent, mut directs_sent) = (0u64, 0u64, 0u64);
    let mut expected = 0u64;
    let mut dirty = vec![false; members];
    let mut dirty_list: Vec<usize> = Vec::new();
    let mut next_backend = 0usize;
    loop {
        let now = now_ns();
        if now >= end_ns {
            break;
        }
        while let Some(Reverse((at, kind, i))) = heap.peek().copied() {
            if at > now {
                break;
            }
            heap.pop();
            let room = room_of[i];
            let channel = room_channel(target.proto, room);
            let fan = room_members[room].len() as u64 - 1;
            match kind {
                Kind::Chat => {
                    payload(&mut data, opts.chat_bytes);
                    if target.proto == Proto::Pusher {
                        let b = next_backend % backend.len();
                        next_backend += 1;
                        backend[b].queue_event(&channel, "message", &data, Some(&peer_ids[i]));
                    } else {
                        senders[i].queue_publish(&mut frame, &channel, &data);
                    }
                    chat_sent += 1;
                    heap.push(Reverse((at + chat_ns, Kind::Chat, i)));
                }
                Kind::Typing => {
                    payload(&mut data, 40);
                    senders[i].queue_client_event(&mut frame, &channel, "typing", &data);
                    typing_sent += 1;
                    heap.push(Reverse((at + typing_ns, Kind::Typing, i)));
                }
            }
            expected += fan;
            if !dirty[i] {
                dirty[i] = true;
                dirty_list.push(i);
            }
        }
        let due_directs = ((now - start_ns) as f64 / 1e9 * opts.directs_per_sec) as u64;
        while directs_sent < due_directs && members > 1 {
            let a = rng.below(members);
            let mut b = rng.below(members - 1);
            if b >= a {
                b += 1;
            }
            payload(&mut data, 64);
            if target.proto == Proto::Pusher {
                let k = next_backend % backend.len();
                next_backend += 1;
                backend[k].queue_event(&crate::pusher::inbox(&peer_ids[b]), "direct", &data, None);
            } else {
                let to = peer_ids[b].clone();
                senders[a].queue_send(&mut frame, &to, &data);
                if !dirty[a] {
                    dirty[a] = true;
                    dirty_list.push(a);
                }
            }
            directs_sent += 1;
            expected += 1;
        }
        while let Ok(i) = pong_rx.try_recv() {
            senders[i].queue_pong();
            if !dirty[i] {
                dirty[i] = true;
                dirty_list.push(i);
            }
        }
        for i in dirty_list.drain(..) {
            dirty[i] = false;
            let _ = senders[i].flush().await;
        }
        for b in &mut backend {
            let _ = b.flush().await;
        }
        if started.elapsed() >= Duration::from_secs_f64(opts.duration_secs) {
            break;
        }
        // Wake for the next event, at most 1 ms away (directs are paced by the clock).
        let next = heap
            .peek()
            .map_or(u64::MAX, |Reverse((at, _, _))| *at)
            .min(now_ns() + 1_000_000);
        let wait = next.saturating_sub(now_ns());
        if wait > 0 {
            tokio::time::sleep(Duration::from_nanos(wait)).await;
        }
    }
    let mut churn_back = Vec::new();
    while let Some(done) = churn_tasks.join_next().await {
        if let Ok(c) = done {
            churn_back.push(c);
        }
    }
    // Drain: until everything expected arrived or nothing moved for 1.5 s (at most 5 s).
    let drain_started = Instant::now();
    let mut last = counters.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while counters.delivered.load(Ordering::Relaxed) < expected
        && drain_started.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = counters.delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    let rss_kb = crate::procstat::rss_kb(&target.pids);
    let delivered = counters.delivered.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let mut all = new_histogram();
    let mut directs = new_histogram();
    while let Some(done) = readers.join_next().await {
        if let Ok((a, d)) = done {
            let _ = all.add(&a);
            let _ = directs.add(&d);
        }
    }
    for s in senders {
        s.wr.close().await;
    }
    for c in churn_back {
        c.close().await;
    }
    let result = ChatResult {
        opts: opts.clone(),
        rooms: sizes.len(),
        members_connected: members,
        connect_failures,
        chat_sent,
        typing_sent,
        directs_sent,
        expected,
        delivered,
        missing: expected.saturating_sub(delivered),
        churn_cycles: churn_cycles.load(Ordering::Relaxed),
        latency: Latency::from(&all),
        direct_latency: Latency::from(&directs),
        offered_deliveries_per_sec: expected as f64 / opts.duration_secs,
        deliveries_per_sec: delivered as f64 / wall,
        server_cpu_us_per_delivery: cpu.server_cpu_secs * 1e6 / delivered.max(1) as f64,
        rss_kb,
        cpu,
    };
    progress(format!(
        "{} chat N={}: {:.0} deliveries/s, p50 {:.0} µs p99 {:.0} µs p999 {:.0} µs, missing {} of {}, server {:.2} µs CPU/delivery, RSS {} MB, churn {} cycles, generator CPU {:.0} %",
        target.proto.name(),
        members,
        result.deliveries_per_sec,
        result.latency.p50_us,
        result.latency.p99_us,
        result.latency.p999_us,
        result.missing,
        result.expected,
        result.server_cpu_us_per_delivery,
        rss_kb / 1024,
        result.churn_cycles,
        result.cpu.bench_util * 100.0
    ));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_follow_the_bounds_and_place_everyone() {
        let opts = ChatOpts::standard(5000);
        let mut seed = 18;
        let sizes = room_sizes(5000, &opts, &mut seed);
        assert_eq!(sizes.iter().sum::<usize>(), 5000);
        assert!(sizes.iter().all(|s| *s >= 5));
        // All but a merged last room stay within 5..=50.
        assert!(sizes[..sizes.len() - 1].iter().all(|s| *s <= 50));
        // Zipf: small rooms are the most common.
        let small = sizes.iter().filter(|s| **s <= 10).count();
        let large = sizes.iter().filter(|s| **s >= 40).count();
        assert!(small > 3 * large, "small {small}, large {large}");
    }
}
