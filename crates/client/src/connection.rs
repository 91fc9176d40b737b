//! The connection task: dialing, the welcome, the read/write loop with its heartbeat and
//! inactivity watchdog, and reconnection with backoff (spec §1.3, §7.2, §8).
//!
//! One task owns the socket for the whole life of a `connect()`, across reconnects. Requests
//! reach it through the connection's bounded outbound queue; inbound frames are dispatched from
//! it in arrival order, which keeps the server's per-connection FIFO order (spec §14) all the
//! way to the application.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

mod backoff;

use self::backoff::{is_terminal, retry, Attempt, Backoff, Failure, Redial, Retried, Verdict};
use crate::error::Error;
use crate::events::lock;
use crate::frames::{self, ServerFrame};
use crate::options::Credential;
use crate::shared::{Inner, LiveConn, Observed};
use crate::types::{ConnectionEvent, ConnectionState, Welcome};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Frames a connection's outbound queue holds before request senders wait.
const OUTBOUND_QUEUE: usize = 256;
/// Frames written per flush.
const WRITE_BATCH: usize = 64;
/// A write that cannot complete in this time means the link is dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// The official SDKs refuse inbound messages above 1 MiB; a server never needs more.
const MAX_INBOUND_MESSAGE: usize = 1 << 20;
/// Retries of a failed subscription replay on the same connection, and their spacing (§8.2).
const REPLAY_RETRIES: u32 = 3;
const REPLAY_RETRY_DELAY: Duration = Duration::from_secs(2);
/// 4000 is the client-side inactivity/welcome-timeout close (spec §7.1).
const CLIENT_INACTIVITY: u16 = 4000;

/// A welcomed socket.
struct Session {
    ws: Ws,
    welcome: Welcome,
}

/// How a socket ended.
struct Closed {
    code: u16,
    reason: String,
}

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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Percent-encodes a credential for the query string (everything but RFC 3986 unreserved).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

/// Token, upgrade and welcome, abandoned as soon as a stop is requested.
async fn open(inner: &Inner, stop: &mut watch::Receiver<bool>) -> Result<Session, Error> {
    tokio::select! {
        biased;
        _ = stopped(stop) => Err(Error::Closed),
        result = open_unstoppable(inner) => result,
    }
}

async fn open_unstoppable(inner: &Inner) -> Result<Session, Error> {
    let options = &inner.options;
    let query = match &options.credential {
        Credential::ApiKey(key) => format!("key={}", percent_encode(key)),
        Credential::TokenProvider(provider) => {
            let limit = options.token_provider_timeout;
            let token = timeout(limit, provider.token())
                .await
                .map_err(|_| Error::TokenProviderTimeout(limit))?
                .map_err(|e| Error::TokenProvider(e.to_string()))?;
            if token.is_empty() {
                return Err(Error::TokenProvider(
                    "the provider returned an empty token".into(),
                ));
            }
            format!("token={}", percent_encode(&token))
        }
    };
    // The URL carries the credential: it is never logged or put into an error.
    let url = format!("{}/v1?{query}", inner.origin);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_INBOUND_MESSAGE))
        .max_frame_size(Some(MAX_INBOUND_MESSAGE));
    let limit = options.welcome_timeout;
    let deadline = Instant::now() + limit;
    let dial = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let (mut ws, _response) = match timeout(limit, dial).await {
        Err(_) => return Err(Error::WelcomeTimeout(limit)),
        Ok(Err(e)) => return Err(handshake_error(e)),
        Ok(Ok(pair)) => pair,
    };
    match tokio::time::timeout_at(deadline, wait_for_welcome(&mut ws)).await {
        Ok(Ok(welcome)) => Ok(Session { ws, welcome }),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            close_socket(&mut ws, CLIENT_INACTIVITY, "welcome timeout").await;
            Err(Error::WelcomeTimeout(limit))
        }
    }
}

fn handshake_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(response) => {
            Error::Transport(format!("HTTP {} on the upgrade", response.status()))
        }
        tungstenite::Error::Url(tungstenite::error::UrlError::TlsFeatureNotEnabled) => {
            Error::Transport("wss:// needs herald-client's `rustls` feature".into())
        }
        other => Error::Transport(scrub(&other.to_string())),
    }
}

