//! The reconnect schedule (spec §7.2, §8.1): how long to wait before each attempt, what a
//! failed attempt means for the next one, and when to give up. The loop that keeps to it is
//! here too, written against [`Redial`] rather than a socket, so tests can run it on a paused
//! clock.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::sleep;

use herald_protocol::CloseCode;

use super::stopped;
use crate::options::ReconnectOptions;

/// `TokenProviderFailing` is reported from this many consecutive failures on.
pub(crate) const TOKEN_FAILURE_THRESHOLD: u32 = 3;

/// Codes after which no reconnect is attempted: the credential, its claims, the account or an
/// administrator said no, and trying again cannot change that (spec §7.2).
pub(crate) fn is_terminal(code: u16) -> bool {
    CloseCode::from_u16(code).is_some_and(CloseCode::is_terminal_for_sdks)
}

/// Why one attempt failed, as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The token provider failed or timed out: nothing was dialled, no close code exists.
    Token,
    /// The dial, the upgrade or the server ended the attempt with this close code.
    Closed(u16),
}

/// What the schedule makes of a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// The budget ran out or the code was terminal: no further attempt.
    pub(crate) give_up: bool,
    /// Consecutive token-provider failures, once there are enough to report.
    pub(crate) token_failing: Option<u32>,
}

/// The state of one reconnect run: attempts since the last welcome, a pending one-off floor
/// (after a 4010) and the run of token-provider failures.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    policy: ReconnectOptions,
    attempts: u32,
    floor: Option<Duration>,
    token_failures: u32,
}

impl Backoff {
    /// A fresh run after a welcomed connection closed with `close_code`.
    pub(crate) fn new(policy: ReconnectOptions, close_code: u16) -> Self {
        let mut backoff = Backoff {
            policy,
            attempts: 0,
            floor: None,
            token_failures: 0,
        };
        backoff.note_overload(close_code);
        backoff
    }

    /// Attempts started so far (the one being waited for included).
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts the next attempt and returns the wait before it. `unit` is a uniform sample in
    /// `[-1, 1]` that picks the jitter; a pending floor applies to this wait only.
    pub(crate) fn next_delay(&mut self, unit: f64) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        self.policy.delay(self.attempts, self.floor.take(), unit)
    }

    /// Records that the current attempt failed.
    pub(crate) fn failed(&mut self, failure: Failure) -> Verdict {
        let mut token_failing = None;
        let terminal = match failure {
            Failure::Token => {
                self.token_failures += 1;
                if self.token_failures >= TOKEN_FAILURE_THRESHOLD {
                    token_failing = Some(self.token_failures);
                }
                false
            }
            Failure::Closed(code) => {
                self.token_failures = 0;
                self.note_overload(code);
                is_terminal(code)
            }
        };
        let exhausted = self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempts >= max);
        Verdict {
            give_up: exhausted || terminal,
            token_failing,
        }
    }

    /// A 4010 (server over its connection quota) puts a floor under the next wait.
    fn note_overload(&mut self, code: u16) {
        if code == CloseCode::OverConcurrentLimit.as_u16() {
            self.floor = Some(self.policy.overload_floor);
        }
    }
}

/// How one attempt ended.
pub(crate) enum Attempt<T> {
    /// Welcomed and installed.
    Won(T),
    /// The client closed (or a newer `connect()` took over) meanwhile.
    Stopped,
    /// It failed; the schedule decides what comes next.
    Failed(Failure, String),
}

/// How the whole run ended.
#[derive(Debug, PartialEq)]
pub(crate) enum Retried<T> {
    /// An attempt was welcomed.
    Won(T),
    /// The client closed meanwhile.
    Stopped,
    /// A terminal code or the attempt budget ended the run.
    GaveUp,
}

/// What the reconnect loop dials with, and whom it tells about failures.
pub(crate) trait Redial {
    /// What a welcomed attempt yields.
    type Won;
    /// Makes one attempt.
    fn attempt(&mut self) -> impl Future<Output = Attempt<Self::Won>> + Send;
    /// Reports a failed attempt and the schedule's verdict. False means the client closed
    /// meanwhile and the run is over.
    fn failed(&mut self, failure: Failure, reason: &str, verdict: Verdict) -> bool;
}

