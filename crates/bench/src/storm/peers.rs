//! The three kinds of peer in a presence storm: members that watch the room for the whole run,
//! churners that join and leave during the storm, and samplers that time a new subscriber's
//! snapshot.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use super::roster::{self, Ids, Occupancy, Roster};
use crate::proto::{classify, Client, Inbound};
use crate::token::SigningKey;
use crate::ws::Frame;

/// What every peer needs to connect.
#[derive(Clone)]
pub struct Dial {
    pub addr: SocketAddr,
    pub key: SigningKey,
    pub channel: String,
    pub ids: Ids,
    pub metadata_bytes: usize,
}

impl Dial {
    /// Connects as `sub` (with a `peerMetadata` of about `metadata_bytes`, none if 0).
    pub async fn connect(
        &self,
        sub: &str,
        index: usize,
        presence: bool,
    ) -> std::io::Result<Client> {
        let meta = (self.metadata_bytes > 0).then(|| metadata(sub, self.metadata_bytes));
        let token = self.key.token(sub, meta.as_deref(), presence);
        Client::connect_herald(self.addr, &format!("/v1?token={token}"), index).await
    }
}

/// `{"name":"<sub>","p":"xx…"}` padded to about `size` bytes.
fn metadata(sub: &str, size: usize) -> String {
    let mut m = format!(r#"{{"name":"{sub}","p":""#);
    while m.len() + 2 < size {
        m.push('x');
    }
    m.push_str("\"}");
    m
}

/// A member's state as the coordinator sees it.
pub const CONNECTING: u8 = 0;
pub const WATCHING: u8 = 1;
pub const FAILED: u8 = 2;
pub const CLOSED: u8 = 3;

/// Counters a watcher publishes while it runs (written by its task only).
#[derive(Default)]
pub struct WatcherShared {
    pub state: AtomicU8,
    /// Every byte read from its socket.
    pub bytes: AtomicU64,
    pub frames: AtomicU64,
    pub presence_frames: AtomicU64,
    /// `joined`/`left` entries received.
    pub entries: AtomicU64,
    /// Entries about churners (their joins and leaves).
    pub churn_events: AtomicU64,
    pub occupancy_frames: AtomicU64,
    /// Members in its roster now.
    pub roster: AtomicU64,
}

/// What a watcher reports when the run stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WatcherEnd {
    /// It subscribed (a member that failed to connect is no watcher).
    pub watched: bool,
    /// The server closed it (with this close code, 0 = none) before the end.
    pub closed_by_server: Option<u16>,
    pub missing: u64,
    pub extra: u64,
    pub duplicate_joins: u64,
    pub absent_lefts: u64,
    pub foreign: u64,
    pub last_occupancy: Option<u64>,
    pub unknown_occupancy: bool,
}

/// Shared clock for "the last byte any watcher received", in ns since `epoch`.
pub struct LastRx {
    pub epoch: Instant,
    pub ns: AtomicU64,
}

