//! The connection task: its lifecycle (connect, close, install a welcomed socket, replay the
//! subscriptions) and the reconnect after a drop (spec §1.3, §7.2, §8). Dialling is in
//! `dial`, one socket's read/write loop in `session`, the reconnect schedule in `backoff`.
//!
//! One task owns the socket for the whole life of a `connect()`, across reconnects. Requests
//! reach it through the connection's bounded outbound queue; inbound frames are dispatched from
//! it in arrival order, which keeps the server's per-connection FIFO order (spec §14) all the
//! way to the application.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout};

mod backoff;
mod dial;
mod session;

use self::backoff::{is_terminal, retry, Attempt, Backoff, Failure, Redial, Retried, Verdict};
use self::dial::{close_socket, open, Closed, Ws, CLIENT_INACTIVITY, CLOSE_FLUSH_TIMEOUT};
use self::session::run_session;
use crate::error::Error;
use crate::events::lock;
use crate::shared::{resume_frame, Inner, LiveConn, Observed};
use crate::types::{ConnectionEvent, ConnectionState, Welcome};

/// Frames a connection's outbound queue holds before request senders wait.
const OUTBOUND_QUEUE: usize = 256;
/// Retries of a failed subscription replay on the same connection, and their spacing (§8.2).
const REPLAY_RETRIES: u32 = 3;
const REPLAY_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Resolves once a stop was requested (or the stop switch is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// `connect()`: the first connection of a generation, then the background task.
pub(crate) async fn connect(inner: &Arc<Inner>) -> Result<(), Error> {
    let (generation, stop_rx, event) = {
        let mut shared = lock(&inner.shared);
        if shared.disposed {
            return Err(Error::Disposed);
        }
        match shared.state {
            ConnectionState::Idle | ConnectionState::Closed => {}
            other => {
                return Err(Error::InvalidState {
                    operation: "connect",
                    state: format!("{other:?}"),
                })
            }
        }
        shared.closing = false;
        shared.generation += 1;
        let (stop_tx, stop_rx) = watch::channel(false);
        shared.stop = Some(stop_tx);
        let event = Inner::set_state(&mut shared, ConnectionState::Connecting);
        (shared.generation, stop_rx, event)
    };
    inner.announce(event);

    let mut stop = stop_rx.clone();
    let result = match open(inner, &mut stop).await {
        Ok(session) => match install(inner, &session.welcome, false, generation) {
            Some((conn_id, out_rx)) => {
                let task = tokio::spawn(drive(
                    inner.clone(),
                    session.ws,
                    out_rx,
                    conn_id,
                    stop_rx,
                    generation,
                ));
                lock(&inner.shared).driver = Some(task);
                return Ok(());
            }
            None => {
                let mut ws = session.ws;
                close_socket(&mut ws, 1000, "client requested close").await;
                Err(Error::Closed)
            }
        },
        Err(e) => Err(e),
    };
    finish_closed(inner, generation);
    result
}

/// `close()`: stop the task, wait for its closing handshake, fail what is still pending.
pub(crate) async fn close(inner: &Arc<Inner>) {
    let (stop, driver) = {
        let mut shared = lock(&inner.shared);
        shared.closing = true;
        (shared.stop.take(), shared.driver.take())
    };
    if let Some(stop) = stop {
        let _ = stop.send(true);
    }
    if let Some(driver) = driver {
        let abort = driver.abort_handle();
        if timeout(CLOSE_FLUSH_TIMEOUT * 3, driver).await.is_err() {
            abort.abort();
        }
    }
    let (pending, event) = {
        let mut shared = lock(&inner.shared);
        shared.conn = None;
        let pending = std::mem::take(&mut shared.pending);
        (
            pending,
            Inner::set_state(&mut shared, ConnectionState::Closed),
        )
    };
    for (_, waiter) in pending {
        let _ = waiter.send(Err(Error::Closed));
    }
    inner.announce(event);
}

/// Marks the generation closed (unless a newer `connect()` took over).
fn finish_closed(inner: &Inner, generation: u64) {
    let event = {
        let mut shared = lock(&inner.shared);
        if shared.generation != generation {
            return;
        }
        shared.stop = None;
        Inner::set_state(&mut shared, ConnectionState::Closed)
    };
    inner.announce(event);
}

/// Makes a welcomed socket the current connection: state, welcome, events, subscription
/// replay. `None` when a `close()` (or a newer `connect()`) got there first.
fn install(
    inner: &Arc<Inner>,
    welcome: &Welcome,
    is_reconnect: bool,
    generation: u64,
) -> Option<(u64, mpsc::Receiver<String>)> {
    let (conn_id, rx, state_event, replay) = {
        let mut shared = lock(&inner.shared);
        if shared.closing || shared.disposed || shared.generation != generation {
            return None;
        }
        shared.next_conn_id += 1;
        let conn_id = shared.next_conn_id;
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        shared.conn = Some(LiveConn { id: conn_id, tx });
        shared.welcome = Some(welcome.clone());
        let state_event = Inner::set_state(&mut shared, ConnectionState::Connected);
        let replay: Vec<String> = if is_reconnect && inner.options.auto_resubscribe {
            shared.subscriptions.keys().cloned().collect()
        } else {
            Vec::new()
        };
        (conn_id, rx, state_event, replay)
    };
    tracing::debug!(peer_id = %welcome.peer_id, is_reconnect, "welcomed");
    inner.announce(state_event);
    inner.connection.emit(ConnectionEvent::Connected {
        welcome: welcome.clone(),
        is_reconnect,
    });
    inner.notify(Observed::Connected { is_reconnect });
    for channel in replay {
        tokio::spawn(replay_subscription(inner.clone(), channel, conn_id));
    }
    Some((conn_id, rx))
}

/// Re-subscribes one channel on connection `conn_id`, retrying a refusal or a lost ack a few
/// times on the same connection. Not awaited by the welcome path: 15 s ack timeouts would
/// serialize, and nothing else should wait for them.
async fn replay_subscription(inner: Arc<Inner>, channel: String, conn_id: u64) {
    for attempt in 0..=REPLAY_RETRIES {
        let (options, since) = {
            let shared = lock(&inner.shared);
            let live = shared.state == ConnectionState::Connected
                && shared.conn.as_ref().is_some_and(|c| c.id == conn_id);
            match shared.subscriptions.get(&channel) {
                Some(options) if live => (*options, shared.since(&channel)),
                _ => return,
            }
        };
        // Resumes from the last message received, when the channel keeps history.
        let result = inner
            .request(|id| resume_frame(&inner, &channel, id, options, since.as_ref()))
            .await;
        match result {
            Ok(()) => return,
            Err(Error::Disconnected { .. } | Error::NotConnected(_) | Error::Disposed) => return,
            Err(e) => {
                tracing::warn!(%channel, error = %e, attempt, "subscription replay failed");
                if attempt < REPLAY_RETRIES {
                    sleep(REPLAY_RETRY_DELAY).await;
                }
            }
        }
    }
}

/// The background task of one `connect()`: run the session, and reconnect after it ends
/// until told to stop, a terminal code arrives, or the attempt budget runs out.
async fn drive(
    inner: Arc<Inner>,
    mut ws: Ws,
    mut out_rx: mpsc::Receiver<String>,
    mut conn_id: u64,
    mut stop: watch::Receiver<bool>,
    generation: u64,
) {
    loop {
        let closed = run_session(&inner, &mut ws, &mut out_rx, conn_id, &mut stop).await;
        drop(ws);
        tracing::debug!(code = closed.code, reason = %closed.reason, "connection closed");
        if !after_close(&inner, conn_id, &closed, generation) {
            return;
        }
        match reconnect(&inner, &mut stop, closed.code, generation).await {
            Some((next_ws, next_id, next_rx)) => {
                ws = next_ws;
                conn_id = next_id;
                out_rx = next_rx;
            }
            None => return,
        }
    }
}

/// Ends connection `conn_id`: fails its pending requests, decides whether to reconnect and
/// announces the disconnect. Returns that decision.
fn after_close(inner: &Inner, conn_id: u64, closed: &Closed, generation: u64) -> bool {
    let (pending, will_reconnect, state_event) = {
        let mut shared = lock(&inner.shared);
        if shared.conn.as_ref().is_some_and(|c| c.id == conn_id) {
            shared.conn = None;
        }
        let pending = std::mem::take(&mut shared.pending);
        let will_reconnect = !shared.closing
            && !shared.disposed
            && shared.generation == generation
            && inner.options.reconnect.is_some()
            && !is_terminal(closed.code);
        let to = if will_reconnect {
            ConnectionState::Reconnecting
        } else {
            ConnectionState::Closed
        };
        (pending, will_reconnect, Inner::set_state(&mut shared, to))
    };
    for (_, waiter) in pending {
        let _ = waiter.send(Err(Error::Disconnected {
            code: closed.code,
            reason: closed.reason.clone(),
        }));
    }
    announce_disconnect(inner, closed.code, &closed.reason, will_reconnect);
    inner.announce(state_event);
    will_reconnect
}

fn announce_disconnect(inner: &Inner, code: u16, reason: &str, will_reconnect: bool) {
    inner.connection.emit(ConnectionEvent::Disconnected {
        code,
        reason: reason.to_owned(),
        will_reconnect,
    });
    inner.notify(Observed::Disconnected {
        code,
        reason,
        will_reconnect,
    });
}

/// Reconnect attempts with backoff until one is welcomed. `None` means the client closed.
async fn reconnect(
    inner: &Arc<Inner>,
    stop: &mut watch::Receiver<bool>,
    close_code: u16,
    generation: u64,
) -> Option<(Ws, u64, mpsc::Receiver<String>)> {
    let mut backoff = Backoff::new(inner.options.reconnect?, close_code);
    let mut redial = Redialer {
        inner,
        stop: stop.clone(),
        generation,
    };
    match retry(&mut redial, &mut backoff, stop, || {
        rand::random_range(-1.0..=1.0)
    })
    .await
    {
        Retried::Won(next) => Some(next),
        Retried::GaveUp => None,
        Retried::Stopped => {
            finish_closed(inner, generation);
            None
        }
    }
}

/// Dials for the reconnect loop and announces its failures.
struct Redialer<'a> {
    inner: &'a Arc<Inner>,
    stop: watch::Receiver<bool>,
    generation: u64,
}

