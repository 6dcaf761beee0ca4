//! Sending one notification to one channel: a signed JSON webhook, a DingTalk or WeCom
//! robot message, or an email over SMTP (STARTTLS by default). Used by the outbox
//! delivery (`outbox.rs`) and by a channel's test.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// A channel as the sender needs it: its kind, settings and secret.
pub struct Target {
    pub kind: String,
    pub config: Value,
    pub secret: Option<String>,
}

/// Why a delivery failed: the HTTP status if there was one, and what went wrong.
#[derive(Debug)]
pub struct Failure {
    pub status: Option<u16>,
    pub error: String,
}

fn fail(status: Option<u16>, error: impl Into<String>) -> Failure {
    Failure {
        status,
        error: error.into(),
    }
}

/// The webhook body: what happened, to which rule, with links back.
pub fn webhook_body(message: &Value, delivery: &str, public_url: Option<&str>) -> Value {
    let rule_id = message
        .get("rule_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let base = public_url.unwrap_or("");
    json!({
        "delivery": delivery,
        "state": message.get("state"),
        "rule": {"id": message.get("rule_id"), "name": message.get("rule_name"), "type": message.get("type")},
        "episode": message.get("episode"),
        "key": message.get("key"),
        "severity": message.get("severity"),
        "value": message.get("value"),
        "threshold": message.get("threshold"),
        "window": {"start": message.get("window_start"), "end": message.get("window_end")},
        "at": message.get("at"),
        "reason": message.get("reason"),
        "details": message.get("details"),
        "links": {
            "rule": format!("{base}/api/v1/alert-rules/{rule_id}"),
            "alerts": format!("{base}/api/v1/alerts?rule={rule_id}"),
        },
    })
}

/// A short human-readable text (robots, email).
pub fn text(message: &Value, public_url: Option<&str>) -> (String, String) {
    let s = |k: &str| match message.get(k) {
        Some(Value::String(v)) => v.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    };
    let state = s("state").to_uppercase();
    let title = format!("[{state}] {} ({})", s("rule_name"), s("severity"));
    let mut body = format!("{title}\n\n");
    if !s("value").is_empty() {
        body.push_str(&format!("value: {}\n", s("value")));
    }
    if !s("threshold").is_empty() {
        body.push_str(&format!("threshold: {}\n", s("threshold")));
    }
    if !s("window_start").is_empty() {
        body.push_str(&format!(
            "window: {} – {}\n",
            s("window_start"),
            s("window_end")
        ));
    }
    if !s("key").is_empty() {
        body.push_str(&format!("key: {}\n", s("key")));
    }
    body.push_str(&format!("at: {}\n", s("at")));
    body.push_str(&format!(
        "{}/api/v1/alerts?rule={}\n",
        public_url.unwrap_or(""),
        s("rule_id")
    ));
    (title, body)
}

/// `sha256=<hex>` of HMAC-SHA256(secret, body).
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| <Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default()));
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn timeout(config: &Value) -> Duration {
    Duration::from_millis(
        config
            .get("timeout_ms")
            .and_then(Value::as_u64)
            .unwrap_or(5000),
    )
}

/// What sends: the HTTP client (connections reused), the links' base, and whether
/// private addresses may be reached.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    public_url: Option<String>,
    allow_private: bool,
}

