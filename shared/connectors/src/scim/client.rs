//! HTTP plumbing of the SCIM connector: the bearer token (fetched lazily through the
//! `SecretSource`, cached for five minutes, never logged), bounded reads of response
//! bodies, and the mapping of HTTP outcomes onto `ConnectorError`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deprov_core::ports::{SecretError, SecretSource};
use deprov_core::ConnectorError;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, ETAG, IF_MATCH, RETRY_AFTER};
use reqwest::{Method, Url};
use serde_json::Value;

/// The most of a response body the connector reads.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// How long a fetched bearer token is reused before the secret is read again.
const TOKEN_TTL: Duration = Duration::from_secs(300);
const SCIM_JSON: &str = "application/scim+json";
/// The longest server `detail` quoted in an error message.
const MAX_DETAIL_CHARS: usize = 300;

/// A response the caller wants to look at (2xx, or a status it asked to see).
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    /// `ETag` header, else `meta.version` of the body.
    pub version: Option<String>,
    /// The JSON body; `Null` when empty (e.g. `204 No Content`).
    pub body: Value,
}

/// What an error message needs to name: never the token itself.
#[derive(Clone, Debug)]
pub(crate) struct ErrorContext<'a> {
    pub system: &'a str,
    pub secret: &'a str,
    pub token_field: &'a str,
    /// `GET /Users/42`
    pub request: &'a str,
}

struct CachedToken {
    value: String,
    fetched: Instant,
}

pub(crate) struct Http {
    system: String,
    base: Url,
    client: reqwest::Client,
    secrets: Arc<dyn SecretSource>,
    secret_name: String,
    token_field: String,
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

impl Http {
    pub(crate) fn new(
        system: &str,
        base: Url,
        timeout: Duration,
        max_idle: usize,
        secrets: Arc<dyn SecretSource>,
        secret_name: &str,
        token_field: &str,
    ) -> Result<Http, ConnectorError> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .pool_max_idle_per_host(max_idle)
            .user_agent(concat!("deprov/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| {
                ConnectorError::InvalidConfig(format!(
                    "system \"{system}\": cannot build the HTTP client: {err}"
                ))
            })?;
        Ok(Http {
            system: system.to_string(),
            base,
            client,
            secrets,
            secret_name: secret_name.to_string(),
            token_field: token_field.to_string(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    /// The bearer token, from the cache while it is fresh.
    async fn bearer(&self) -> Result<String, ConnectorError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref() {
            if token.fetched.elapsed() < TOKEN_TTL {
                return Ok(token.value.clone());
            }
        }
        let secret = self
            .secrets
            .secret(&self.secret_name)
            .await
            .map_err(|err| secret_error(&self.system, &err))?;
        let value = secret
            .field(&self.token_field)
            .map_err(|err| secret_error(&self.system, &err))?
            .to_string();
        if value.trim().is_empty() {
            return Err(ConnectorError::InvalidConfig(format!(
                "system \"{}\": field \"{}\" of secret \"{}\" is empty; store the SCIM bearer token there",
                self.system, self.token_field, self.secret_name
            )));
        }
        *cached = Some(CachedToken {
            value: value.clone(),
            fetched: Instant::now(),
        });
        Ok(value)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// Sends one request. 2xx and the statuses in `pass` come back as a `Reply`; every
    /// other outcome is mapped onto a `ConnectorError`.
    pub(crate) async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
        if_match: Option<&str>,
        pass: &[u16],
    ) -> Result<Reply, ConnectorError> {
        let request = describe(&method, segments);
        let token = self.bearer().await?;
        let mut builder = self
            .client
            .request(method.clone(), self.url(segments))
            .bearer_auth(&token)
            .header(ACCEPT, format!("{SCIM_JSON}, application/json"));
        if !query.is_empty() {
            builder = builder.query(query);
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body).map_err(|err| {
                ConnectorError::Permanent(format!("cannot encode the body of {request}: {err}"))
            })?;
            builder = builder.header(CONTENT_TYPE, SCIM_JSON).body(bytes);
        }
        if let Some(version) = if_match {
            builder = builder.header(IF_MATCH, version);
        }
        tracing::debug!(system = %self.system, %request, if_match = if_match.is_some(), "scim request");
        let response = builder
            .send()
            .await
            .map_err(|err| transport_error(&self.system, &request, &err))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = read_bounded(response, &self.system, &request).await?;
        tracing::debug!(system = %self.system, %request, status, bytes = bytes.len(), "scim response");
        let ok = (200..300).contains(&status) || pass.contains(&status);
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(value) => value,
                Err(_) if !ok => Value::String(snippet(&String::from_utf8_lossy(&bytes))),
                Err(err) => {
                    return Err(ConnectorError::Permanent(format!(
                        "system \"{}\": {request} answered HTTP {status} with a body that is not JSON ({err})",
                        self.system
                    )))
                }
            }
        };
        if ok {
            let version = header_str(&headers, ETAG.as_str())
                .or_else(|| body["meta"]["version"].as_str().map(str::to_string));
            return Ok(Reply {
                status,
                version,
                body,
            });
        }
        if status == 401 || status == 403 {
            self.forget_token().await;
        }
        let context = ErrorContext {
            system: &self.system,
            secret: &self.secret_name,
            token_field: &self.token_field,
            request: &request,
        };
        let retry_after = header_str(&headers, RETRY_AFTER.as_str());
        let err = status_error(&context, status, retry_after.as_deref(), &body, Utc::now());
        Err(redact(err, &token))
    }
}

