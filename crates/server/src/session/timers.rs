//! The session's clocks: when it must close on its own (token expiry, the end of the shutdown
//! drain) and when it pings and gives a silent client up for dead.
//!
//! Both are plain state: they say when they are next due and what is due at a given moment.
//! The session waits for all of them (and the watermark ping) on one `Sleep` set to the
//! earliest, rather than one timer future per clock inside its `select!`: each costs ~100 B
//! per connection, held for the connection's whole life (BENCHMARKS.md). Both read only
//! `tokio::time`, so a paused test clock drives them exactly; the wall clock is read once, by
//! the caller, to turn the token's `exp` into a deadline.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::Timing;

/// Which of the session's own deadlines came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deadline {
    /// The token's `exp` (minus `timing.expiry_lead_ms`) arrived: close with 4002.
    Expired,
    /// Shutdown began and the `going_away` drain is over: close with 1001.
    DrainOver,
}

/// The moments a session ends without anything happening on the socket.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadlines {
    expiry: Option<Instant>,
    drain_over: Option<Instant>,
}

impl Deadlines {
    /// `expires_at` is the token's `exp` (Unix seconds), `now_ms` the wall clock now.
    pub(super) fn new(expires_at: Option<i64>, expiry_lead_ms: u64, now_ms: i64) -> Self {
        Deadlines {
            expiry: expires_at.and_then(|exp| expiry_deadline(exp, expiry_lead_ms, now_ms)),
            drain_over: None,
        }
    }

    /// Shutdown began: the session closes `drain` from now, unless its token expires first.
    pub(super) fn start_drain(&mut self, drain: Duration) {
        self.drain_over = Some(Instant::now() + drain);
    }

    pub(super) fn draining(&self) -> bool {
        self.drain_over.is_some()
    }

    /// The first deadline, if any.
    pub(super) fn next(&self) -> Option<Instant> {
        earliest(self.expiry, self.drain_over)
    }

    /// The deadline that has passed at `now`, if any; expiry wins a tie.
    pub(super) fn due(&self, now: Instant) -> Option<Deadline> {
        if self.expiry.is_some_and(|at| at <= now) {
            Some(Deadline::Expired)
        } else if self.drain_over.is_some_and(|at| at <= now) {
            Some(Deadline::DrainOver)
        } else {
            None
        }
    }
}

/// The earlier of two optional instants.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The `retryAfterMs` a `going_away` advertises: `base` jittered by ±50 %, so clients of a
/// node that shuts down do not all come back in the same millisecond.
pub(super) fn going_away_retry_ms(base: u64) -> u64 {
    let base = base.max(1);
    rand::rng().random_range(base / 2..=base + base / 2)
}

/// What the ping timer says at each tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Beat {
    /// Send a WebSocket ping.
    Ping,
    /// Nothing came in for longer than `ping_interval + pong_grace`: reap the socket.
    Dead,
}

/// The WebSocket-level keepalive: a ping every `ping_interval`, and at each tick the check
/// that the client said anything (a pong counts) within `ping_interval + pong_grace`. A client
/// that falls silent is therefore reaped at the first tick after that span, not at its end.
///
/// Ticks follow `tokio::time::Interval`'s default (burst): a tick that comes late does not move
/// the ones after it.
#[derive(Debug)]
pub(super) struct Liveness {
    next_tick: Instant,
    ping_every: Duration,
    last_seen: Instant,
    dead_after: Duration,
}

impl Liveness {
    pub(super) fn new(timing: &Timing) -> Self {
        let ping_every = Duration::from_secs(timing.ping_interval_secs);
        let now = Instant::now();
        // A zero interval would tick forever without time passing (`Interval` panics on it).
        let ping_every = ping_every.max(Duration::from_millis(1));
        Liveness {
            next_tick: now + ping_every,
            ping_every,
            last_seen: now,
            dead_after: ping_every + Duration::from_secs(timing.pong_grace_secs),
        }
    }

    /// The client sent something (a frame, a ping, a pong, a close): it is alive now.
    pub(super) fn heard(&mut self) {
        self.last_seen = Instant::now();
    }

    /// When the next tick is due.
    pub(super) fn next_tick(&self) -> Instant {
        self.next_tick
    }

    /// The tick due at `now`, if it is; taking it schedules the next one.
    pub(super) fn tick(&mut self, now: Instant) -> Option<Beat> {
        if self.next_tick > now {
            return None;
        }
        self.next_tick += self.ping_every;
        if now.saturating_duration_since(self.last_seen) > self.dead_after {
            Some(Beat::Dead)
        } else {
            Some(Beat::Ping)
        }
    }
}