impl Sender {
    pub fn new(settings: &crate::config::Settings) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .user_agent(concat!("cloudlens/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            public_url: settings.public_url.clone(),
            allow_private: settings.notify_allow_private,
        })
    }

    /// Sends `message` (an outbox row's message with `state` and `rule_id`) to
    /// `target`. Ok: the receiver accepted it (the status, 250 for SMTP).
    pub async fn send(
        &self,
        target: &Target,
        message: &Value,
        delivery: &str,
    ) -> Result<u16, Failure> {
        let (http, public_url) = (&self.http, self.public_url.as_deref());
        let url = target
            .config
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or_default();
        match target.kind.as_str() {
            "email" => {
                let host = target.config["host"].as_str().unwrap_or_default();
                let port =
                    u16::try_from(target.config["port"].as_u64().unwrap_or(587)).unwrap_or(587);
                self.check_destination(host, port).await?;
            }
            _ => {
                let parsed =
                    reqwest::Url::parse(url).map_err(|e| fail(None, format!("url: {e}")))?;
                let host = parsed
                    .host_str()
                    .unwrap_or_default()
                    .trim_matches(['[', ']']);
                self.check_destination(host, parsed.port_or_known_default().unwrap_or(80))
                    .await?;
            }
        }
        match target.kind.as_str() {
            "webhook" => {
                let body = serde_json::to_vec(&webhook_body(message, delivery, public_url))
                    .map_err(|e| fail(None, e.to_string()))?;
                let mut req = http
                    .post(url)
                    .timeout(timeout(&target.config))
                    .header("content-type", "application/json")
                    .header("x-cloudlens-delivery", delivery);
                // Never unsigned: a receiver must be able to trust what it gets.
                let secret = target.secret.as_deref().ok_or_else(|| {
                    fail(
                        None,
                        "the webhook's secret is missing; replace the channel with one",
                    )
                })?;
                req = req.header("x-cloudlens-signature", signature(secret, &body));
                post(req.body(body), false).await
            }
            "dingtalk" => {
                let (title, body) = text(message, public_url);
                let mut url = url.to_owned();
                if let Some(secret) = &target.secret {
                    // DingTalk's signed robots: timestamp and base64(HMAC-SHA256(secret,
                    // "timestamp\nsecret")) as query parameters.
                    let ts = chrono::Utc::now().timestamp_millis();
                    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                        .map_err(|e| fail(None, e.to_string()))?;
                    mac.update(format!("{ts}\n{secret}").as_bytes());
                    use base64::Engine;
                    let sign = base64::engine::general_purpose::STANDARD
                        .encode(mac.finalize().into_bytes());
                    let query = serde_urlencoded::to_string([
                        ("timestamp", ts.to_string()),
                        ("sign", sign),
                    ])
                    .map_err(|e| fail(None, e.to_string()))?;
                    url.push(if url.contains('?') { '&' } else { '?' });
                    url.push_str(&query);
                }
                let req = http.post(url).timeout(timeout(&target.config)).json(
                    &json!({"msgtype": "markdown", "markdown": {"title": title, "text": body}}),
                );
                post(req, true).await
            }
            "wecom" => {
                let (_, body) = text(message, public_url);
                let req = http
                    .post(url)
                    .timeout(timeout(&target.config))
                    .json(&json!({"msgtype": "markdown", "markdown": {"content": body}}));
                post(req, true).await
            }
            "email" => email(target, message, public_url).await,
            other => Err(fail(None, format!("unknown channel kind {other}"))),
        }
    }

    /// Refuses loopback, private, link-local and shared (cloud metadata) addresses unless
    /// `CLOUDLENS_NOTIFY_ALLOW_PRIVATE`: a tenant's channel must not reach the server's own
    /// network.
    async fn check_destination(&self, host: &str, port: u16) -> Result<(), Failure> {
        if self.allow_private {
            return Ok(());
        }
        let addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| fail(None, format!("{host}: {e}")))?;
        for a in addrs {
            if is_private(a.ip()) {
                return Err(fail(
                    None,
                    format!("{host} is a private address ({}); refused (CLOUDLENS_NOTIFY_ALLOW_PRIVATE)", a.ip()),
                ));
            }
        }
        Ok(())
    }
}

/// Loopback, private, link-local, shared (100.64/10: carrier NAT and some clouds' metadata
/// service), unspecified and broadcast addresses.
fn is_private(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || (first & 0xfe00) == 0xfc00
                    || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

/// Posts; a 2xx is success. Robots answer 200 with `errcode` ≠ 0 when they refuse.
async fn post(req: reqwest::RequestBuilder, robot: bool) -> Result<u16, Failure> {
    let resp = req.send().await.map_err(|e| fail(None, describe(&e)))?;
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(fail(
            Some(status),
            format!("HTTP {status}: {}", truncate(&body)),
        ));
    }
    if robot {
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if let Some(code) = body.get("errcode").and_then(Value::as_i64) {
            if code != 0 {
                return Err(fail(
                    Some(status),
                    format!("errcode {code}: {}", body["errmsg"]),
                ));
            }
        }
    }
    Ok(status)
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("connection failed: {e}")
    } else {
        e.to_string()
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

async fn email(target: &Target, message: &Value, public_url: Option<&str>) -> Result<u16, Failure> {
    use lettre::message::Mailbox;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    let c = &target.config;
    let host = c["host"].as_str().unwrap_or_default();
    let port = u16::try_from(c["port"].as_u64().unwrap_or(587)).unwrap_or(587);
    let (title, body) = text(message, public_url);
    let from: Mailbox = c["from"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| fail(None, format!("from: {e}")))?;
    let mut builder = lettre::Message::builder().from(from).subject(title);
    for to in c["to"].as_array().into_iter().flatten() {
        let to: Mailbox = to
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e| fail(None, format!("to: {e}")))?;
        builder = builder.to(to);
    }
    let email = builder.body(body).map_err(|e| fail(None, e.to_string()))?;
    let transport = match c["security"].as_str().unwrap_or("starttls") {
        "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
        "none" => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            host,
        )),
        _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
    }
    .map_err(|e| fail(None, e.to_string()))?;
    let mut transport = transport.port(port).timeout(Some(timeout(c)));
    if let (Some(user), Some(password)) = (c["username"].as_str(), &target.secret) {
        transport = transport.credentials(Credentials::new(user.to_owned(), password.clone()));
    }
    match transport.build().send(email).await {
        Ok(_) => Ok(250),
        Err(e) => Err(fail(None, format!("SMTP: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn private_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(super::is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "203.0.113.9", "2001:db8::1", "100.128.0.1"] {
            assert!(!super::is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
