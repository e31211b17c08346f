//! Handlers: what a matched route calls with the request JSON, metadata and extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;
use tonic::metadata::MetadataMap;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

type HandlerFn = dyn Fn(Value, MetadataMap, http::Extensions) -> BoxFuture<Result<Reply, tonic::Status>> + Send + Sync;

/// A handler's successful answer: the response as pbjson JSON plus the response metadata a tonic method set.
///
/// Only metadata keys on the gateway's allowlist (`content-disposition`) become REST response headers; the
/// rest stays gRPC-only.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The response message as pbjson JSON.
    pub body: Value,
    /// Response metadata (gRPC initial metadata) set by the method.
    pub metadata: MetadataMap,
}

impl From<Value> for Reply {
    fn from(body: Value) -> Self {
        Reply { body, metadata: MetadataMap::new() }
    }
}

/// A type-erased RPC entry point taking and returning pbjson-compatible JSON.
#[derive(Clone)]
pub struct Handler(Arc<HandlerFn>);

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

impl Handler {
    /// Wraps a raw JSON handler answering either bare JSON or a [`Reply`] with response metadata.
    pub fn from_fn<F, Fut, R>(f: F) -> Handler
    where
        F: Fn(Value, MetadataMap, http::Extensions) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, tonic::Status>> + Send + 'static,
        R: Into<Reply> + 'static,
    {
        Handler(Arc::new(move |v, md, ext| {
            let fut = f(v, md, ext);
            Box::pin(async move { fut.await.map(Into::into) })
        }))
    }

    /// Invokes the handler.
    pub fn call(
        &self,
        request: Value,
        metadata: MetadataMap,
        extensions: http::Extensions,
    ) -> BoxFuture<Result<Reply, tonic::Status>> {
        (self.0)(request, metadata, extensions)
    }
}

/// Adapts a typed tonic-style unary method: JSON → `Req` via serde (pbjson), `Resp` → JSON, keeping the
/// response metadata.
pub fn unary<Req, Resp, F, Fut>(f: F) -> Handler
where
    Req: serde::de::DeserializeOwned + Send + 'static,
    Resp: serde::Serialize + Send + 'static,
    F: Fn(tonic::Request<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>> + Send + 'static,
{
    let f = Arc::new(f);
    Handler(Arc::new(move |value, metadata, extensions| {
        let f = Arc::clone(&f);
        Box::pin(async move {
            let req: Req = serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." { String::new() } else { path };
                let description = e.into_inner().to_string();
                let message = if field.is_empty() {
                    format!("invalid request: {description}")
                } else {
                    format!("invalid value for `{field}`: {description}")
                };
                crate::error::status_with_violations(tonic::Code::InvalidArgument, &message, &[(field, description)])
            })?;
            let (metadata, message, _extensions) =
                f(tonic::Request::from_parts(metadata, extensions, req)).await?.into_parts();
            let body = serde_json::to_value(message)
                .map_err(|e| tonic::Status::internal(format!("response could not be encoded as JSON: {e}")))?;
            Ok(Reply { body, metadata })
        })
    }))
}
