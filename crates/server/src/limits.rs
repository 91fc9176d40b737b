//! Rate limiting and per-source caps: the per-connection token bucket (4011), the per-source
//! connect-attempt limiter (429) and the per-source cap on concurrent TCP connections.
//!
//! A "source" is an IPv4 address or an IPv6 /64: one IPv6 host is usually given a whole /64, so
//! counting single IPv6 addresses would let it rotate through 2^64 of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Tokio's clock, not std's: outside tests it is the same monotonic clock, and a test can pause
// it and step the bucket's refill and the limiter's windows to the millisecond.
use tokio::time::Instant;

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

    /// Charges work already done on the connection's behalf. The balance may go below zero
    /// (down to minus one burst), so the next frames wait for the refill: later `take`s fail
    /// until it has been paid back.
    pub fn charge(&mut self, tokens: f64) {
        self.tokens = (self.tokens - tokens).max(-self.burst);
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

/// The unit per-source limits count in: an IPv4 address, or the /64 an IPv6 address is in.
/// IPv4-mapped IPv6 addresses (a dual-stack listener) count as the IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(u32),
    V6Prefix(u64),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => SourceKey::V6Prefix((u128::from(v6) >> 64) as u64),
        }
    }
}

/// Loopback clients (local tools, tests, a reverse proxy on the host) may be exempt from the
/// per-source limits. `::ffff:127.0.0.1` is loopback too.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Fixed-window counter of connection attempts per source, checked before the upgrade.
///
/// The table holds the current window only and is replaced wholesale when the window rolls
/// over, so each attempt is O(1) (no sweep). It holds at most `max_entries` sources. When it is
/// full, a source not in it is let through uncounted (fail open): an attacker who controls that
/// many sources can already stay under the per-source limit by spreading attempts, while
/// refusing unknown sources would lock out every new legitimate client for the rest of the
/// window. The per-source connection cap, the HTTP timeouts and `max_connections` still apply.
#[derive(Debug)]
pub struct ConnectLimiter {
    max_attempts: u32,
    window: Duration,
    exempt_loopback: bool,
    max_entries: usize,
    started: Instant,
    table: Mutex<AttemptTable>,
}

#[derive(Debug, Default)]
struct AttemptTable {
    window: u64,
    attempts: HashMap<SourceKey, u32>,
}

/// What [`ConnectLimiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Allowed,
    /// Over the source's limit for this window: answer 429.
    Limited,
    /// The table is full and the source is not in it: let through, uncounted.
    Untracked,
}

impl ConnectLimiter {
    pub fn new(
        max_attempts: u32,
        window: Duration,
        exempt_loopback: bool,
        max_entries: usize,
    ) -> Self {
        ConnectLimiter {
            max_attempts,
            window: window.max(Duration::from_secs(1)),
            exempt_loopback,
            max_entries: max_entries.max(1),
            started: Instant::now(),
            table: Mutex::new(AttemptTable::default()),
        }
    }

    /// Records an attempt; `false` means answer HTTP 429.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        self.check(ip, now) != Attempt::Limited
    }

    /// Records an attempt and says how it was counted.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Attempt {
        if self.max_attempts == 0 || (self.exempt_loopback && is_loopback(ip)) {
            return Attempt::Allowed;
        }
        let window = now.saturating_duration_since(self.started).as_secs() / self.window.as_secs();
        let key = SourceKey::of(ip);
        let mut table = lock(&self.table);
        if table.window != window {
            // A new window: drop the old table in one go (freeing its memory too).
            table.window = window;
            table.attempts = HashMap::new();
        }
        let full = table.attempts.len() >= self.max_entries;
        match table.attempts.get_mut(&key) {
            Some(count) => {
                *count = count.saturating_add(1);
                if *count <= self.max_attempts {
                    Attempt::Allowed
                } else {
                    Attempt::Limited
                }
            }
            None if full => Attempt::Untracked,
            None => {
                table.attempts.insert(key, 1);
                Attempt::Allowed
            }
        }
    }

    /// Sources counted in the current window.
    pub fn tracked_sources(&self) -> usize {
        lock(&self.table).attempts.len()
    }
}

/// The cap on concurrent TCP connections per source, taken at accept and held until the socket
/// closes (upgraded WebSocket sessions included). The table only holds sources with an open
/// connection, so its size is bounded by the open sockets.
#[derive(Debug)]
pub struct ConnectionSlots {
    max_per_source: usize,
    exempt_loopback: bool,
    open: Mutex<HashMap<SourceKey, usize>>,
}

/// One connection's place in its source's count; dropping it gives the place back.
#[derive(Debug)]
pub struct ConnectionSlot {
    slots: Arc<ConnectionSlots>,
    /// `None` for exempt or unlimited connections, which are not counted.
    key: Option<SourceKey>,
}

