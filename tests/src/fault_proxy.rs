//! A loopback HTTP proxy in front of an AWS emulator that answers the next requests itself
//! with the errors AWS sends when it throttles or fails — which moto cannot be made to do —
//! and forwards every other request unchanged. The `Host` header is forwarded as the client
//! sent it, so SigV4 signatures (which cover it) still verify upstream.
//!
//! The error shapes are AWS's: the query protocol (IAM) answers XML `ErrorResponse`s, the
//! JSON protocols (sso-admin, identitystore) a `__type` body and `x-amzn-ErrorType`.
//!
//! For emulated services that do not check signatures, the proxy can also refuse every
//! request signed with another access key id than the one it is told, as AWS refuses an
//! unknown key (`UnrecognizedClientException`).
//! <https://docs.aws.amazon.com/IAM/latest/APIReference/CommonErrors.html>

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::task::JoinHandle;

/// How the upstream API encodes its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// AWS query protocol (IAM): XML error responses.
    Query,
    /// AWS JSON 1.1 (sso-admin, identitystore).
    Json,
}

struct Shared {
    upstream: String,
    protocol: Protocol,
    throttles: AtomicU32,
    failures: AtomicU32,
    injected: AtomicU32,
    key_id: std::sync::Mutex<Option<String>>,
    client: reqwest::Client,
}

/// The running proxy; stopped when dropped.
pub struct FaultProxy {
    /// Point the connector's `endpoint_url` here.
    pub endpoint: String,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FaultProxy {
    /// Starts on a free loopback port, forwarding to `upstream` (`http://127.0.0.1:port`).
    pub async fn start(upstream: &str, protocol: Protocol) -> FaultProxy {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            protocol,
            throttles: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            injected: AtomicU32::new(0),
            key_id: std::sync::Mutex::new(None),
            client: reqwest::Client::new(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("fault proxy: cannot bind: {err}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("fault proxy: {err}"))
            .port();
        let app = Router::new()
            .fallback(forward)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            shared,
            server,
        }
    }

    /// The next `n` requests are throttled.
    pub fn throttle_next(&self, n: u32) {
        self.shared.throttles.store(n, Ordering::SeqCst);
    }

    /// The next `n` requests fail with a server error.
    pub fn fail_next(&self, n: u32) {
        self.shared.failures.store(n, Ordering::SeqCst);
    }

    /// Refuses requests not signed with `key_id` from now on.
    pub fn require_key_id(&self, key_id: &str) {
        if let Ok(mut required) = self.shared.key_id.lock() {
            *required = Some(key_id.to_string());
        }
    }

    /// How many faults the proxy has answered so far.
    pub fn injected(&self) -> u32 {
        self.shared.injected.load(Ordering::SeqCst)
    }
}

/// Takes one from `counter` if it is above zero.
fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn fault(protocol: Protocol, throttled: bool) -> Response {
    let (status, code, message) = if throttled {
        (StatusCode::BAD_REQUEST, "Throttling", "Rate exceeded")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Service is unavailable",
        )
    };
    match protocol {
        Protocol::Query => (
            status,
            [("content-type", "text/xml")],
            format!(
                "<ErrorResponse xmlns=\"https://iam.amazonaws.com/doc/2010-05-08/\"><Error><Type>{}</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>deprov-fault-proxy</RequestId></ErrorResponse>",
                if throttled { "Sender" } else { "Receiver" }
            ),
        )
            .into_response(),
        Protocol::Json => {
            let code = if throttled {
                "ThrottlingException"
            } else {
                "InternalServerException"
            };
            (
                status,
                [
                    ("content-type", "application/x-amz-json-1.1"),
                    ("x-amzn-errortype", code),
                ],
                format!("{{\"__type\":\"{code}\",\"message\":\"{message}\"}}"),
            )
                .into_response()
        }
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let required = shared.key_id.lock().ok().and_then(|key| key.clone());
    if let Some(key_id) = required {
        let signed_with = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split("Credential=").nth(1))
            .and_then(|credential| credential.split('/').next())
            .unwrap_or_default();
        if signed_with != key_id {
            let message = "The security token included in the request is invalid.";
            return match shared.protocol {
                Protocol::Query => (
                    StatusCode::FORBIDDEN,
                    [("content-type", "text/xml")],
                    format!("<ErrorResponse><Error><Type>Sender</Type><Code>InvalidClientTokenId</Code><Message>{message}</Message></Error><RequestId>deprov-fault-proxy</RequestId></ErrorResponse>"),
                )
                    .into_response(),
                Protocol::Json => (
                    StatusCode::BAD_REQUEST,
                    [
                        ("content-type", "application/x-amz-json-1.1"),
                        ("x-amzn-errortype", "UnrecognizedClientException"),
                    ],
                    format!("{{\"__type\":\"UnrecognizedClientException\",\"message\":\"{message}\"}}"),
                )
                    .into_response(),
            };
        }
    }
    for (counter, throttled) in [(&shared.throttles, true), (&shared.failures, false)] {
        if take(counter) {
            shared.injected.fetch_add(1, Ordering::SeqCst);
            return fault(shared.protocol, throttled);
        }
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = shared
        .client
        .request(method, format!("{}{path}", shared.upstream))
        .body(body);
    for (name, value) in &headers {
        if name != "content-length" && name != "transfer-encoding" {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(upstream) => {
            let status = upstream.status();
            let mut response_headers = HeaderMap::new();
            for (name, value) in upstream.headers() {
                if name != "content-length" && name != "transfer-encoding" {
                    response_headers.insert(name, value.clone());
                }
            }
            let bytes = upstream.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            *response.headers_mut() = response_headers;
            response
        }
        Err(err) => (StatusCode::BAD_GATEWAY, format!("fault proxy: {err}")).into_response(),
    }
}
