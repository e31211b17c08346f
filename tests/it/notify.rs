//! One-time codes delivered for real: e-mail through an SMTP server and text messages through a webhook,
//! both run by the test on loopback.

use std::sync::Arc;

use flowgate::pb::flowgate::session::v2 as pb;
use flowgate::pb::flowgate::user::v2 as user;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::client::Client;
use crate::harness::{Protocol, Server};

/// A minimal SMTP server that accepts every message and keeps its text.
async fn smtp_sink() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
    let addr = listener.local_addr().expect("addr");
    let mails = Arc::new(Mutex::new(Vec::new()));
    let sink = mails.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let sink = sink.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                let mut data = None::<String>;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(body) = data.as_mut() {
                        if line == "." {
                            sink.lock().await.push(std::mem::take(body));
                            data = None;
                            let _ = write.write_all(b"250 queued\r\n").await;
                        } else {
                            body.push_str(&line);
                            body.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 sink\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    (addr, mails)
}

/// A webhook receiver keeping every JSON body it gets.
async fn webhook_sink() -> (std::net::SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/sms",
        axum::routing::post(move |body: bytes::Bytes| {
            let sink = sink.clone();
            async move {
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                sink.lock().await.push(json);
                "ok"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind webhook");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, received)
}

#[tokio::test]
async fn email_and_sms_codes_are_delivered_and_check() {
    let (smtp, mails) = smtp_sink().await;
    let (hook, texts) = webhook_sink().await;
    let smtp_url = format!("smtp://{smtp}");
    let hook_url = format!("http://{hook}/sms");
    let server = Server::start_with(&[
        "--smtp-url",
        &smtp_url,
        "--smtp-from",
        "login@example.com",
        "--sms-webhook-url",
        &hook_url,
    ])
    .await;
    let c = Client::new(&server, Protocol::Json).with_token(&server.admin_token());
    let added: user::AddHumanUserResponse = c
        .call(
            "/flowgate.user.v2.UserService/AddHumanUser",
            user::AddHumanUserRequest {
                username: Some("texted".into()),
                profile: Some(user::SetHumanProfile {
                    given_name: "T".into(),
                    family_name: "X".into(),
                    ..Default::default()
                }),
                email: Some(user::SetHumanEmail {
                    email: "texted@example.com".into(),
                    verification: Some(user::set_human_email::Verification::IsVerified(true)),
                }),
                phone: Some(user::SetHumanPhone {
                    phone: "+41790000000".into(),
                    verification: Some(user::set_human_phone::Verification::IsVerified(true)),
                }),
                ..Default::default()
            },
        )
        .await
        .expect("user");
    let created: pb::CreateSessionResponse = c
        .call(
            "/flowgate.session.v2.SessionService/CreateSession",
            pb::CreateSessionRequest {
                checks: Some(pb::Checks {
                    user: Some(pb::CheckUser { search: Some(pb::check_user::Search::UserId(added.user_id.clone())) }),
                    ..Default::default()
                }),
                challenges: Some(pb::RequestChallenges {
                    otp_sms: Some(pb::request_challenges::Otpsms { return_code: false }),
                    otp_email: Some(pb::request_challenges::OtpEmail {
                        delivery_type: Some(pb::request_challenges::otp_email::DeliveryType::SendCode(
                            pb::request_challenges::otp_email::SendCode { url_template: None },
                        )),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("challenges sent");
    assert!(
        created.challenges.as_ref().is_none_or(|c| c.otp_sms.is_none() && c.otp_email.is_none()),
        "codes are not returned when sent"
    );
    let mail = mails.lock().await.first().cloned().expect("an e-mail arrived");
    let text = texts.lock().await.first().cloned().expect("a text message arrived");
    assert_eq!(text["to"], "+41790000000");
    let sms_code = text["code"].as_str().expect("code").to_owned();
    let email_code = mail
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 8)
        .expect("an 8-digit code in the mail")
        .to_owned();
    let _: pb::SetSessionResponse = c
        .call(
            "/flowgate.session.v2.SessionService/SetSession",
            pb::SetSessionRequest {
                session_id: created.session_id.clone(),
                checks: Some(pb::Checks {
                    otp_sms: Some(pb::CheckOtp { code: sms_code }),
                    otp_email: Some(pb::CheckOtp { code: email_code }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("both codes check");
}
