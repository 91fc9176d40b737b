//! Dialling a socket and closing one: the token, the upgrade, the welcome, and the closing
//! handshake, with errors that never quote the credential.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::stopped;
use crate::error::Error;
use crate::frames::{self, ServerFrame};
use crate::options::Credential;
use crate::shared::Inner;
use crate::types::Welcome;

pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a closing handshake may take before the socket is simply dropped.
pub(super) const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// The official SDKs refuse inbound messages above 1 MiB; a server never needs more.
const MAX_INBOUND_MESSAGE: usize = 1 << 20;
/// 4000 is the client-side inactivity/welcome-timeout close (spec §7.1).
pub(super) const CLIENT_INACTIVITY: u16 = 4000;

/// A welcomed socket.
pub(super) struct Session {
    pub(super) ws: Ws,
    pub(super) welcome: Welcome,
}

/// How a socket ended.
pub(super) struct Closed {
    pub(super) code: u16,
    pub(super) reason: String,
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

/// Token, upgrade and welcome, abandoned as soon as a stop is requested.
pub(super) async fn open(
    inner: &Inner,
    stop: &mut watch::Receiver<bool>,
) -> Result<Session, Error> {
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
            let query = format!("token={}", percent_encode(&token));
            crate::events::lock(&inner.shared).token = Some(token);
            query
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

pub(super) fn close_parts(frame: Option<CloseFrame>) -> Closed {
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

pub(super) fn error_code(e: &tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Capacity(_) => 1009,
        tungstenite::Error::Protocol(_) => 1002,
        tungstenite::Error::Utf8(_) => 1007,
        _ => 1006,
    }
}

/// Sends a close frame and waits briefly for the server's echo, so the peer sees a clean
/// close rather than a reset.
pub(super) async fn close_socket(ws: &mut Ws, code: u16, reason: &str) {
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
