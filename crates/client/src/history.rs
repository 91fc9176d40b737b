//! Channel history over REST (`GET /v1/channels/{channel}/messages`), on servers that keep it
//! (Herald with `[[history.channels]]`). The request goes to the client's own origin, with
//! the credential the client connects with: the last connect's JWT, or the publishable key.

use serde::Deserialize;
use serde_json::Value;

use crate::client::{check_channel, SignallingClient};
use crate::error::Error;
use crate::events::lock;
use crate::options::Credential;
use crate::types::Metadata;

/// Which page to read. By default, the newest 100 messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryRequest {
    /// 1–1000 messages (the server's default is 100).
    pub limit: Option<u32>,
    /// Only messages with an offset below this one (exclusive): page back with the first
    /// offset of the previous page.
    pub before: Option<u64>,
    /// Only messages with an offset above this one (exclusive).
    pub after: Option<u64>,
}

/// One page of a channel's history: the newest messages between the bounds, oldest first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    /// The channel.
    pub channel: String,
    /// The history's epoch (`None` while the channel retains nothing). Offsets of different
    /// epochs are unrelated.
    pub epoch: Option<String>,
    /// The messages, oldest first.
    pub messages: Vec<HistoryMessage>,
    /// Whether older messages exist between the bounds before this page.
    pub has_more: bool,
}

/// One retained message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryMessage {
    /// Unique and stable while the message is retained.
    pub id: String,
    /// +1 per message of the channel within one epoch.
    pub offset: u64,
    /// The server's time of the publish, Unix milliseconds.
    pub ts: i64,
    /// The publisher's peer id.
    pub from: String,
    /// The publisher's `peerMetadata`, when it had one.
    pub from_metadata: Option<Metadata>,
    /// The published payload.
    pub data: Value,
}

/// The REST origin of a WebSocket origin: `ws` → `http`, `wss` → `https`.
fn rest_origin(ws_origin: &str) -> String {
    match ws_origin.split_once("://") {
        Some(("wss", rest)) => format!("https://{rest}"),
        Some((_, rest)) => format!("http://{rest}"),
        None => ws_origin.to_string(),
    }
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct RestError {
    error: String,
    #[serde(default)]
    message: String,
}

impl SignallingClient {
    /// Reads one page of `channel`'s history over REST. With a token provider, the token of
    /// the last connect is used (the provider is asked only if the client never connected).
    pub async fn history(&self, channel: &str, page: HistoryRequest) -> Result<HistoryPage, Error> {
        check_channel(channel)?;
        let credential = self.rest_credential().await?;
        let mut url = format!(
            "{}/v1/channels/{}/messages",
            rest_origin(&self.inner.origin),
            encode_segment(channel)
        );
        let params: Vec<String> = [
            page.limit.map(|v| format!("limit={v}")),
            page.before.map(|v| format!("before={v}")),
            page.after.map(|v| format!("after={v}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !params.is_empty() {
            url = format!("{url}?{}", params.join("&"));
        }
        let timeout = self.inner.options.request_timeout;
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(credential)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| Error::Http(e.without_url().to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::Http(e.without_url().to_string()))?;
        if !status.is_success() {
            let err: RestError = serde_json::from_slice(&body).unwrap_or(RestError {
                error: String::new(),
                message: String::from_utf8_lossy(&body).into_owned(),
            });
            return Err(Error::Rest {
                status: status.as_u16(),
                code: err.error,
                message: err.message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| Error::Http(format!("bad history page: {e}")))
    }

    async fn rest_credential(&self) -> Result<String, Error> {
        match &self.inner.options.credential {
            Credential::ApiKey(key) => Ok(key.clone()),
            Credential::TokenProvider(provider) => {
                if let Some(token) = lock(&self.inner.shared).token.clone() {
                    return Ok(token);
                }
                let limit = self.inner.options.token_provider_timeout;
                tokio::time::timeout(limit, provider.token())
                    .await
                    .map_err(|_| Error::TokenProviderTimeout(limit))?
                    .map_err(|e| Error::TokenProvider(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(rest_origin("ws://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(rest_origin("wss://rms.example"), "https://rms.example");
        assert_eq!(encode_segment("room/1 a"), "room%2F1%20a");
    }
}