impl LastRx {
    pub fn mark(&self) {
        self.ns
            .store(self.epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn at(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.ns.load(Ordering::Relaxed))
    }
}

/// One member: connects, subscribes with presence, then keeps its roster until `stop` carries
/// the true membership, and compares. It hands its connection back open: the coordinator
/// closes the members only once every watcher has compared. A member that closed as soon as it
/// had compared would leave while other watchers still read, and a watcher reading a frame
/// past the stop (it can, under load) would count that `left` against a truth that still has
/// the member: every watcher but one then missed the first member to close.
pub async fn member(
    dial: Dial,
    i: usize,
    presence: bool,
    gate: Arc<Semaphore>,
    shared: Arc<Vec<WatcherShared>>,
    last_rx: Arc<LastRx>,
    mut stop: watch::Receiver<Option<Arc<Roster>>>,
) -> (WatcherEnd, Option<Client>) {
    let me = &shared[i];
    let permit = gate.acquire().await;
    let subscribed = async {
        let mut c = dial.connect(&Ids::member(i), i, presence).await?;
        let id = c.tx.queue_subscribe(&dial.channel, presence);
        c.await_ack(id).await?;
        std::io::Result::Ok(c)
    };
    let mut client = match tokio::time::timeout(Duration::from_secs(30), subscribed).await {
        Ok(Ok(c)) => c,
        _ => {
            me.state.store(FAILED, Ordering::Relaxed);
            return (WatcherEnd::default(), None);
        }
    };
    drop(permit);
    me.state.store(WATCHING, Ordering::Relaxed);
    let mut roster = Roster::new(dial.ids.total());
    let mut end = WatcherEnd {
        watched: presence,
        ..WatcherEnd::default()
    };
    let (mut frames, mut presence, mut entries, mut churn, mut occ) = (0u64, 0u64, 0, 0, 0);
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.changed() => break,
            frame = client.rd.next() => frame,
        };
        match frame {
            Ok(Frame::Data(range)) => {
                frames += 1;
                let p = client.rd.payload(&range);
                if roster::is_presence(p) {
                    presence += 1;
                    let ids = &dial.ids;
                    let o = roster::parse(p, |joined, id| {
                        let index = ids.index(id);
                        entries += 1;
                        if index.is_some_and(|x| ids.is_churner(x)) {
                            churn += 1;
                        }
                        roster.apply(joined, index);
                    });
                    match o {
                        Occupancy::Absent => {}
                        Occupancy::Count(n) => {
                            occ += 1;
                            end.last_occupancy = Some(n);
                        }
                        Occupancy::Unknown => {
                            occ += 1;
                            end.unknown_occupancy = true;
                        }
                    }
                    me.presence_frames.store(presence, Ordering::Relaxed);
                    me.entries.store(entries, Ordering::Relaxed);
                    me.churn_events.store(churn, Ordering::Relaxed);
                    me.occupancy_frames.store(occ, Ordering::Relaxed);
                    me.roster.store(roster.count as u64, Ordering::Relaxed);
                }
                me.frames.store(frames, Ordering::Relaxed);
            }
            Ok(Frame::Control) => {
                if let Some(ping) = client.rd.take_ping() {
                    client.tx.wr.queue_pong(&ping);
                    let _ = client.tx.wr.flush().await;
                }
            }
            Ok(Frame::Closed) | Err(_) => {
                end.closed_by_server = Some(client.rd.close_code().unwrap_or(0));
                me.state.store(CLOSED, Ordering::Relaxed);
                break;
            }
        }
        me.bytes.store(client.rd.bytes_read(), Ordering::Relaxed);
        if !client.rd.has_buffered() {
            last_rx.mark();
        }
    }
    // The coordinator sends the truth once every watcher is quiet.
    let truth = loop {
        if let Some(t) = stop.borrow_and_update().clone() {
            break Some(t);
        }
        if stop.changed().await.is_err() {
            break None;
        }
    };
    if let (Some(truth), None) = (truth, end.closed_by_server) {
        let (mut missing, extra) = roster.diff(&truth);
        // A watcher is not in its own roster.
        if truth.contains(i) && !roster.contains(i) {
            missing -= 1;
        }
        end.missing = missing;
        end.extra = extra;
    }
    end.duplicate_joins = roster.duplicate_joins;
    end.absent_lefts = roster.absent_lefts;
    end.foreign = roster.foreign;
    (end, Some(client))
}

/// What one churner did.
#[derive(Debug, Clone, Default)]
pub struct ChurnEnd {
    pub joined: bool,
    /// Subscribe sent → ack, ns.
    pub ack_ns: u64,
    /// When its subscribe was acked, relative to the storm's start, ns.
    pub acked_at_ns: u64,
    pub bytes: u64,
    pub closed_by_server: bool,
}

