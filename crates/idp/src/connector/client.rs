//! The one HTTP client of the connectors: redirects off, bounded time and bounded bodies.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use url::Url;

/// Largest response body read from an IdP; discovery documents, key sets, token and user answers are a
/// few KiB, and the bound keeps a broken or hostile IdP from filling memory.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// Why an HTTP request to an IdP failed. The texts name no URL query, body or header value, so they may
/// be logged: token requests carry codes and secrets in their bodies, never in these messages.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// Connection, TLS, timeout or protocol failure.
    #[error("request failed: {0}")]
    Transport(reqwest::Error),
    /// The answer exceeds [`MAX_BODY`].
    #[error("the answer is larger than {MAX_BODY} bytes")]
    TooLarge,
    /// The request could not be built (a library handed over something unusable).
    #[error("the request could not be built: {0}")]
    Request(String),
}

impl HttpError {
    /// Whether the IdP could not be reached at all (as opposed to answering something unusable).
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::TooLarge | Self::Request(_) => false,
        }
    }
}

/// A reqwest client that never follows redirects, with a connect and a whole-request timeout.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    inner: reqwest::Client,
}

impl HttpClient {
    /// A client whose every request (connect, send, read) ends within `timeout`.
    pub(crate) fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let inner = reqwest::Client::builder()
            .connect_timeout(timeout)
            .timeout(timeout)
            // Endpoints are called where discovery or the configuration says; a redirect could point a
            // request that carries a code, a client secret or a bearer token anywhere.
            .redirect(reqwest::redirect::Policy::none())
            // GitHub's API refuses requests without a user agent.
            .user_agent(concat!("flowgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { inner })
    }

    /// Sends `request` and reads the whole answer, failing past [`MAX_BODY`].
    async fn execute(&self, request: reqwest::Request) -> Result<HttpResponse, HttpError> {
        let mut response = self.inner.execute(request).await.map_err(|e| HttpError::Transport(e.without_url()))?;
        if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(HttpError::TooLarge);
        }
        let mut builder = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| HttpError::Transport(e.without_url()))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(HttpError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        builder.body(body).map_err(|e| HttpError::Request(e.to_string()))
    }

    /// `GET url`, asking for JSON.
    pub(crate) async fn get(&self, url: &Url) -> Result<HttpResponse, HttpError> {
        let request = self
            .inner
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .build()
            .map_err(|e| HttpError::Request(e.without_url().to_string()))?;
        self.execute(request).await
    }

    /// `GET url` with `Authorization: Bearer <token>`, asking for JSON.
    pub(crate) async fn get_with_bearer(&self, url: &Url, token: &str) -> Result<HttpResponse, HttpError> {
        let request = self
            .inner
            .get(url.clone())
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .build()
            .map_err(|e| HttpError::Request(e.without_url().to_string()))?;
        self.execute(request).await
    }
}

impl<'c> AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request).map_err(|e| HttpError::Request(e.to_string()))?;
            self.execute(request).await
        })
    }
}

/// Whether the answer declares a JSON body (`application/json`, optionally with parameters).
pub(crate) fn is_json(response: &HttpResponse) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}
