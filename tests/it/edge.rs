//! Edge behaviour shared by every route: CORS, request ids, transport errors, shutdown.

use flowgate::pb::flowgate::system::v1 as pb;
use flowgate::pb::flowgate::system::v1::system_service_client::SystemServiceClient;

use crate::harness::Server;

const ALLOWED: &str = "https://login.example.com";

#[tokio::test]
async fn cors_preflight_allows_listed_origins_only() {
    let server = Server::start_with(&["--cors-origin", ALLOWED]).await;
    for path in ["/v1/system/info", "/flowgate.system.v1.SystemService/GetInfo"] {
        let res = server
            .http()
            .request(reqwest::Method::OPTIONS, server.url(path))
            .header("origin", ALLOWED)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-grpc-web,authorization")
            .send()
            .await
            .expect("preflight");
        assert!(res.status().is_success(), "{path}: {}", res.status());
        assert_eq!(res.headers()["access-control-allow-origin"], ALLOWED, "{path}");
        let allowed = res.headers()["access-control-allow-headers"].to_str().expect("ascii").to_ascii_lowercase();
        assert!(allowed.contains("x-grpc-web") && allowed.contains("authorization"), "{allowed}");

        let refused = server
            .http()
            .request(reqwest::Method::OPTIONS, server.url(path))
            .header("origin", "https://evil.example.com")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .expect("preflight");
        assert!(
            refused.headers().get("access-control-allow-origin").is_none(),
            "{path}: refused origin got CORS headers"
        );
    }
    // A simple cross-origin GET from the allowed origin sees the exposed gRPC headers.
    let res = server.http().get(server.url("/v1/system/info")).header("origin", ALLOWED).send().await.expect("get");
    assert_eq!(res.headers()["access-control-allow-origin"], ALLOWED);
    let exposed = res.headers()["access-control-expose-headers"].to_str().expect("ascii").to_ascii_lowercase();
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"] {
        assert!(exposed.contains(h), "{h} not exposed: {exposed}");
    }
    let varies = |res: &reqwest::Response| -> Vec<String> {
        let mut names: Vec<String> = res
            .headers()
            .get_all("vary")
            .iter()
            .flat_map(|v| {
                v.to_str().expect("ascii").split(',').map(|n| n.trim().to_ascii_lowercase()).collect::<Vec<_>>()
            })
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let cross_origin = varies(&res);
    assert!(cross_origin.contains(&"origin".to_owned()), "{cross_origin:?}");
    // Without an Origin (no browser) there is nothing to allow, but the answer varies by the same headers, so a
    // cache never hands it to a browser.
    let res = server.http().get(server.url("/v1/system/info")).send().await.expect("get without origin");
    assert!(res.status().is_success());
    assert!(res.headers().keys().all(|name| !name.as_str().starts_with("access-control-")), "{:?}", res.headers());
    assert_eq!(varies(&res), cross_origin);
}

#[tokio::test]
async fn request_id_is_echoed_or_generated_on_every_protocol() {
    let server = Server::start().await;
    let res =
        server.http().get(server.url("/v1/system/info")).header("x-request-id", "abc-123").send().await.expect("json");
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    let res = server.http().get(server.url("/v1/system/info")).send().await.expect("json");
    let generated = res.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    assert!(generated.len() >= 16, "{generated}");
    // A header that could forge log lines is replaced, not echoed.
    let res =
        server.http().get(server.url("/v1/system/info")).header("x-request-id", "a b\"c").send().await.expect("json");
    assert_ne!(res.headers()["x-request-id"], "a b\"c");

    let reply = server
        .grpc_web::<_, pb::GetInfoResponse>(
            "/flowgate.system.v1.SystemService/GetInfo",
            &pb::GetInfoRequest {},
            &[("x-request-id", "web-7")],
        )
        .await;
    assert_eq!(reply.headers["x-request-id"], "web-7");

    let mut client = SystemServiceClient::new(server.channel().await);
    let mut req = tonic::Request::new(pb::GetInfoRequest {});
    req.metadata_mut().insert("x-request-id", "grpc-9".parse().expect("ascii"));
    let res = client.get_info(req).await.expect("grpc");
    assert_eq!(res.metadata().get("x-request-id").and_then(|v| v.to_str().ok()), Some("grpc-9"));

    // Error bodies carry the id too, so a user's report can be matched to the server's log.
    let res =
        server.http().get(server.url("/v1/nothing-here")).header("x-request-id", "err-1").send().await.expect("404");
    let body = res.text().await.expect("body");
    assert!(body.contains("err-1"), "{body}");
    let logs = server.logs().await.join("\n");
    assert!(logs.contains("listening"), "{logs}");
}