impl Redial for Redialer<'_> {
    type Won = (Ws, u64, mpsc::Receiver<String>);

    async fn attempt(&mut self) -> Attempt<Self::Won> {
        let error = match open(self.inner, &mut self.stop).await {
            Ok(session) => {
                return match install(self.inner, &session.welcome, true, self.generation) {
                    Some((conn_id, rx)) => Attempt::Won((session.ws, conn_id, rx)),
                    None => {
                        let mut ws = session.ws;
                        close_socket(&mut ws, 1000, "client requested close").await;
                        Attempt::Stopped
                    }
                }
            }
            Err(Error::Closed) => return Attempt::Stopped,
            Err(e) => e,
        };
        match error {
            Error::TokenProvider(_) | Error::TokenProviderTimeout(_) => {
                Attempt::Failed(Failure::Token, error.to_string())
            }
            Error::ConnectRejected { code, reason } => {
                Attempt::Failed(Failure::Closed(code), reason)
            }
            Error::WelcomeTimeout(_) => {
                Attempt::Failed(Failure::Closed(CLIENT_INACTIVITY), error.to_string())
            }
            other => Attempt::Failed(Failure::Closed(1006), other.to_string()),
        }
    }

    fn failed(&mut self, failure: Failure, reason: &str, verdict: Verdict) -> bool {
        let inner = self.inner;
        if let Some(consecutive_failures) = verdict.token_failing {
            inner
                .connection
                .emit(ConnectionEvent::TokenProviderFailing {
                    consecutive_failures,
                    error: reason.to_owned(),
                });
            inner.notify(Observed::TokenProviderFailing {
                consecutive_failures,
                error: reason,
            });
        }
        let give_up = verdict.give_up;
        // Closed before the announcement, so a listener that reads the state sees it.
        let state_event = {
            let mut shared = lock(&inner.shared);
            if shared.closing || shared.generation != self.generation {
                return false;
            }
            if give_up {
                shared.stop = None;
                Inner::set_state(&mut shared, ConnectionState::Closed)
            } else {
                None
            }
        };
        let code = match failure {
            Failure::Closed(code) => Some(code),
            Failure::Token => None,
        };
        if code.is_some() || give_up {
            announce_disconnect(inner, code.unwrap_or(1006), reason, !give_up);
        }
        if give_up {
            inner.announce(state_event);
        }
        true
    }
}

