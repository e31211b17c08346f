//! Delivery of one-time codes: e-mail over SMTP and text messages through an HTTP webhook.

use std::time::Duration;

use async_trait::async_trait;
use flowgate_core::session::OtpSender;
use flowgate_core::{Error, ErrorKind, Result};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Error id: a configured delivery channel failed (the caller may retry).
const DELIVERY_FAILED: &str = "OTP-delivery-failed";
/// Error id: the channel for this kind of code is not configured.
const NOT_CONFIGURED: &str = "OTP-sender-missing";

/// Sends codes through whatever channels the configuration enables.
pub struct Notifier {
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    sms_webhook: Option<(reqwest::Client, String)>,
}

impl Notifier {
    /// Builds the channels; `smtp_url` like `smtp://user:pass@host:587?tls=required` or `smtps://…`.
    pub fn new(
        smtp_url: Option<&str>,
        smtp_from: Option<&str>,
        sms_webhook_url: Option<&str>,
    ) -> std::result::Result<Self, String> {
        let smtp = match (smtp_url, smtp_from) {
            (Some(url), Some(from)) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| format!("invalid configuration key `smtp_url`: {e}"))?
                    .timeout(Some(Duration::from_secs(10)))
                    .build();
                let from: Mailbox = from.parse().map_err(|e| format!("invalid configuration key `smtp_from`: {e}"))?;
                Some((transport, from))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err("invalid configuration key `smtp_from`: required when smtp_url is set".to_owned());
            }
            (None, Some(_)) => {
                return Err("invalid configuration key `smtp_url`: required when smtp_from is set".to_owned());
            }
        };
        let sms_webhook = match sms_webhook_url {
            Some(url) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| format!("sms webhook client: {e}"))?;
                Some((client, url.to_owned()))
            }
            None => None,
        };
        Ok(Self { smtp, sms_webhook })
    }
}

fn failed(channel: &str, err: impl std::fmt::Display) -> Error {
    // The cause goes to the log at the edge; callers learn only that delivery failed.
    Error::new(ErrorKind::Unavailable, DELIVERY_FAILED, format!("the {channel} could not be delivered; try again"))
        .with_source(err.to_string())
}

#[async_trait]
impl OtpSender for Notifier {
    async fn send_sms(&self, to: &str, code: &str) -> Result<()> {
        let Some((client, url)) = &self.sms_webhook else {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                NOT_CONFIGURED,
                "text messages are not configured; set sms_webhook_url or ask for return_code",
            ));
        };
        let body = serde_json::json!({ "to": to, "code": code, "purpose": "otp" });
        let res = client.post(url).json(&body).send().await.map_err(|e| failed("text message", e))?;
        if !res.status().is_success() {
            return Err(failed("text message", format!("webhook answered {}", res.status())));
        }
        Ok(())
    }

    async fn send_email(&self, to: &str, code: &str, url: Option<&str>) -> Result<()> {
        let Some((transport, from)) = &self.smtp else {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                NOT_CONFIGURED,
                "e-mail is not configured; set smtp_url and smtp_from or ask for return_code",
            ));
        };
        let to: Mailbox = to.parse().map_err(|e| failed("e-mail", e))?;
        let mut text = format!("Your verification code is {code}. It is valid for 5 minutes.\n");
        if let Some(url) = url {
            text.push_str(&format!("\nOr open {url}\n"));
        }
        let message = Message::builder()
            .from(from.clone())
            .to(to)
            .subject("Your verification code")
            .body(text)
            .map_err(|e| failed("e-mail", e))?;
        transport.send(message).await.map_err(|e| failed("e-mail", e))?;
        Ok(())
    }
}