/// Waits and attempts on `backoff`'s schedule until an attempt wins, the stop switch flips,
/// or the schedule gives up. `jitter` supplies the uniform samples in `[-1, 1]`.
pub(crate) async fn retry<R: Redial>(
    redial: &mut R,
    backoff: &mut Backoff,
    stop: &mut watch::Receiver<bool>,
    mut jitter: impl FnMut() -> f64,
) -> Retried<R::Won> {
    loop {
        let delay = backoff.next_delay(jitter());
        tracing::debug!(attempt = backoff.attempts(), ?delay, "reconnecting");
        tokio::select! {
            biased;
            _ = stopped(stop) => return Retried::Stopped,
            _ = sleep(delay) => {}
        }
        let (failure, reason) = match redial.attempt().await {
            Attempt::Won(won) => return Retried::Won(won),
            Attempt::Stopped => return Retried::Stopped,
            Attempt::Failed(failure, reason) => (failure, reason),
        };
        tracing::debug!(attempt = backoff.attempts(), error = %reason, "reconnect attempt failed");
        let verdict = backoff.failed(failure);
        if !redial.failed(failure, &reason, verdict) {
            return Retried::Stopped;
        }
        if verdict.give_up {
            return Retried::GaveUp;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn terminal_codes() {
        for code in [4001, 4003, 4012, 4020] {
            assert!(is_terminal(code), "{code}");
        }
        for code in [1000, 1001, 1006, 4000, 4002, 4010, 4011] {
            assert!(!is_terminal(code), "{code}");
        }
    }

    fn no_jitter() -> ReconnectOptions {
        ReconnectOptions {
            jitter: 0.0,
            ..ReconnectOptions::default()
        }
    }

    #[test]
    fn delays_double_from_the_initial_delay_up_to_the_cap() {
        let mut backoff = Backoff::new(ReconnectOptions::default(), 1006);
        let delays: Vec<u128> = (0..9)
            .map(|_| backoff.next_delay(0.0).as_millis())
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(backoff.attempts(), 9);
        let slow = ReconnectOptions {
            initial_delay: MS(100),
            multiplier: 1.5,
            max_delay: MS(300),
            ..ReconnectOptions::default()
        };
        let mut backoff = Backoff::new(slow, 1006);
        let delays: Vec<u128> = (0..5)
            .map(|_| backoff.next_delay(0.0).as_millis())
            .collect();
        assert_eq!(delays, [100, 150, 225, 300, 300]);
    }

    #[test]
    fn jitter_is_symmetric_around_the_base() {
        let mut backoff = Backoff::new(ReconnectOptions::default(), 1006);
        assert_eq!(backoff.next_delay(1.0), MS(600), "+20 % of 500 ms");
        assert_eq!(backoff.next_delay(-1.0), MS(800), "-20 % of 1 s");
        assert_eq!(backoff.next_delay(0.5), MS(2200), "+10 % of 2 s");
        assert_eq!(
            backoff.next_delay(7.0),
            MS(4800),
            "samples beyond 1 count as 1"
        );
    }

    #[test]
    fn a_4010_puts_the_floor_under_the_next_wait_only() {
        let mut backoff = Backoff::new(no_jitter(), 4010);
        assert_eq!(backoff.next_delay(0.0), Duration::from_secs(30));
        let verdict = backoff.failed(Failure::Closed(1006));
        assert!(!verdict.give_up);
        assert_eq!(
            backoff.next_delay(0.0),
            MS(1000),
            "the curve resumes at attempt 2"
        );
        backoff.failed(Failure::Closed(4010));
        assert_eq!(backoff.next_delay(0.0), Duration::from_secs(30));
        backoff.failed(Failure::Token);
        assert_eq!(backoff.next_delay(0.0), MS(4000), "attempt 4: 500 ms · 2³");
        // The floor is a floor: a longer curve wait stays, and the jitter applies on top.
        let mut late = Backoff::new(ReconnectOptions::default(), 1006);
        for _ in 0..7 {
            late.next_delay(0.0);
            late.failed(Failure::Closed(1006));
        }
        late.failed(Failure::Closed(4010));
        assert_eq!(late.next_delay(-1.0), Duration::from_secs(24));
    }

    #[test]
    fn terminal_codes_give_up_and_others_do_not() {
        for code in [4001, 4003, 4012, 4020] {
            let mut backoff = Backoff::new(no_jitter(), 1006);
            backoff.next_delay(0.0);
            assert!(backoff.failed(Failure::Closed(code)).give_up, "{code}");
        }
        for code in [1000, 1006, 4000, 4002, 4010, 4011] {
            let mut backoff = Backoff::new(no_jitter(), 1006);
            backoff.next_delay(0.0);
            assert!(!backoff.failed(Failure::Closed(code)).give_up, "{code}");
        }
    }

    #[test]
    fn the_attempt_budget_gives_up_on_its_last_attempt() {
        let policy = ReconnectOptions {
            max_attempts: Some(3),
            ..no_jitter()
        };
        let mut backoff = Backoff::new(policy, 1006);
        let mut verdicts = Vec::new();
        for _ in 0..3 {
            backoff.next_delay(0.0);
            verdicts.push(backoff.failed(Failure::Token).give_up);
        }
        assert_eq!(verdicts, [false, false, true]);
        let forever = ReconnectOptions {
            max_attempts: None,
            ..no_jitter()
        };
        let mut backoff = Backoff::new(forever, 1006);
        for _ in 0..1000 {
            backoff.next_delay(0.0);
            assert!(!backoff.failed(Failure::Closed(1006)).give_up);
        }
    }

    #[test]
    fn token_failures_are_reported_from_the_third_in_a_row() {
        let mut backoff = Backoff::new(no_jitter(), 1006);
        let mut reported = Vec::new();
        for failure in [
            Failure::Token,
            Failure::Token,
            Failure::Token,
            Failure::Token,
            Failure::Closed(1006),
            Failure::Token,
            Failure::Token,
            Failure::Token,
        ] {
            backoff.next_delay(0.0);
            reported.push(backoff.failed(failure).token_failing);
        }
        assert_eq!(
            reported,
            [None, None, Some(3), Some(4), None, None, None, Some(3)],
            "a dial that got as far as a close code ends the run"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Every wait lies within ±jitter of the capped curve (or of the floor after a
            /// 4010), and without jitter the waits never shrink.
            #[test]
            fn waits_stay_within_the_jitter_of_the_curve(
                initial_ms in 1u64..5_000,
                multiplier in 1.0f64..4.0,
                extra_ms in 0u64..60_000,
                jitter in 0.0f64..=1.0,
                units in proptest::collection::vec(-1.0f64..=1.0, 1..40),
                overloaded in any::<bool>(),
            ) {
                let policy = ReconnectOptions {
                    initial_delay: MS(initial_ms),
                    multiplier,
                    max_delay: MS(initial_ms + extra_ms),
                    jitter,
                    ..ReconnectOptions::default()
                };
                let mut backoff = Backoff::new(policy, if overloaded { 4010 } else { 1006 });
                let mut plain = Backoff::new(ReconnectOptions { jitter: 0.0, ..policy }, 1006);
                let mut last = Duration::ZERO;
                for (i, unit) in units.iter().enumerate() {
                    let n = i as i32;
                    let curve = (initial_ms as f64 * multiplier.powi(n))
                        .min((initial_ms + extra_ms) as f64);
                    let base = if i == 0 && overloaded {
                        curve.max(policy.overload_floor.as_secs_f64() * 1000.0)
                    } else {
                        curve
                    };
                    let wait = backoff.next_delay(*unit).as_secs_f64() * 1000.0;
                    prop_assert!(wait >= base * (1.0 - jitter) - 0.001, "{wait} < {base}·(1-{jitter})");
                    prop_assert!(wait <= base * (1.0 + jitter) + 0.001, "{wait} > {base}·(1+{jitter})");
                    let steady = plain.next_delay(*unit);
                    prop_assert!(steady >= last);
                    last = steady;
                }
            }
        }
    }

    /// A dialler that follows a script and records when each attempt started.
    struct Scripted {
        outcomes: VecDeque<Attempt<&'static str>>,
        /// Shared, so a test can watch a loop that runs in its own task.
        started: Arc<Mutex<Vec<Instant>>>,
        reported: Vec<(Failure, Verdict)>,
        /// `failed` answers false from this report on: the client closed meanwhile.
        closed_after: Option<usize>,
    }

    impl Scripted {
        fn new(outcomes: impl IntoIterator<Item = Attempt<&'static str>>) -> Self {
            Scripted {
                outcomes: outcomes.into_iter().collect(),
                started: Arc::default(),
                reported: Vec::new(),
                closed_after: None,
            }
        }

        /// When each attempt started, in milliseconds after `t0`.
        fn times(&self, t0: Instant) -> Vec<u128> {
            let started = self.started.lock().unwrap();
            started.iter().map(|t| (*t - t0).as_millis()).collect()
        }
    }

    impl Redial for Scripted {
        type Won = &'static str;

        async fn attempt(&mut self) -> Attempt<&'static str> {
            self.started.lock().unwrap().push(Instant::now());
            self.outcomes.pop_front().unwrap()
        }

        fn failed(&mut self, failure: Failure, _reason: &str, verdict: Verdict) -> bool {
            self.reported.push((failure, verdict));
            self.closed_after.is_none_or(|n| self.reported.len() < n)
        }
    }

    fn fail(code: u16) -> Attempt<&'static str> {
        Attempt::Failed(Failure::Closed(code), format!("closed {code}"))
    }

    fn token_fail() -> Attempt<&'static str> {
        Attempt::Failed(Failure::Token, "provider down".into())
    }

    /// Jitter samples from a list, then 0.
    fn samples(list: &'static [f64]) -> impl FnMut() -> f64 {
        let mut iter = list.iter();
        move || iter.next().copied().unwrap_or(0.0)
    }

    /// Lets the spawned loop run until it waits on the clock again. The paused clock does not
    /// move meanwhile, so this cannot let an attempt through early.
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_attempts_exactly_on_schedule() {
        let (_stop_tx, mut stop) = watch::channel(false);
        let t0 = Instant::now();
        let mut redial = Scripted::new([fail(1006), fail(1006), token_fail(), Attempt::Won("in")]);
        let started = redial.started.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new(ReconnectOptions::default(), 1006);
            let jitter = samples(&[0.0, 1.0, -1.0, 0.5]);
            let result = retry(&mut redial, &mut backoff, &mut stop, jitter).await;
            (result, redial)
        });
        settle().await;
        // Waits of 500 ms, 1 s +20 %, 2 s -20 % and 4 s +10 %: attempts at 500, 1700,
        // 3300 and 7700 ms, none a millisecond early.
        for (done, at) in [500u64, 1700, 3300, 7700].into_iter().enumerate() {
            let now = (Instant::now() - t0).as_millis() as u64;
            tokio::time::advance(MS(at - now - 1)).await;
            settle().await;
            assert_eq!(started.lock().unwrap().len(), done, "before {at} ms");
            tokio::time::advance(MS(1)).await;
            settle().await;
            assert_eq!(started.lock().unwrap().len(), done + 1, "at {at} ms");
        }
        let (result, redial) = task.await.unwrap();
        assert_eq!(result, Retried::Won("in"));
        assert_eq!(redial.times(t0), [500, 1700, 3300, 7700]);
        assert_eq!(redial.reported.len(), 3);
        assert!(redial.reported.iter().all(|(_, v)| !v.give_up));
    }

    #[tokio::test(start_paused = true)]
    async fn a_4010_close_waits_the_floor_first() {
        let (_stop_tx, mut stop) = watch::channel(false);
        let t0 = Instant::now();
        let mut redial = Scripted::new([fail(1006), fail(4010), fail(1006), Attempt::Won("in")]);
        let mut backoff = Backoff::new(no_jitter(), 4010);
        let result = retry(&mut redial, &mut backoff, &mut stop, samples(&[])).await;
        assert_eq!(result, Retried::Won("in"));
        // 30 s floor, then 1 s, then the floor again after the refused attempt, then 4 s.
        assert_eq!(redial.times(t0), [30_000, 31_000, 61_000, 65_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_terminal_code_ends_the_loop_after_its_attempt() {
        for code in [4001, 4003, 4012, 4020] {
            let (_stop_tx, mut stop) = watch::channel(false);
            let t0 = Instant::now();
            let mut redial = Scripted::new([fail(1006), fail(code), Attempt::Won("never")]);
            let mut backoff = Backoff::new(no_jitter(), 1006);
            let result = retry(&mut redial, &mut backoff, &mut stop, samples(&[])).await;
            assert_eq!(result, Retried::GaveUp, "{code}");
            assert_eq!(redial.times(t0), [500, 1500], "{code}");
            assert_eq!(redial.outcomes.len(), 1, "no attempt after {code}");
            let last = redial.reported.last().unwrap();
            assert_eq!(
                *last,
                (
                    Failure::Closed(code),
                    Verdict {
                        give_up: true,
                        token_failing: None
                    }
                )
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_ends_the_loop() {
        let (_stop_tx, mut stop) = watch::channel(false);
        let t0 = Instant::now();
        let mut redial = Scripted::new([token_fail(), token_fail(), token_fail(), token_fail()]);
        let policy = ReconnectOptions {
            max_attempts: Some(3),
            ..no_jitter()
        };
        let mut backoff = Backoff::new(policy, 1006);
        let result = retry(&mut redial, &mut backoff, &mut stop, samples(&[])).await;
        assert_eq!(result, Retried::GaveUp);
        assert_eq!(redial.times(t0), [500, 1500, 3500]);
        let verdicts: Vec<Verdict> = redial.reported.iter().map(|(_, v)| *v).collect();
        assert_eq!(
            verdicts,
            [
                Verdict {
                    give_up: false,
                    token_failing: None
                },
                Verdict {
                    give_up: false,
                    token_failing: None
                },
                Verdict {
                    give_up: true,
                    token_failing: Some(3)
                },
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_wait_ends_the_loop_without_an_attempt() {
        let (stop_tx, mut stop) = watch::channel(false);
        let t0 = Instant::now();
        let mut redial = Scripted::new([fail(1006), Attempt::Won("never")]);
        let started = redial.started.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Backoff::new(no_jitter(), 1006);
            let result = retry(&mut redial, &mut backoff, &mut stop, samples(&[])).await;
            (result, redial)
        });
        settle().await;
        tokio::time::advance(MS(500)).await;
        settle().await;
        assert_eq!(started.lock().unwrap().len(), 1);
        // The second wait runs from 500 to 1500 ms; stop in the middle of it.
        tokio::time::advance(MS(500)).await;
        stop_tx.send(true).unwrap();
        let (result, redial) = task.await.unwrap();
        assert_eq!(result, Retried::Stopped);
        assert_eq!(redial.times(t0), [500]);
        assert_eq!(Instant::now() - t0, MS(1000), "it ended at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_seen_while_reporting_or_dialling_ends_the_loop() {
        let (_stop_tx, mut stop) = watch::channel(false);
        let mut redial = Scripted::new([fail(1006), fail(1006), fail(1006)]);
        redial.closed_after = Some(2);
        let mut backoff = Backoff::new(no_jitter(), 1006);
        let result = retry(&mut redial, &mut backoff, &mut stop, samples(&[])).await;
        assert_eq!(result, Retried::Stopped);
        assert_eq!(redial.started.lock().unwrap().len(), 2);

        let mut redial = Scripted::new([fail(1006), Attempt::Stopped, fail(1006)]);
        let mut backoff = Backoff::new(no_jitter(), 1006);
        let result = retry(&mut redial, &mut backoff, &mut stop, samples(&[])).await;
        assert_eq!(result, Retried::Stopped);
        assert_eq!(redial.started.lock().unwrap().len(), 2);
    }
}