#[tokio::test]
async fn transport_errors_in_the_zitadel_dialect() {
    let server = Server::start_with(&["--body-limit", "2048"]).await;
    // No route.
    let res = server.http().get(server.url("/v2/nothing")).send().await.expect("404");
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.expect("json error");
    assert_eq!(body["code"], 5, "{body}");
    assert!(body["message"].is_string());
    // Known path, wrong method → 405 with gRPC code 12.
    let res = server.http().post(server.url("/v1/system/info")).json(&serde_json::json!({})).send().await.expect("405");
    assert_eq!(res.status(), 405);
    assert!(res.headers().get("allow").is_some());
    let body: serde_json::Value = res.json().await.expect("json error");
    assert_eq!(body["code"], 12, "{body}");
    // gRPC to an unknown method → Unimplemented, never a 5xx.
    let reply = server
        .grpc_web::<_, pb::GetInfoResponse>("/flowgate.system.v1.SystemService/Nope", &pb::GetInfoRequest {}, &[])
        .await;
    assert_eq!(reply.grpc_status, 12);
    // A gRPC or gRPC-web message over the body limit is refused by the codec, not handled, and the
    // server stays fine.
    let big = flowgate::pb::flowgate::user::v2::AddMachineUserRequest {
        username: "x".repeat(4096),
        name: "big".into(),
        ..Default::default()
    };
    for protocol in [crate::harness::Protocol::Grpc, crate::harness::Protocol::GrpcWeb] {
        let c = crate::client::Client::new(&server, protocol).with_token(&server.admin_token());
        let res = c
            .call::<_, flowgate::pb::flowgate::user::v2::AddMachineUserResponse>(
                "/flowgate.user.v2.UserService/AddMachineUser",
                big.clone(),
            )
            .await;
        let failure = res.expect_err("oversized message");
        assert!(
            matches!(failure.code, tonic::Code::ResourceExhausted | tonic::Code::OutOfRange),
            "{protocol:?}: {failure:?}"
        );
    }
    let mut client = SystemServiceClient::new(server.channel().await);
    let _ = client.get_info(pb::GetInfoRequest {}).await.expect("still fine");
}

