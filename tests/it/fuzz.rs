//! Throws random and mutated requests at the JSON and gRPC-web routes: no 5xx, and the server lives.

use flowgate::pb::flowgate::system::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::Server;

const PATHS: &[&str] = &[
    "/v1/system/info",
    "/v1/system/info/",
    "/v1/system/%2e%2e/info",
    "/v2/sessions/abc",
    "/api/v3/flows/instances/x/",
    "/flowgate.system.v1.SystemService/GetInfo",
    "/management/v1/flows/1/_clear",
    "/",
    "//",
    "/v1/system/info?x=%zz",
];
const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/grpc-web+proto",
    "application/grpc-web-text",
    "application/grpc-web",
    "application/vnd.pingidentity.session.reset+json",
    "",
    "garbage/\u{7f}",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "FOO"];

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..rng.random_range(0..8) {
        match rng.random_range(0..4) {
            0 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] = rng.random();
            }
            1 => {
                let i = rng.random_range(0..=out.len());
                out.insert(i, rng.random());
            }
            2 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out.remove(i);
            }
            _ => out.extend((0..rng.random_range(0..64)).map(|_| rng.random::<u8>())),
        }
    }
    out
}

fn random_path(rng: &mut StdRng) -> String {
    let base = PATHS[rng.random_range(0..PATHS.len())];
    let mutated = mutate(rng, base.as_bytes());
    // Keep it a syntactically valid request target, so the server (not the client) is tested.
    let mut path: String = mutated
        .into_iter()
        .map(|b| if b.is_ascii_graphic() && b != b'#' { char::from(b) } else { '%' })
        .map(|c| if c == '%' { "%25".to_owned() } else { c.to_string() })
        .collect();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    path
}

#[tokio::test]
async fn a_thousand_bad_requests_never_get_a_5xx() {
    let server = Server::start_with(&["--body-limit", "65536"]).await;
    let mut rng = StdRng::seed_from_u64(0x5eed_f10a);
    let seeds: Vec<Vec<u8>> = vec![
        br#"{"sessionToken":"x","checks":{"user":{"loginName":"a"}}}"#.to_vec(),
        br#"{"title":"New","slug":"a-b","designation":"authentication"}"#.to_vec(),
        b"\x00\x00\x00\x00\x00".to_vec(),
        b"\x00\x00\x00\x00\x05\x0a\x03abc".to_vec(),
        b"AAAAAAA=".to_vec(),
        b"[1,2,{\"a\":".to_vec(),
        Vec::new(),
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let method = METHODS[rng.random_range(0..METHODS.len())];
        let path = random_path(&mut rng);
        let ct = CONTENT_TYPES[rng.random_range(0..CONTENT_TYPES.len())];
        let seed = rng.random_range(0..seeds.len());
        let body = mutate(&mut rng, &seeds[seed]);
        let mut req = server
            .http()
            .request(reqwest::Method::from_bytes(method.as_bytes()).expect("method"), server.url(&path))
            .body(body.clone());
        if let Ok(v) = reqwest::header::HeaderValue::from_str(ct)
            && !ct.is_empty()
        {
            req = req.header("content-type", v);
        }
        if rng.random_bool(0.3) {
            let junk: String =
                (0..rng.random_range(1..40)).map(|_| char::from(rng.random_range(0x21u8..0x7e))).collect();
            req = req.header(
                ["authorization", "x-zitadel-orgid", "x-forwarded-for", "x-request-id", "grpc-timeout"][i % 5],
                junk,
            );
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("request {i} {method} {path} failed: {e}"));
        let status = res.status().as_u16();
        *statuses.entry(status).or_insert(0u32) += 1;
        let text = res.text().await.unwrap_or_default();
        assert!(status < 500, "request {i}: {method} {path} ({ct}) body {body:?} → {status} {text}");
    }
    // Still alive and correct.
    let res = server.http().get(server.url("/v1/system/info")).send().await.expect("alive");
    assert_eq!(res.status(), 200, "statuses seen: {statuses:?}");
    let reply = server
        .grpc_web::<_, pb::GetInfoResponse>("/flowgate.system.v1.SystemService/GetInfo", &pb::GetInfoRequest {}, &[])
        .await;
    assert_eq!(reply.grpc_status, 0);
}
