//! Rate limiting: the per-connection token bucket (4011) and the per-IP connect limiter (429).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// A token bucket owned by one session task (no sharing, no locking).
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            burst,
            per_second,
            last: now,
        }
    }

    /// Takes one token; `false` means the bucket is empty and the connection must close.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Fixed-window counter of connection attempts per source IP, checked before the upgrade.
#[derive(Debug)]
pub struct ConnectLimiter {
    max_attempts: u32,
    window: Duration,
    exempt_loopback: bool,
    started: Instant,
    /// ip → (window index, attempts in it). Stale entries are pruned when the map grows.
    attempts: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

/// Entries kept before stale windows are swept.
const PRUNE_AT: usize = 10_000;

impl ConnectLimiter {
    pub fn new(max_attempts: u32, window: Duration, exempt_loopback: bool) -> Self {
        ConnectLimiter {
            max_attempts,
            window: window.max(Duration::from_secs(1)),
            exempt_loopback,
            started: Instant::now(),
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Records an attempt; `false` means answer HTTP 429.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_attempts == 0 || (self.exempt_loopback && ip.is_loopback()) {
            return true;
        }
        let window = now.saturating_duration_since(self.started).as_secs() / self.window.as_secs();
        let mut attempts = lock(&self.attempts);
        if attempts.len() >= PRUNE_AT {
            attempts.retain(|_, (w, _)| *w == window);
        }
        let slot = attempts.entry(ip).or_insert((window, 0));
        if slot.0 != window {
            *slot = (window, 0);
        }
        slot.1 += 1;
        slot.1 <= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 200.0, t0);
        assert!((0..200).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(20)));
    }

    #[test]
    fn connect_limiter_counts_per_ip_and_window() {
        let l = ConnectLimiter::new(2, Duration::from_secs(60), true);
        let now = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap_or(IpAddr::from([10, 0, 0, 1]));
        assert!(l.allow(ip, now) && l.allow(ip, now));
        assert!(!l.allow(ip, now));
        assert!(l.allow(IpAddr::from([10, 0, 0, 2]), now));
        assert!(l.allow(ip, now + Duration::from_secs(61)));
        assert!((0..10).all(|_| l.allow(IpAddr::from([127, 0, 0, 1]), now)));
    }
}