impl ConnectionSlots {
    /// `max_per_source == 0` means unlimited.
    pub fn new(max_per_source: usize, exempt_loopback: bool) -> Arc<Self> {
        Arc::new(ConnectionSlots {
            max_per_source,
            exempt_loopback,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place for a new connection from `ip`; `None` means the source is at its cap and
    /// the socket must be closed.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        if self.max_per_source == 0 || (self.exempt_loopback && is_loopback(ip)) {
            return Some(ConnectionSlot {
                slots: self.clone(),
                key: None,
            });
        }
        let key = SourceKey::of(ip);
        let mut open = lock(&self.open);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max_per_source {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            slots: self.clone(),
            key: Some(key),
        })
    }

    /// Open connections counted for the source `ip` belongs to.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        lock(&self.open)
            .get(&SourceKey::of(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Sources with at least one counted connection.
    pub fn sources(&self) -> usize {
        lock(&self.open).len()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = lock(&self.slots.open);
        if let Some(count) = open.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn v6(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn v6_bits(text: &str) -> u128 {
        text.parse::<Ipv6Addr>().unwrap().into()
    }

    fn from_bits(bits: u128) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(bits))
    }

    #[test]
    fn charged_work_is_paid_back_before_the_next_frame() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 200.0, t0);
        b.charge(500.0);
        assert!(
            !b.take(t0),
            "a charge beyond the balance leaves nothing to take"
        );
        // The balance was clamped at minus one burst: 2 s of refill brings it back above 1.
        assert!(!b.take(t0 + Duration::from_millis(1_900)));
        assert!(b.take(t0 + Duration::from_millis(2_100)));
    }

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 200.0, t0);
        assert!((0..200).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(20)));
    }

    /// A bucket of `burst` tokens refilling at `per_second`, emptied (by taking or charging)
    /// at the current paused instant.
    fn emptied(per_second: f64, burst: f64, charge: f64) -> TokenBucket {
        let mut b = TokenBucket::new(per_second, burst, Instant::now());
        while b.take(Instant::now()) {}
        b.charge(charge);
        b
    }

    // Each probe below gets its own bucket: a `take` is itself a refill step, so probing one
    // bucket a millisecond early would move its float arithmetic off the exact boundary.

    #[tokio::test(start_paused = true)]
    async fn an_empty_bucket_refills_one_token_per_rate_interval_on_the_clock() {
        // At 100 tokens/s one token takes 10 ms: none a millisecond early, one at 10 ms.
        let (mut early, mut on_time) = (emptied(100.0, 200.0, 0.0), emptied(100.0, 200.0, 0.0));
        tokio::time::advance(Duration::from_millis(9)).await;
        assert!(!early.take(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(on_time.take(Instant::now()));
        assert!(!on_time.take(Instant::now()));
        // A long pause refills up to the burst and no further.
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert!((0..200).all(|_| on_time.take(Instant::now())));
        assert!(!on_time.take(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_charged_bucket_is_back_in_credit_when_the_debt_is_refilled() {
        // Charged 20 at zero, the balance clamps at -5 (minus one burst), not -20, so a token
        // is back after 6 tokens of refill: 600 ms at 10/s, not 2.1 s.
        let (mut early, mut on_time) = (emptied(10.0, 5.0, 20.0), emptied(10.0, 5.0, 20.0));
        tokio::time::advance(Duration::from_millis(599)).await;
        assert!(!early.take(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(on_time.take(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn connect_limiter_windows_roll_over_exactly_on_the_window_length() {
        let l = ConnectLimiter::new(2, Duration::from_secs(60), false, 1000);
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert!(l.allow(ip, Instant::now()) && l.allow(ip, Instant::now()));
        assert!(!l.allow(ip, Instant::now()));
        // Windows count from the limiter's start: the last millisecond of the first one still
        // refuses, the first of the next one admits afresh.
        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert!(!l.allow(ip, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l.allow(ip, Instant::now()) && l.allow(ip, Instant::now()));
        assert!(!l.allow(ip, Instant::now()));
        // Windows are fixed, not sliding: attempts late in one window do not count in the next.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(l.allow(ip, Instant::now()));
        assert_eq!(l.tracked_sources(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_shorter_than_a_second_is_rounded_up_to_one() {
        // `new` clamps the window, so a zero window cannot divide by zero or never limit.
        let l = ConnectLimiter::new(1, Duration::ZERO, false, 1000);
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert!(l.allow(ip, Instant::now()));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!l.allow(ip, Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l.allow(ip, Instant::now()));
    }

    #[test]
    fn connect_limiter_counts_per_ip_and_window() {
        let l = ConnectLimiter::new(2, Duration::from_secs(60), true, 1000);
        let now = Instant::now();
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert!(l.allow(ip, now) && l.allow(ip, now));
        assert!(!l.allow(ip, now));
        assert!(l.allow(IpAddr::from([10, 0, 0, 2]), now));
        assert!(l.allow(ip, now + Duration::from_secs(61)));
        assert!((0..10).all(|_| l.allow(IpAddr::from([127, 0, 0, 1]), now)));
        assert!((0..10).all(|_| l.allow(v6("::ffff:127.0.0.1"), now)));
        assert!((0..10).all(|_| l.allow(v6("::1"), now)));
    }

    #[test]
    fn ipv6_rotation_inside_one_64_hits_one_bucket() {
        let l = ConnectLimiter::new(5, Duration::from_secs(60), true, 1000);
        let now = Instant::now();
        let base = v6_bits("2001:db8:1:2::");
        let allowed = (0..10_000u128)
            .filter(|i| {
                l.allow(
                    from_bits(
                        base | (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & u128::from(u64::MAX)),
                    ),
                    now,
                )
            })
            .count();
        assert_eq!(allowed, 5);
        assert_eq!(l.tracked_sources(), 1);
        // The neighbouring /64 is another source.
        assert!(l.allow(v6("2001:db8:1:3::1"), now));
        // IPv4-mapped addresses count as the IPv4 address.
        let l = ConnectLimiter::new(1, Duration::from_secs(60), true, 1000);
        assert!(l.allow(IpAddr::from([192, 0, 2, 1]), now));
        assert!(!l.allow(v6("::ffff:192.0.2.1"), now));
    }

    #[test]
    fn a_full_table_stays_bounded_and_lets_unknown_sources_through_uncounted() {
        let max_entries = 1000;
        let l = ConnectLimiter::new(2, Duration::from_secs(60), false, max_entries);
        let now = Instant::now();
        for i in 0..100_000u32 {
            l.check(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), now);
        }
        assert_eq!(l.tracked_sources(), max_entries);
        // A tracked source is still limited; an unknown one is let through, uncounted.
        let tracked = IpAddr::from([10, 0, 0, 0]);
        assert_eq!(l.check(tracked, now), Attempt::Allowed);
        assert_eq!(l.check(tracked, now), Attempt::Limited);
        let unknown = IpAddr::from([192, 0, 2, 7]);
        assert_eq!(l.check(unknown, now), Attempt::Untracked);
        assert_eq!(l.tracked_sources(), max_entries);
        // The next window starts from an empty table.
        let later = now + Duration::from_secs(60);
        assert_eq!(l.check(unknown, later), Attempt::Allowed);
        assert_eq!(l.tracked_sources(), 1);
    }

    #[test]
    fn a_flood_of_sources_fills_the_table_once_and_is_let_through_uncounted_after() {
        // 200k distinct sources in one window (past the old 10k sweep threshold, where the old
        // limiter swept the whole map on every attempt). The table stops at its cap; every
        // source past it is answered from one length check, without touching the table. (No
        // wall-clock bound here: speed is measured in benchmarks, not in timed tests.)
        let l = ConnectLimiter::new(60, Duration::from_secs(60), false, 100_000);
        let now = Instant::now();
        let mut untracked = 0;
        for i in 0..200_000u64 {
            let ip = from_bits(u128::from(i) << 64 | 1);
            if l.check(ip, now) == Attempt::Untracked {
                untracked += 1;
            }
        }
        assert_eq!(l.tracked_sources(), 100_000);
        assert_eq!(untracked, 100_000);
    }

    #[test]
    fn connection_slots_cap_each_source_and_give_places_back() {
        let slots = ConnectionSlots::new(3, false);
        let a = IpAddr::from([10, 0, 0, 1]);
        let held: Vec<_> = (0..3).map(|_| slots.try_acquire(a).unwrap()).collect();
        assert!(slots.try_acquire(a).is_none());
        let other = slots.try_acquire(IpAddr::from([10, 0, 0, 2]));
        assert!(other.is_some());
        drop(held);
        assert_eq!(slots.open_from(a), 0);
        assert!(slots.try_acquire(a).is_some());
        drop(other);
        assert_eq!(slots.sources(), 0);
        // IPv6 rotation inside one /64 shares the cap.
        let base = v6_bits("2001:db8::");
        let held: Vec<_> = (1..=3u128)
            .map(|i| slots.try_acquire(from_bits(base | i << 20)).unwrap())
            .collect();
        assert!(slots.try_acquire(from_bits(base | 0xffff)).is_none());
        drop(held);
        // Loopback is exempt only when asked.
        let exempt = ConnectionSlots::new(1, true);
        let lo = IpAddr::from([127, 0, 0, 1]);
        let _kept: Vec<_> = (0..5).map(|_| exempt.try_acquire(lo).unwrap()).collect();
        assert_eq!(exempt.sources(), 0);
    }
}
