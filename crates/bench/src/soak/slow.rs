//! Slow consumers: connections subscribed to the firehose channel that read for a while, then
//! stop reading for a long stall. The server should close them (as slow consumers) rather than
//! buffer for them without bound; the soak counts how many stalls ended that way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::ws::{self, Frame, WsReader};

use super::client::read_welcome;

/// Reading time before each stall.
const READ_BEFORE_STALL: Duration = Duration::from_secs(2);
/// After a stall, reading this long without seeing a close means the server kept the connection.
const RESUME_WINDOW: Duration = Duration::from_secs(5);
/// A stalled consumer still writes: an application ping this often.
const PING_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct SlowCounters {
    pub stalls: AtomicU64,
    /// Stalls the server ended by closing the connection.
    pub closed_by_server: AtomicU64,
    /// Stalls after which the connection was still open and delivering.
    pub survived: AtomicU64,
    pub connect_failures: AtomicU64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SlowSummary {
    pub stalls: u64,
    pub closed_by_server: u64,
    pub survived: u64,
    pub connect_failures: u64,
}

impl SlowCounters {
    pub fn summary(&self) -> SlowSummary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SlowSummary {
            stalls: get(&self.stalls),
            closed_by_server: get(&self.closed_by_server),
            survived: get(&self.survived),
            connect_failures: get(&self.connect_failures),
        }
    }
}

/// Where and how one slow consumer connects.
pub struct SlowConsumer {
    pub addr: SocketAddr,
    pub key: String,
    pub index: usize,
    pub channel: String,
    pub stall: Duration,
    pub counters: Arc<SlowCounters>,
}

/// Whether a frame arrives that says the connection is over (close frame, EOF or error).
async fn read_until_closed(rd: &mut WsReader, window: Duration) -> bool {
    let reading = async {
        loop {
            match rd.next().await {
                Ok(Frame::Data(_)) | Ok(Frame::Control) => {}
                Ok(Frame::Closed) | Err(_) => return,
            }
        }
    };
    tokio::time::timeout(window, reading).await.is_ok()
}

impl SlowConsumer {
    /// Connect, read, stall, resume, repeat on a new connection, until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let path = format!("/v1?key={}", self.key);
            let connected = match ws::connect_with(self.addr, &path, self.index, true).await {
                Ok((mut rd, wr)) => read_welcome(&mut rd).await.map(|_| (rd, wr)),
                Err(e) => Err(e),
            };
            let Ok((mut rd, mut wr)) = connected else {
                self.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                super::nap(&mut stop, Duration::from_secs(1)).await;
                continue;
            };
            let subscribe = format!(
                r#"{{"type":"subscribe","channel":"{}","requestId":"1"}}"#,
                self.channel
            );
            if wr.send_text(subscribe.as_bytes()).await.is_err()
                || read_until_closed(&mut rd, READ_BEFORE_STALL).await
            {
                self.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                super::nap(&mut stop, Duration::from_secs(1)).await;
                continue;
            }
            // The stall: nothing is read; a ping now and then, as a live but slow client sends.
            self.counters.stalls.fetch_add(1, Ordering::Relaxed);
            let stalled_until = tokio::time::Instant::now() + self.stall;
            while tokio::time::Instant::now() < stalled_until && !*stop.borrow() {
                let left = stalled_until - tokio::time::Instant::now();
                if !super::nap(&mut stop, left.min(PING_EVERY)).await {
                    break;
                }
                // A write that cannot complete (the server stopped reading) is not waited for.
                let ping = wr.send_text(br#"{"type":"ping"}"#);
                let _ = tokio::time::timeout(Duration::from_millis(200), ping).await;
            }
            if *stop.borrow() {
                break;
            }
            if read_until_closed(&mut rd, RESUME_WINDOW).await {
                self.counters
                    .closed_by_server
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                self.counters.survived.fetch_add(1, Ordering::Relaxed);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.close()).await;
            super::nap(&mut stop, Duration::from_millis(500)).await;
        }
    }
}