/// When a token expiring at `exp` (Unix seconds) must be closed, `lead_ms` early. Saturating
/// math: a token with an absurd `exp` (near `i64::MAX`) gets a deadline centuries away, or
/// `None` where the platform's clock cannot represent it, and never an overflow.
fn expiry_deadline(exp: i64, lead_ms: u64, now_ms: i64) -> Option<Instant> {
    let lead_ms = i64::try_from(lead_ms).unwrap_or(i64::MAX);
    let ms_left = exp
        .saturating_mul(1000)
        .saturating_sub(lead_ms)
        .saturating_sub(now_ms);
    let ms_left = u64::try_from(ms_left).unwrap_or(0);
    Instant::now().checked_add(Duration::from_millis(ms_left))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// A fixed wall clock: the tests never read the real one.
    const NOW_MS: i64 = 1_700_000_000_000;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timing(ping_interval_secs: u64, pong_grace_secs: u64) -> Timing {
        Timing {
            ping_interval_secs,
            pong_grace_secs,
            ..Timing::default()
        }
    }

    /// Sleeps until the first deadline (as the session does) and says which one passed.
    async fn fired(deadlines: Deadlines) -> Deadline {
        match deadlines.next() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
        deadlines.due(Instant::now()).unwrap()
    }

    /// Awaits `fired` on the paused clock and says how long after `start` it resolved.
    async fn fires_after(deadlines: &Deadlines, start: Instant) -> (Deadline, Duration) {
        let which = fired(*deadlines).await;
        (which, start.elapsed())
    }

    /// Sleeps until the next tick (as the session does) and takes it.
    async fn beat(liveness: &mut Liveness) -> Beat {
        tokio::time::sleep_until(liveness.next_tick()).await;
        liveness.tick(Instant::now()).unwrap()
    }

    #[test]
    fn an_absurd_exp_never_overflows_and_never_expires() {
        let year = Duration::from_secs(365 * 24 * 3600);
        for (exp, lead) in [(i64::MAX, 5000), (i64::MAX / 1000, 5000), (i64::MAX, 0)] {
            // Far away (or unrepresentable, then no deadline at all), but no overflow.
            let deadline = expiry_deadline(exp, lead, NOW_MS);
            assert!(
                deadline.is_none_or(|at| at > Instant::now() + year),
                "{exp} {lead}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_expires_exactly_the_lead_before_its_exp() {
        let start = Instant::now();
        let exp = NOW_MS / 1000 + 60;
        let deadlines = Deadlines::new(Some(exp), 250, NOW_MS);
        // Not a millisecond early...
        let mut fired = Box::pin(fired(deadlines));
        tokio::time::advance(ms(59_749)).await;
        assert!((&mut fired).now_or_never().is_none());
        // ...and at the deadline.
        tokio::time::advance(ms(1)).await;
        assert_eq!((&mut fired).now_or_never(), Some(Deadline::Expired));
        assert_eq!(start.elapsed(), ms(59_750));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lead_counts_from_the_wall_clock_read_at_connect() {
        // 1.5 s past a whole second: exp is 10 s of wall time away minus those 1.5 s.
        let now_ms = NOW_MS + 1_500;
        let start = Instant::now();
        let deadlines = Deadlines::new(Some(NOW_MS / 1000 + 10), 1_000, now_ms);
        assert_eq!(
            fires_after(&deadlines, start).await,
            (Deadline::Expired, ms(7_500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_already_past_its_exp_or_inside_the_lead_closes_at_once() {
        let start = Instant::now();
        for (exp, lead) in [
            (i64::MIN, 0),
            (NOW_MS / 1000 - 1, 0),
            (NOW_MS / 1000 + 1, 5_000),
        ] {
            let deadlines = Deadlines::new(Some(exp), lead, NOW_MS);
            assert_eq!(
                fires_after(&deadlines, start).await,
                (Deadline::Expired, Duration::ZERO),
                "{exp} {lead}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_exp_or_shutdown_nothing_ever_fires() {
        let deadlines = Deadlines::new(None, 250, NOW_MS);
        let mut fired = Box::pin(fired(deadlines));
        tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert!((&mut fired).now_or_never().is_none());
        assert!(!deadlines.draining());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_ends_its_length_after_shutdown_began() {
        let start = Instant::now();
        let mut deadlines = Deadlines::new(None, 250, NOW_MS);
        tokio::time::advance(ms(10_000)).await;
        deadlines.start_drain(ms(500));
        assert!(deadlines.draining());
        assert_eq!(
            fires_after(&deadlines, start).await,
            (Deadline::DrainOver, ms(10_500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_during_the_drain_still_closes_as_expired() {
        let start = Instant::now();
        let exp = NOW_MS / 1000 + 2;
        let mut deadlines = Deadlines::new(Some(exp), 0, NOW_MS);
        tokio::time::advance(ms(1_800)).await;
        deadlines.start_drain(ms(500));
        assert_eq!(
            fires_after(&deadlines, start).await,
            (Deadline::Expired, ms(2_000))
        );
        // When both fall on the same instant, expiry wins.
        let mut tie = Deadlines::new(Some(exp), 0, NOW_MS);
        let start = Instant::now();
        tie.start_drain(ms(2_000));
        assert_eq!(
            fires_after(&tie, start).await,
            (Deadline::Expired, ms(2_000))
        );
    }

    #[test]
    fn the_going_away_retry_is_jittered_by_half_either_way() {
        for _ in 0..1_000 {
            let retry = going_away_retry_ms(1_000);
            assert!((500..=1_500).contains(&retry), "{retry}");
        }
        // A zero base still advertises a retry, never a division by zero or an empty range.
        assert!((0..=1).contains(&going_away_retry_ms(0)));
    }

    /// Runs `beat` until it says `Dead`; returns when each ping and the reaping happened.
    async fn beats_until_dead(liveness: &mut Liveness, start: Instant) -> Vec<(Beat, Duration)> {
        let mut beats = Vec::new();
        loop {
            let beat = beat(liveness).await;
            beats.push((beat, start.elapsed()));
            if beat == Beat::Dead {
                return beats;
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_then_reaped_at_the_first_tick_past_interval_plus_grace() {
        let start = Instant::now();
        let mut liveness = Liveness::new(&timing(30, 10));
        // Silent for 40 s (interval + grace) is past due at the tick at 60 s, not before.
        assert_eq!(
            beats_until_dead(&mut liveness, start).await,
            [
                (Beat::Ping, Duration::from_secs(30)),
                (Beat::Dead, Duration::from_secs(60))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_of_exactly_interval_plus_grace_is_not_yet_dead() {
        let start = Instant::now();
        let mut liveness = Liveness::new(&timing(10, 10));
        // At 20 s the silence equals the allowed 20 s: pinged again, reaped at 30 s.
        assert_eq!(
            beats_until_dead(&mut liveness, start).await,
            [
                (Beat::Ping, Duration::from_secs(10)),
                (Beat::Ping, Duration::from_secs(20)),
                (Beat::Dead, Duration::from_secs(30))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn anything_heard_from_the_client_moves_the_reaping_back() {
        let start = Instant::now();
        let mut liveness = Liveness::new(&timing(30, 10));
        assert_eq!(beat(&mut liveness).await, Beat::Ping);
        // The pong to the ping at 30 s arrives 5 s later: silence is counted from 35 s, so the
        // tick at 60 s (25 s) pings, and the one at 90 s (55 s > 40 s) reaps.
        tokio::time::advance(Duration::from_secs(5)).await;
        liveness.heard();
        assert_eq!(
            beats_until_dead(&mut liveness, start).await,
            [
                (Beat::Ping, Duration::from_secs(60)),
                (Beat::Dead, Duration::from_secs(90))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_tick_does_not_move_the_next_ones_and_none_comes_early() {
        let start = Instant::now();
        let mut liveness = Liveness::new(&timing(10, 100));
        assert_eq!(liveness.tick(start + ms(9_999)), None);
        // Taken 5 s late (the session was busy writing): the next is still due at 20 s.
        assert_eq!(liveness.tick(start + ms(15_000)), Some(Beat::Ping));
        assert_eq!(liveness.next_tick(), start + ms(20_000));
        assert_eq!(liveness.tick(start + ms(15_000)), None);
    }

    #[test]
    fn earliest_ignores_what_is_not_set() {
        let at = Instant::now();
        let later = at + ms(1);
        assert_eq!(earliest(None, None), None);
        assert_eq!(earliest(Some(later), None), Some(later));
        assert_eq!(earliest(None, Some(at)), Some(at));
        assert_eq!(earliest(Some(later), Some(at)), Some(at));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_answering_is_never_reaped() {
        let mut liveness = Liveness::new(&timing(30, 10));
        for _ in 0..100 {
            assert_eq!(beat(&mut liveness).await, Beat::Ping);
            tokio::time::advance(Duration::from_secs(1)).await;
            liveness.heard();
        }
    }
}
