//! `GET /v1/channels/{channel}/messages`: a page of a channel's history.
//!
//! Three credentials may read it, each in its own scope: the app's secret key (its patterns
//! and the `subscribe` action, like `…/peers`), and, so a browser can page back with what it
//! connected with, a connect JWT or a publishable key whose access allows `subscribe` on the
//! channel (the same check a WebSocket subscribe passes).

use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use axum::Json;
use herald_protocol::Action;
use serde::Serialize;
use serde_json::value::RawValue;

use super::schema::ErrorBody;
use super::{check_channel_scope, check_concrete_channel, require_action, ApiError, ApiResult};
use crate::clock::unix_now;
use crate::history::{PageQuery, StoredMessage, MAX_PAGE};
use crate::ids::{AppId, ChannelName};
use crate::state::ServerState;

/// The page size when the request names none.
const DEFAULT_LIMIT: usize = 100;

/// Answers one history request: credential, scope, query, page.
#[utoipa::path(get, path = "/v1/channels/{channel}/messages", tag = "channels",
    operation_id = "channelMessages", params(super::schema::ChannelParam, HistoryParams),
    responses(
        (status = 200, description = "A page of the channel's history, oldest first", body = Answer<'_>),
        (status = 400, description = "Invalid channel or query", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "The credential may not subscribe to the channel", body = ErrorBody),
        (status = 404, description = "`history_not_enabled`: the channel keeps no history", body = ErrorBody),
        (status = 503, description = "The engine is unavailable", body = ErrorBody),
    ),
    security(("secretKey" = []), ("connectJwt" = []), ("publishableKey" = [])))]
pub(crate) async fn channel_messages(
    state: &ServerState,
    headers: &HeaderMap,
    query: Option<&str>,
    channel: String,
) -> ApiResult {
    let app = authorize_reader(state, headers, &channel)?;
    let query = parse_query(query)?;
    let name = ChannelName::new(channel.as_str());
    let Some(page) = state.engine.history(&app, &name, &query).await? else {
        return Err(ApiError::no_history(&channel));
    };
    let epoch = page.retained.epoch.as_deref();
    let messages: Vec<Message<'_>> = page
        .retained
        .messages
        .iter()
        .map(|m| Message::new(m, epoch.unwrap_or_default()))
        .collect();
    Ok(Json(Answer {
        channel: &channel,
        epoch,
        messages,
        has_more: page.has_more,
    })
    .into_response())
}

/// The app whose channel may be read, or why not. A secret key is tried first; any other
/// bearer is a connect JWT or a publishable key. Every credential failure is the same 401.
fn authorize_reader(
    state: &ServerState,
    headers: &HeaderMap,
    channel: &str,
) -> Result<AppId, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if let Some(key) = state.keys.authenticate_rest(authorization) {
        require_action(&key, Action::Subscribe)?;
        check_channel_scope(&key, channel)?;
        return Ok(key.app.id.clone());
    }
    let bearer = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let identity = state
        .keys
        .authenticate_bearer(
            bearer,
            origin,
            unix_now(),
            state.config.timing.clock_skew_secs,
        )
        .map_err(|_| ApiError::unauthorized())?;
    check_concrete_channel(channel)?;
    if !identity.access.can(Action::Subscribe) {
        return Err(ApiError::action(Action::Subscribe));
    }
    if !identity.access.allows_channel(channel) {
        return Err(ApiError::not_authorized(channel));
    }
    Ok(identity.app.id.clone())
}

/// `limit` (1 to 1000, default 100), `before` and `after` (exclusive offsets); other
/// parameters are ignored.
fn parse_query(query: Option<&str>) -> Result<PageQuery, ApiError> {
    let mut page = PageQuery {
        limit: DEFAULT_LIMIT,
        before: None,
        after: None,
    };
    for pair in query.unwrap_or_default().split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Offsets stay within a signed 64-bit integer, the range the document promises and
        // every JSON client can hold (schemathesis: `before=9223372036854775808` passed).
        let number = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "{name} must be a whole number from 0 to {}",
                        i64::MAX
                    ))
                })
        };
        match name {
            "limit" => {
                let limit = number()?;
                if !(1..=MAX_PAGE as u64).contains(&limit) {
                    return Err(ApiError::invalid(format!(
                        "limit must be between 1 and {MAX_PAGE}"
                    )));
                }
                page.limit = limit as usize;
            }
            "before" => page.before = Some(number()?),
            "after" => page.after = Some(number()?),
            _ => {}
        }
    }
    Ok(page)
}

/// The query of a history read; [`parse_query`] reads it (other parameters are ignored).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the query only.
pub(super) struct HistoryParams {
    /// Messages in the page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u64>,
    /// Only offsets below this one (exclusive).
    #[param(maximum = 9223372036854775807_i64)]
    before: Option<u64>,
    /// Only offsets above this one (exclusive).
    #[param(maximum = 9223372036854775807_i64)]
    after: Option<u64>,
}

/// A page of history.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = HistoryPage)]
pub(super) struct Answer<'a> {
    channel: &'a str,
    /// `null` while the channel retains nothing.
    epoch: Option<&'a str>,
    messages: Vec<Message<'a>>,
    has_more: bool,
}

/// One retained message.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = HistoryMessage)]
pub(super) struct Message<'a> {
    /// Unique and stable while retained.
    id: String,
    /// Grows by exactly 1 per message of the channel.
    offset: u64,
    /// The server's time of the publish, in milliseconds.
    ts: i64,
    from: &'a str,
    /// The sender's metadata, when it had some.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    from_metadata: Option<&'a RawValue>,
    /// The sender's bytes.
    #[schema(value_type = Value)]
    data: &'a RawValue,
}

impl<'a> Message<'a> {
    fn new(m: &'a StoredMessage, epoch: &str) -> Self {
        Message {
            id: m.id(epoch),
            offset: m.offset,
            ts: m.ts,
            from: m.from.as_str(),
            from_metadata: m.from_metadata.as_deref(),
            data: &m.data,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_checked() {
        let page = parse_query(Some("limit=5&before=10&after=2&x=y")).unwrap();
        assert_eq!(
            page,
            PageQuery {
                limit: 5,
                before: Some(10),
                after: Some(2)
            }
        );
        assert_eq!(parse_query(None).unwrap().limit, DEFAULT_LIMIT);
        let top = parse_query(Some("before=9223372036854775807")).unwrap();
        assert_eq!(top.before, Some(i64::MAX as u64));
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "before=-1",
            "after=",
            "before=9223372036854775808",
            "after=18446744073709551616",
        ] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
