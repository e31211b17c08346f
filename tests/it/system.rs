//! GetInfo, health, readiness, reflection and metrics.

use flowgate::pb::flowgate::system::v1 as pb;
use flowgate::pb::flowgate::system::v1::system_service_client::SystemServiceClient;

use crate::harness::{PROTOCOLS, Protocol, Server};

const GET_INFO: &str = "/flowgate.system.v1.SystemService/GetInfo";

fn expected_backend() -> &'static str {
    if std::env::var("FLOWGATE_TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty()) { "postgres" } else { "sqlite" }
}

#[tokio::test]
async fn get_info_answers_the_same_over_every_protocol() {
    let server = Server::start().await;
    for protocol in PROTOCOLS {
        let info: pb::GetInfoResponse = match protocol {
            Protocol::Grpc => {
                let mut client = SystemServiceClient::new(server.channel().await);
                client.get_info(pb::GetInfoRequest {}).await.expect("grpc GetInfo").into_inner()
            }
            Protocol::GrpcWeb => {
                let reply = server.grpc_web::<_, pb::GetInfoResponse>(GET_INFO, &pb::GetInfoRequest {}, &[]).await;
                assert_eq!(reply.http_status, 200);
                assert_eq!(reply.grpc_status, 0, "{}", reply.grpc_message);
                reply.message.expect("grpc-web message")
            }
            Protocol::Json => {
                let res = server.http().get(server.url("/v1/system/info")).send().await.expect("json GetInfo");
                assert_eq!(res.status(), 200);
                assert!(res.headers()["content-type"].to_str().unwrap_or("").starts_with("application/json"));
                let json: serde_json::Value = res.json().await.expect("json body");
                // The zitadel dialect: lowerCamelCase, enums by name, Duration as seconds, Timestamp with Z.
                assert_eq!(json["databaseBackend"], format!("DATABASE_BACKEND_{}", expected_backend().to_uppercase()));
                let start = json["startTime"].as_str().expect("startTime");
                assert!(start.ends_with('Z'), "{start}");
                assert!(json["uptime"].as_str().expect("uptime").ends_with('s'));
                serde_json::from_value(json).expect("pbjson reads its own output")
            }
        };
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"), "{protocol:?}");
        assert!(!info.commit.is_empty(), "{protocol:?}");
        assert_eq!(
            info.database_backend,
            match expected_backend() {
                "postgres" => pb::DatabaseBackend::Postgres as i32,
                _ => pb::DatabaseBackend::Sqlite as i32,
            },
            "{protocol:?}"
        );
        assert!(info.schema_version.starts_with('m'), "{protocol:?}: {}", info.schema_version);
        let system = info.api_families.iter().find(|f| f.package == "flowgate.system.v1").expect("system family");
        assert_eq!(system.services, vec!["flowgate.system.v1.SystemService".to_owned()]);
        assert_eq!(system.rest_dialect, "zitadel");
        assert!(info.start_time.is_some() && info.uptime.is_some(), "{protocol:?}");
    }
}

#[tokio::test]
async fn health_readiness_and_grpc_health() {
    let server = Server::start().await;
    let res = server.http().get(server.url("/healthz")).send().await.expect("healthz");
    assert_eq!(res.status(), 200);
    let res = server.http().get(server.url("/readyz")).send().await.expect("readyz");
    assert_eq!(res.status(), 200);

    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for service in ["", "flowgate.system.v1.SystemService"] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.to_owned() })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            answer.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let err = health
        .check(tonic_health::pb::HealthCheckRequest { service: "no.such.Service".to_owned() })
        .await
        .expect_err("unknown service");
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_services_and_serves_descriptors_in_v1_and_v1alpha() {
    use tonic_reflection::pb::v1 as r1;
    use tonic_reflection::pb::v1alpha as r1a;

    let server = Server::start().await;
    let channel = server.channel().await;

    let mut client = r1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = vec![
        r1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
        },
        r1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(r1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "flowgate.system.v1.SystemService".to_owned(),
            )),
        },
    ];
    let mut stream = client.server_reflection_info(tokio_stream_iter(requests)).await.expect("reflection").into_inner();
    let listed = stream.message().await.expect("list").expect("answer");
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = listed.message_response
    else {
        panic!("unexpected reflection answer {listed:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["flowgate.system.v1.SystemService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    let file = stream.message().await.expect("file").expect("answer");
    let Some(r1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) = file.message_response
    else {
        panic!("unexpected reflection answer {file:?}");
    };
    let descriptors: Vec<prost_types_file::File> =
        files.file_descriptor_proto.iter().map(|b| prost_types_file::decode(b)).collect();
    assert!(descriptors.iter().any(|f| f.name == "flowgate/system/v1/system_service.proto"), "{descriptors:?}");

    let mut alpha = r1a::server_reflection_client::ServerReflectionClient::new(channel);
    let req = r1a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1a::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = alpha.server_reflection_info(tokio_stream_iter(vec![req])).await.expect("v1alpha").into_inner();
    let listed = stream.message().await.expect("list").expect("answer");
    assert!(matches!(
        listed.message_response,
        Some(r1a::server_reflection_response::MessageResponse::ListServicesResponse(_))
    ));
}

/// A request stream of the given items.
fn tokio_stream_iter<T: Send + 'static>(items: Vec<T>) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::iter(items)
}

/// Just enough of `google.protobuf.FileDescriptorProto` to read a file's name.
mod prost_types_file {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct File {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub package: String,
    }

    pub fn decode(bytes: &[u8]) -> File {
        prost::Message::decode(bytes).expect("file descriptor")
    }
}

#[tokio::test]
async fn metrics_count_requests_by_protocol() {
    let server = Server::start().await;
    let mut client = SystemServiceClient::new(server.channel().await);
    client.get_info(pb::GetInfoRequest {}).await.expect("grpc");
    let _ = server.grpc_web::<_, pb::GetInfoResponse>(GET_INFO, &pb::GetInfoRequest {}, &[]).await;
    let _ = server.http().get(server.url("/v1/system/info")).send().await.expect("json");
    let text = server.http().get(server.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    for protocol in ["grpc", "grpc-web", "json"] {
        let needle = format!("protocol=\"{protocol}\"");
        assert!(
            text.lines().any(|l| l.starts_with("flowgate_requests_total")
                && l.contains("service=\"flowgate.system.v1.SystemService\"")
                && l.contains("method=\"GetInfo\"")
                && l.contains(&needle)),
            "no GetInfo count for {protocol}:\n{text}"
        );
    }
    assert!(text.contains("flowgate_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("flowgate_db_pool_max_connections"), "{text}");
}