/// `GET /Users/42`: how requests are named in errors, logs and evidence.
pub(crate) fn describe(method: &Method, segments: &[&str]) -> String {
    format!("{method} /{}", segments.join("/"))
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

async fn read_bounded(
    mut response: reqwest::Response,
    system: &str,
    request: &str,
) -> Result<Vec<u8>, ConnectorError> {
    let too_large = || {
        ConnectorError::Permanent(format!(
            "system \"{system}\": the answer to {request} is larger than {} MiB; refusing to read it",
            MAX_BODY_BYTES / (1024 * 1024)
        ))
    };
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| transport_error(system, request, &err))?
    {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

fn transport_error(system: &str, request: &str, err: &reqwest::Error) -> ConnectorError {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    // The URL carries no secret (userinfo is refused in base_url); the error chain names
    // the cause (DNS, TLS, reset).
    let mut cause = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        cause = format!(": {inner}");
        source = inner.source();
    }
    ConnectorError::Transient(format!("system \"{system}\": {request} {what}{cause}"))
}

/// The error of a secret the connector could not read. The message names the secret and
/// the field (never a value).
pub(crate) fn secret_error(system: &str, err: &SecretError) -> ConnectorError {
    match err {
        SecretError::NotFound(_) | SecretError::MissingField { .. } => {
            ConnectorError::InvalidConfig(format!(
                "system \"{system}\" cannot get its SCIM bearer token: {err}"
            ))
        }
        SecretError::Unreadable { .. } => ConnectorError::Transient(format!(
            "system \"{system}\" cannot get its SCIM bearer token: {err}"
        )),
    }
}

/// Replaces any occurrence of the token in an error message (a server echoing it back).
fn redact(err: ConnectorError, token: &str) -> ConnectorError {
    if token.len() < 4 {
        return err;
    }
    let clean = |message: String| message.replace(token, "[redacted]");
    match err {
        ConnectorError::Throttled {
            retry_after,
            message,
        } => ConnectorError::Throttled {
            retry_after,
            message: clean(message),
        },
        ConnectorError::Transient(m) => ConnectorError::Transient(clean(m)),
        ConnectorError::Permanent(m) => ConnectorError::Permanent(clean(m)),
        ConnectorError::Unauthorized(m) => ConnectorError::Unauthorized(clean(m)),
        ConnectorError::NotFound(m) => ConnectorError::NotFound(clean(m)),
        ConnectorError::Unsupported(m) => ConnectorError::Unsupported(clean(m)),
        ConnectorError::InvalidConfig(m) => ConnectorError::InvalidConfig(clean(m)),
    }
}

fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The SCIM error's `scimType` and `detail` (RFC 7644 §3.12).
fn scim_error_parts(body: &Value) -> (Option<&str>, Option<String>) {
    let detail = match body {
        Value::String(text) => Some(snippet(text)),
        _ => body["detail"].as_str().map(snippet),
    };
    (body["scimType"].as_str(), detail.filter(|d| !d.is_empty()))
}

/// Maps a non-success HTTP status onto the error the orchestrator acts on.
pub(crate) fn status_error(
    ctx: &ErrorContext<'_>,
    status: u16,
    retry_after: Option<&str>,
    body: &Value,
    now: DateTime<Utc>,
) -> ConnectorError {
    let ErrorContext {
        system,
        secret,
        token_field,
        request,
    } = ctx;
    let (scim_type, plain) = scim_error_parts(body);
    let detail = match (scim_type, &plain) {
        (Some(kind), Some(text)) => format!(" ({kind}: {text})"),
        (Some(kind), None) => format!(" ({kind})"),
        (None, Some(text)) => format!(" ({text})"),
        (None, None) => String::new(),
    };
    let answered = format!("system \"{system}\": {request} answered HTTP {status}{detail}");
    let delay = retry_after.and_then(|value| parse_retry_after(value, now));
    match status {
        401 => ConnectorError::Unauthorized(format!(
            "the SCIM server of system \"{system}\" refused the bearer token from secret \"{secret}\" field \"{token_field}\" (HTTP 401); rotate that secret"
        )),
        403 => ConnectorError::Unauthorized(format!(
            "the SCIM server of system \"{system}\" refused {request} with the bearer token from secret \"{secret}\" field \"{token_field}\" (HTTP 403{}); rotate that secret or grant its client the right to manage users and groups",
            plain.map(|text| format!(": {text}")).unwrap_or_default()
        )),
        429 => ConnectorError::Throttled {
            retry_after: delay,
            message: answered,
        },
        503 if delay.is_some() => ConnectorError::Throttled {
            retry_after: delay,
            message: answered,
        },
        412 => ConnectorError::Transient(format!(
            "{answered}: the resource changed since it was read; the next attempt reads it again"
        )),
        404 => ConnectorError::NotFound(answered),
        408 => ConnectorError::Transient(answered),
        // Not implemented will not start working on a retry.
        501 => ConnectorError::Permanent(answered),
        500..=599 => ConnectorError::Transient(answered),
        _ => ConnectorError::Permanent(answered),
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past
/// means "now".
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    let delay = date.with_timezone(&Utc) - now;
    Some(delay.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> ErrorContext<'static> {
        ErrorContext {
            system: "crm",
            secret: "deprov/connector/crm",
            token_field: "token",
            request: "PATCH /Users/42",
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now()), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 12:00:30 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 25 Nov 2026 11:00:00 GMT", now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("-5", now()), None);
    }

    #[test]
    fn statuses_map_to_actionable_kinds() {
        let none = Value::Null;
        let throttled = status_error(&ctx(), 429, Some("7"), &none, now());
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));
        assert!(matches!(
            status_error(&ctx(), 429, None, &none, now()),
            ConnectorError::Throttled {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            status_error(&ctx(), 503, Some("3"), &none, now()),
            ConnectorError::Throttled { .. }
        ));
        for status in [500, 502, 503, 504, 412, 408] {
            assert!(
                matches!(
                    status_error(&ctx(), status, None, &none, now()),
                    ConnectorError::Transient(_)
                ),
                "{status}"
            );
        }
        for status in [400, 409, 405, 422, 501] {
            assert!(
                matches!(
                    status_error(&ctx(), status, None, &none, now()),
                    ConnectorError::Permanent(_)
                ),
                "{status}"
            );
        }
        assert!(matches!(
            status_error(&ctx(), 404, None, &none, now()),
            ConnectorError::NotFound(_)
        ));
    }

    #[test]
    fn refusals_name_the_secret_to_rotate() {
        let err = status_error(&ctx(), 401, None, &Value::Null, now());
        assert_eq!(
            err,
            ConnectorError::Unauthorized(
                "the SCIM server of system \"crm\" refused the bearer token from secret \"deprov/connector/crm\" field \"token\" (HTTP 401); rotate that secret".into()
            )
        );
        let body = json!({"detail": "insufficient scope", "status": "403"});
        let err = status_error(&ctx(), 403, None, &body, now()).to_string();
        assert!(err.contains("deprov/connector/crm"), "{err}");
        assert!(err.contains("HTTP 403: insufficient scope"), "{err}");
    }

    #[test]
    fn scim_errors_are_quoted() {
        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                          "status": "400", "scimType": "invalidFilter", "detail": "bad filter"});
        let err = status_error(&ctx(), 400, None, &body, now()).to_string();
        assert!(
            err.contains("PATCH /Users/42 answered HTTP 400 (invalidFilter: bad filter)"),
            "{err}"
        );
        let long = Value::String("x".repeat(1000));
        let err = status_error(&ctx(), 409, None, &long, now()).to_string();
        assert!(err.len() < 500, "{err}");
    }

    #[test]
    fn redaction_removes_an_echoed_token() {
        let err = ConnectorError::Permanent("bad token s3cr3t-value here".into());
        assert_eq!(
            redact(err, "s3cr3t-value"),
            ConnectorError::Permanent("bad token [redacted] here".into())
        );
    }

    #[test]
    fn secret_errors_name_secret_and_field() {
        let err = secret_error(
            "crm",
            &SecretError::MissingField {
                name: "deprov/connector/crm".into(),
                field: "token".into(),
            },
        );
        assert!(matches!(err, ConnectorError::InvalidConfig(_)));
        assert!(err.to_string().contains("has no field \"token\""));
    }
}