/// Masks a credential that an error text might quote (as the official SDKs do), so errors
/// can be logged and shown.
fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["token=", "key="]
        .iter()
        .filter_map(|k| rest.find(k).map(|i| (i, k.len())))
        .min()
    {
        let (i, len) = at;
        out.push_str(&rest[..i + len]);
        out.push('…');
        rest = &rest[i + len..];
        let end = rest.find(['&', ' ', '"', '\'']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Reads until the welcome. The server sends nothing before it; anything else is dropped.
async fn wait_for_welcome(ws: &mut Ws) -> Result<Welcome, Error> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match frames::parse_server_frame(text.as_str()) {
                Ok(ServerFrame::Welcome(welcome)) => return Ok(welcome),
                Ok(_) => tracing::debug!("ignoring a frame that arrived before the welcome"),
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a malformed frame before the welcome")
                }
            },
            Some(Ok(Message::Close(frame))) => {
                let closed = close_parts(frame);
                let _ = timeout(CLOSE_FLUSH_TIMEOUT, ws.flush()).await;
                return Err(Error::ConnectRejected {
                    code: closed.code,
                    reason: closed.reason,
                });
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Err(Error::ConnectRejected {
                    code: error_code(&e),
                    reason: scrub(&e.to_string()),
                })
            }
            None => {
                return Err(Error::ConnectRejected {
                    code: 1006,
                    reason: "the connection ended before the welcome".into(),
                })
            }
        }
    }
}

fn close_parts(frame: Option<CloseFrame>) -> Closed {
    match frame {
        Some(f) => Closed {
            code: u16::from(f.code),
            reason: f.reason.to_string(),
        },
        None => Closed {
            code: 1005,
            reason: String::new(),
        },
    }
}

fn error_code(e: &tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Capacity(_) => 1009,
        tungstenite::Error::Protocol(_) => 1002,
        tungstenite::Error::Utf8(_) => 1007,
        _ => 1006,
    }
}

/// Sends a close frame and waits briefly for the server's echo, so the peer sees a clean
/// close rather than a reset.
async fn close_socket(ws: &mut Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: WsCloseCode::from(code),
        reason: reason.to_owned().into(),
    };
    let handshake = async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
        }
    };
    let _ = timeout(CLOSE_FLUSH_TIMEOUT, handshake).await;
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
        let options = {
            let shared = lock(&inner.shared);
            let live = shared.state == ConnectionState::Connected
                && shared.conn.as_ref().is_some_and(|c| c.id == conn_id);
            match shared.subscriptions.get(&channel) {
                Some(options) if live => *options,
                _ => return,
            }
        };
        let result = inner
            .request(|id| frames::subscribe(&channel, id, options.include_sender_metadata))
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