/// The real reconnect path (`reconnect` and its `Redialer`) on a paused clock. A failing or
/// silent token provider ends each attempt before anything is dialled, so no socket is
/// waited on and the clock can run ahead.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;
    use tokio::time::Instant;

    use crate::events::{EventStream, Subscribers};
    use crate::options::{ReconnectOptions, SignallingClientOptions};
    use crate::shared::Shared;

    /// A token provider that records when it is asked, then fails, or never answers.
    fn provider(calls: Arc<Mutex<Vec<Instant>>>, answers: bool) -> SignallingClientOptions {
        SignallingClientOptions::token_provider(move || {
            calls.lock().unwrap().push(Instant::now());
            async move {
                if !answers {
                    std::future::pending::<()>().await;
                }
                Err::<String, _>("provider down")
            }
        })
        .with_url("ws://127.0.0.1:1")
    }

    /// A client state as `drive` leaves it when a welcomed socket dropped: reconnecting, in
    /// generation 1, with its stop switch in place.
    fn reconnecting(
        options: SignallingClientOptions,
    ) -> (
        Arc<Inner>,
        watch::Receiver<bool>,
        EventStream<ConnectionEvent>,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            origin: options.validate().unwrap(),
            shared: Mutex::new(Shared {
                state: ConnectionState::Reconnecting,
                welcome: None,
                conn: None,
                pending: HashMap::new(),
                subscriptions: BTreeMap::new(),
                stop: Some(stop_tx),
                driver: None,
                closing: false,
                disposed: false,
                generation: 1,
                next_conn_id: 1,
                token: None,
                positions: HashMap::new(),
                resuming: HashMap::new(),
            }),
            presence: Subscribers::new("presence", 16),
            messages: Subscribers::new("messages", 16),
            directs: Subscribers::new("directs", 16),
            server_errors: Subscribers::new("server_errors", 16),
            going_away: Subscribers::new("going_away", 16),
            connection: Subscribers::new("connection_events", 16),
            observers: Mutex::new(Vec::new()),
            options,
        });
        let events = inner.connection.subscribe();
        (inner, stop_rx, events)
    }

    fn policy(max_attempts: u32) -> Option<ReconnectOptions> {
        Some(ReconnectOptions {
            jitter: 0.0,
            max_attempts: Some(max_attempts),
            ..ReconnectOptions::default()
        })
    }

    fn since(t0: Instant, times: &Mutex<Vec<Instant>>) -> Vec<u128> {
        let times = times.lock().unwrap();
        times.iter().map(|t| (*t - t0).as_millis()).collect()
    }

    fn drain(events: &mut EventStream<ConnectionEvent>) -> Vec<ConnectionEvent> {
        std::iter::from_fn(|| events.try_recv()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn token_failures_are_reported_then_the_budget_closes_the_client() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut options = provider(calls.clone(), true);
        options.reconnect = policy(4);
        let (inner, mut stop, mut events) = reconnecting(options);
        let t0 = Instant::now();
        assert!(reconnect(&inner, &mut stop, 1006, 1).await.is_none());
        assert_eq!(since(t0, &calls), [500, 1500, 3500, 7500]);
        let failing = |n| ConnectionEvent::TokenProviderFailing {
            consecutive_failures: n,
            error: "token provider failed: provider down".into(),
        };
        assert_eq!(
            drain(&mut events),
            [
                failing(3),
                failing(4),
                ConnectionEvent::Disconnected {
                    code: 1006,
                    reason: "token provider failed: provider down".into(),
                    will_reconnect: false,
                },
                ConnectionEvent::StateChanged {
                    from: ConnectionState::Reconnecting,
                    to: ConnectionState::Closed,
                },
            ],
            "only the last failure is a disconnect: a token failure has no close code"
        );
        let shared = lock(&inner.shared);
        assert!(shared.stop.is_none());
        assert_eq!(shared.state, ConnectionState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_provider_times_out_on_the_clock_and_a_4010_waits_the_floor() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut options = provider(calls.clone(), false);
        options.reconnect = policy(2);
        let (inner, mut stop, mut events) = reconnecting(options);
        let t0 = Instant::now();
        assert!(reconnect(&inner, &mut stop, 4010, 1).await.is_none());
        // The 30 s floor, 10 s for the provider, then 1 s and another 10 s.
        assert_eq!(since(t0, &calls), [30_000, 41_000]);
        assert_eq!(Instant::now() - t0, Duration::from_secs(51));
        assert_eq!(
            drain(&mut events),
            [
                ConnectionEvent::Disconnected {
                    code: 1006,
                    reason: "token provider did not answer within 10s".into(),
                    will_reconnect: false,
                },
                ConnectionEvent::StateChanged {
                    from: ConnectionState::Reconnecting,
                    to: ConnectionState::Closed,
                },
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_during_the_wait_ends_the_run_without_an_attempt() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut options = provider(calls.clone(), true);
        options.reconnect = policy(100);
        let (inner, mut stop, mut events) = reconnecting(options);
        let stop_tx = lock(&inner.shared).stop.take().unwrap();
        let run = {
            let inner = inner.clone();
            tokio::spawn(async move { reconnect(&inner, &mut stop, 1006, 1).await.is_none() })
        };
        // Let the run start its 500 ms wait, then close in the middle of it.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(!run.is_finished());
        stop_tx.send(true).unwrap();
        assert!(run.await.unwrap());
        assert!(calls.lock().unwrap().is_empty());
        assert_eq!(
            drain(&mut events),
            [ConnectionEvent::StateChanged {
                from: ConnectionState::Reconnecting,
                to: ConnectionState::Closed,
            }]
        );
    }
}
