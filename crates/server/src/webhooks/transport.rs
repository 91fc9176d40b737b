//! How a batch reaches an endpoint: an HTTP POST in production, a test double in unit tests
//! (so delivery, retries and ordering are tested on a paused clock with no socket).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// One POST of a batch; `Ok` carries the HTTP status, `Err` says why there was none.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, String>;
}

/// POSTs with a shared HTTP client (connections to an endpoint are kept alive between
/// batches); each request is bounded by `timeout`.
pub struct HttpTransport {
    client: reqwest::Client,
}

impl HttpTransport {
    pub fn new(timeout: Duration) -> Result<HttpTransport, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("herald-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(HttpTransport { client })
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<u16, String> {
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    }
}