/// Reads and writes one welcomed socket until it ends; returns how it ended.
async fn run_session(
    inner: &Inner,
    ws: &mut Ws,
    out_rx: &mut mpsc::Receiver<String>,
    conn_id: u64,
    stop: &mut watch::Receiver<bool>,
) -> Closed {
    let inactivity = inner.options.inactivity_timeout;
    // A third of the watchdog window (at least 1 s), as the official SDKs do: two pings go
    // out before a silent link is given up.
    let heartbeat = inactivity.map(|t| (t / 3).max(Duration::from_secs(1)));
    let mut last_inbound = Instant::now();
    let mut next_ping = heartbeat.map(|h| last_inbound + h);
    loop {
        let watchdog = inactivity.map(|t| last_inbound + t);
        tokio::select! {
            biased;
            _ = stopped(stop) => {
                close_socket(ws, 1000, "client requested close").await;
                return Closed { code: 1000, reason: "client requested close".into() };
            }
            inbound = ws.next() => match inbound {
                Some(Ok(Message::Text(text))) => {
                    last_inbound = Instant::now();
                    next_ping = heartbeat.map(|h| last_inbound + h);
                    dispatch(inner, conn_id, text.as_str());
                }
                Some(Ok(Message::Binary(_))) => {
                    tracing::warn!("dropping a binary frame: the protocol is text only");
                }
                Some(Ok(Message::Close(frame))) => {
                    // Flushing sends the close echo tungstenite queued.
                    let _ = timeout(CLOSE_FLUSH_TIMEOUT, ws.flush()).await;
                    return close_parts(frame);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Closed { code: error_code(&e), reason: e.to_string() },
                None => return Closed { code: 1006, reason: "the connection ended".into() },
            },
            outbound = out_rx.recv() => {
                let Some(first) = outbound else {
                    return Closed { code: 1006, reason: "the outbound queue closed".into() };
                };
                if let Err(e) = write_batch(ws, out_rx, first).await {
                    return Closed { code: 1006, reason: e };
                }
            }
            _ = sleep_until_opt(next_ping) => {
                next_ping = heartbeat.map(|h| Instant::now() + h);
                if let Err(e) = write_batch(ws, out_rx, frames::PING.to_owned()).await {
                    return Closed { code: 1006, reason: e };
                }
            }
            _ = sleep_until_opt(watchdog) => {
                tracing::warn!(?inactivity, "no frame from the server in time; reconnecting");
                close_socket(ws, CLIENT_INACTIVITY, "inactivity timeout").await;
                return Closed { code: CLIENT_INACTIVITY, reason: "inactivity timeout".into() };
            }
        }
    }
}

/// Writes `first` and whatever else is queued (up to a batch) with one flush.
async fn write_batch(
    ws: &mut Ws,
    out_rx: &mut mpsc::Receiver<String>,
    first: String,
) -> Result<(), String> {
    let write = async {
        ws.feed(Message::text(first)).await?;
        for _ in 1..WRITE_BATCH {
            match out_rx.try_recv() {
                Ok(next) => ws.feed(Message::text(next)).await?,
                Err(_) => break,
            }
        }
        ws.flush().await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("a write stalled".into()),
    }
}

/// Routes one inbound frame: answers to requests, then events to observers and streams.
fn dispatch(inner: &Inner, conn_id: u64, text: &str) {
    let frame = match frames::parse_server_frame(text) {
        Ok(frame) => frame,
        Err(e) => {
            tracing::warn!(error = %e, conn_id, "dropping a malformed frame from the server");
            return;
        }
    };
    match frame {
        ServerFrame::Welcome(_) => tracing::warn!("ignoring a second welcome"),
        ServerFrame::Ack { request_id } => {
            if !inner.settle(&request_id, Ok(())) {
                tracing::debug!(%request_id, "ack for no pending request (timed out?)");
            }
        }
        ServerFrame::Error(error) => {
            if let Some(request_id) = error.request_id.clone() {
                if inner.settle(&request_id, Err(Error::Server(error.clone()))) {
                    return;
                }
            }
            // The official SDKs' compatibility path for servers without `ping`: an
            // uncorrelated unknown_type answers the heartbeat and means nothing else.
            if error.code == "unknown_type" && error.request_id.is_none() {
                tracing::debug!("server does not know ping; ignoring its unknown_type");
                return;
            }
            inner.notify(Observed::ServerError(&error));
            inner.server_errors.emit(error);
        }
        ServerFrame::Message(message) => {
            inner.notify(Observed::Message(&message));
            inner.messages.emit(message);
        }
        ServerFrame::Direct(direct) => {
            inner.notify(Observed::Direct(&direct));
            inner.directs.emit(direct);
        }
        ServerFrame::Presence(presence) => {
            inner.notify(Observed::Presence(&presence));
            inner.presence.emit(presence);
        }
        ServerFrame::GoingAway(going_away) => inner.going_away.emit(going_away),
        ServerFrame::Pong => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_scrubbed_from_errors() {
        assert_eq!(
            scrub("failed: ws://h/v1?token=eyJ.abc.def&x=1 and key=pk_live_1 end"),
            "failed: ws://h/v1?token=…&x=1 and key=… end"
        );
        assert_eq!(scrub("Connection refused"), "Connection refused");
    }

    #[test]
    fn credentials_are_percent_encoded() {
        assert_eq!(percent_encode("a.b-c_d~e"), "a.b-c_d~e");
        assert_eq!(percent_encode("a+b/c=d&e f"), "a%2Bb%2Fc%3Dd%26e%20f");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