#[tokio::test]
async fn grpc_web_text_is_served() {
    use base64::Engine as _;
    let server = Server::start().await;
    let frame = [0u8, 0, 0, 0, 0];
    let body = base64::engine::general_purpose::STANDARD.encode(frame);
    let res = server
        .http()
        .post(server.url("/flowgate.system.v1.SystemService/GetInfo"))
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .body(body)
        .send()
        .await
        .expect("grpc-web-text");
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"].to_str().expect("ascii").starts_with("application/grpc-web-text"));
    let text = res.text().await.expect("body");
    // The answer is several padded base64 chunks back to back (data frame, then trailers); every
    // 4-character quantum decodes on its own.
    let text = text.trim();
    assert_eq!(text.len() % 4, 0, "{text}");
    let mut raw = Vec::new();
    for quantum in text.as_bytes().chunks(4) {
        raw.extend(base64::engine::general_purpose::STANDARD.decode(quantum).expect("base64 quantum"));
    }
    assert_eq!(raw.first(), Some(&0u8), "first frame is data");
    let trailer = String::from_utf8_lossy(&raw);
    assert!(trailer.contains("grpc-status:0"), "{trailer}");
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    let server = Server::start().await;
    let res = server.http().get(server.url("/healthz")).send().await.expect("healthz");
    assert_eq!(res.status(), 200);
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn tls_serves_http2_and_http1_by_alpn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start_with(&[
        "--tls-cert",
        cert.to_str().expect("utf-8 path"),
        "--tls-key",
        key.to_str().expect("utf-8 path"),
    ])
    .await;
    let root = reqwest::Certificate::from_pem(&std::fs::read(&cert).expect("cert")).expect("pem");
    let url = format!("https://{}/v1/system/info", server.addr);
    for (client, version) in [
        (
            reqwest::Client::builder().add_root_certificate(root.clone()).build().expect("client"),
            reqwest::Version::HTTP_2,
        ),
        (
            reqwest::Client::builder().add_root_certificate(root).http1_only().build().expect("client"),
            reqwest::Version::HTTP_11,
        ),
    ] {
        let res = client.get(&url).send().await.expect("https");
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), version);
        let json: serde_json::Value = res.json().await.expect("json");
        assert!(json["version"].is_string(), "{json}");
    }
    // Plain HTTP on the TLS port is refused rather than answered in the clear.
    assert!(server.http().get(server.url("/v1/system/info")).send().await.is_err());
}

#[tokio::test]
async fn body_errors_in_the_zitadel_dialect() {
    let server = Server::start_with(&["--body-limit", "2048"]).await;
    let token = server.admin_token();
    let url = server.url("/v2/users/human");
    // Unsupported content type on a route with a body.
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let res = server
            .http()
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", ct)
            .body("username=x")
            .send()
            .await
            .expect("415");
        assert_eq!(res.status(), 415, "{ct}");
        let body: serde_json::Value = res.json().await.expect("json error");
        assert!(body["code"].is_number() && body["message"].is_string(), "{body}");
    }
    // Body over the limit.
    let big = serde_json::json!({"username": "x".repeat(4096)});
    let res = server.http().post(&url).bearer_auth(&token).json(&big).send().await.expect("413");
    assert_eq!(res.status(), 413);
    let body: serde_json::Value = res.json().await.expect("json error");
    assert_eq!(body["code"], 8, "{body}");
    // Malformed JSON names the problem.
    let res = server
        .http()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .expect("400");
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.expect("json error");
    assert_eq!(body["code"], 3);
    assert!(body["message"].as_str().unwrap_or_default().contains("line"), "{body}");
    // A field of the wrong type is named.
    let res = server
        .http()
        .post(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!({"username": 5, "profile": {"givenName": "a", "familyName": "b"}}))
        .send()
        .await
        .expect("400");
    assert_eq!(res.status(), 400);
    let body = res.text().await.expect("text");
    assert!(body.contains("username"), "{body}");
}

/// NUL and other control characters are client input: a 400 naming the field on every backend, never a
/// 500 from PostgreSQL refusing to store them.
#[tokio::test]
async fn control_characters_are_refused_not_failed() {
    let server = Server::start().await;
    let token = server.admin_token();
    for path in ["/v2/users/a%00b", "/v2/sessions/%00", "/v2/idps/x%01y", "/api/v3/flows/instances/a%00/"] {
        let res = server.http().get(server.url(path)).bearer_auth(&token).send().await.expect("send");
        let status = res.status().as_u16();
        let body = res.text().await.expect("body");
        assert!(status == 400 || status == 404, "{path}: {status} {body}");
    }
    let res = server
        .http()
        .post(server.url("/v2/users/human"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "username": "nul-user",
            "profile": {"givenName": "A\u{0}B", "familyName": "C"},
            "email": {"email": "nul@example.com"}
        }))
        .send()
        .await
        .expect("send");
    let status = res.status().as_u16();
    assert!(status < 500, "a NUL in a name is the client's mistake: {status} {}", res.text().await.unwrap_or_default());
}
