//! The transport baseline: a bare server on flowgate's stack (hyper-util auto connection builder, axum,
//! tonic, tonic-web) that answers `SystemService/GetInfo` with fixed bytes over gRPC, gRPC-web and
//! JSON. No middleware, no database, no authorization: what remains is the cost of the transport.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::get;
use bytes::Bytes;
use flowgate::pb::flowgate::system::v1 as pb;
use flowgate::pb::flowgate::system::v1::system_service_server::{SystemService, SystemServiceServer};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prost::Message as _;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Answers every GetInfo with the same message.
struct Echo {
    reply: pb::GetInfoResponse,
}

#[tonic::async_trait]
impl SystemService for Echo {
    async fn get_info(
        &self,
        _req: tonic::Request<pb::GetInfoRequest>,
    ) -> Result<tonic::Response<pb::GetInfoResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.reply.clone()))
    }
}

/// Serves the echo on 127.0.0.1:0 until killed; the reply is the protobuf encoding in `reply_file`
/// (the real server's GetInfo answer, so both send the same bytes).
pub async fn serve(reply_file: &Path) -> Result<(), String> {
    let bytes = std::fs::read(reply_file).map_err(|e| format!("{}: {e}", reply_file.display()))?;
    let reply = pb::GetInfoResponse::decode(bytes.as_slice()).map_err(|e| format!("reply: {e}"))?;
    let json = Bytes::from(serde_json::to_vec(&reply).map_err(|e| format!("reply json: {e}"))?);
    let grpc = tonic::service::Routes::new(SystemServiceServer::new(Echo { reply }))
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new());
    let rest = Router::new().route(
        "/v1/system/info",
        get(move || {
            let json = json.clone();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], json) }
        }),
    );
    // The same content-type dispatch as flowgate: gRPC and gRPC-web to tonic, the rest to axum.
    let dispatch = tower::service_fn(move |req: Request| {
        let grpc = grpc.clone();
        let rest = rest.clone();
        async move {
            let is_grpc = req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/grpc"));
            if is_grpc { grpc.oneshot(req).await } else { rest.oneshot(req).await }
        }
    });
    let app = Router::new().fallback_service(dispatch);
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("bind: {e}"))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| format!("local addr: {e}"))?;
    // The line the parent waits for, in flowgate's log format.
    eprintln!("{}", serde_json::json!({ "message": "listening", "addr": addr.to_string() }));
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                app.clone().oneshot(req.map(Body::new))
            });
            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
        });
    }
}
