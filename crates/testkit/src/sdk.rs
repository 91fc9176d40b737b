//! Options for the Rust SDK under test: token providers that count their calls, and reconnect
//! backoff fast enough that reconnect tests take milliseconds per attempt.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald_client::{ReconnectOptions, SignallingClientOptions};

use crate::tokens::{meta, token_with};

/// A token provider for `sub` (with `{"username": sub}` metadata) that counts its calls.
pub fn counting_provider(
    sub: &str,
    ttl: i64,
) -> (
    impl Fn() -> std::future::Ready<Result<String, std::io::Error>> + Send + Sync + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let sub = sub.to_string();
    let provider = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(token_with(&sub, ttl, Some(meta(&sub)), None)))
    };
    (provider, calls)
}

/// Backoff that retries fast, so reconnect tests take milliseconds per attempt.
pub fn fast_reconnect() -> ReconnectOptions {
    ReconnectOptions {
        initial_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
        ..ReconnectOptions::default()
    }
}

/// Options for `sub` against `url`, with `{"username": sub}` metadata and fast reconnects.
pub fn options_for(url: &str, sub: &str) -> SignallingClientOptions {
    let (provider, _) = counting_provider(sub, 3600);
    SignallingClientOptions {
        reconnect: Some(fast_reconnect()),
        ..SignallingClientOptions::token_provider(provider).with_url(url)
    }
}