/// One churner: connects and subscribes now, reads what it is sent, closes cleanly at `leave`.
pub async fn churner(
    dial: Dial,
    j: usize,
    presence: bool,
    storm_start: Instant,
    leave: Instant,
) -> ChurnEnd {
    let mut end = ChurnEnd::default();
    let index = dial.ids.members + j;
    let joined = async {
        let mut c = dial.connect(&Ids::churner(j), index, presence).await?;
        let sent = Instant::now();
        let id = c.tx.queue_subscribe(&dial.channel, presence);
        c.await_ack(id).await?;
        std::io::Result::Ok((c, sent.elapsed()))
    };
    let Ok(Ok((mut c, ack))) = tokio::time::timeout(Duration::from_secs(30), joined).await else {
        return end;
    };
    end.joined = true;
    end.ack_ns = ack.as_nanos() as u64;
    end.acked_at_ns = storm_start.elapsed().as_nanos() as u64;
    let deadline = tokio::time::sleep_until(leave.into());
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            frame = c.rd.next() => match frame {
                Ok(Frame::Data(_)) => {}
                Ok(Frame::Control) => {
                    if let Some(ping) = c.rd.take_ping() {
                        c.tx.wr.queue_pong(&ping);
                        let _ = c.tx.wr.flush().await;
                    }
                }
                Ok(Frame::Closed) | Err(_) => {
                    end.closed_by_server = true;
                    break;
                }
            },
        }
    }
    end.bytes = c.rd.bytes_read();
    c.close().await;
    end
}

/// One snapshot sample: what a new subscriber is sent first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SnapshotSample {
    /// Subscribe sent → the first presence frame read in full; `None` if none came in time.
    pub latency_ms: Option<f64>,
    /// Subscribe sent → ack.
    pub ack_ms: Option<f64>,
    /// Payload bytes of that frame.
    pub bytes: usize,
    /// `joined` entries in it.
    pub entries: usize,
    pub occupancy: Option<u64>,
    /// Its first 300 bytes, to show the coordinator the frame's shape.
    pub head: String,
}

/// Connects sampler `s`, subscribes, and times the snapshot; then closes cleanly.
pub async fn sample(dial: &Dial, s: usize, wait: Duration) -> anyhow::Result<SnapshotSample> {
    let index = dial.ids.members + dial.ids.churners + s;
    let mut c = dial.connect(&Ids::sampler(s), index, true).await?;
    let id = c.tx.queue_subscribe(&dial.channel, true);
    let sent = Instant::now();
    c.tx.wr.flush().await?;
    let mut out = SnapshotSample::default();
    let deadline = sent + wait;
    while out.latency_ms.is_none() {
        let frame = match tokio::time::timeout_at(deadline.into(), c.rd.next()).await {
            Ok(f) => f?,
            Err(_) => break,
        };
        let Frame::Data(range) = frame else {
            if matches!(frame, Frame::Closed) {
                anyhow::bail!("sampler closed by the server");
            }
            continue;
        };
        let p = c.rd.payload(&range);
        match classify(crate::proto::Proto::Herald, p) {
            Inbound::Ack(got) if got == id => {
                out.ack_ms = Some(sent.elapsed().as_secs_f64() * 1e3);
            }
            Inbound::Error => {
                anyhow::bail!("subscribe refused: {}", String::from_utf8_lossy(p));
            }
            _ if roster::is_presence(p) => {
                out.latency_ms = Some(sent.elapsed().as_secs_f64() * 1e3);
                out.bytes = p.len();
                let mut entries = 0;
                let o = roster::parse(p, |joined, _| entries += usize::from(joined));
                out.entries = entries;
                if let Occupancy::Count(n) = o {
                    out.occupancy = Some(n);
                }
                out.head = String::from_utf8_lossy(&p[..p.len().min(300)]).into_owned();
            }
            _ => {}
        }
    }
    c.close().await;
    Ok(out)
}
