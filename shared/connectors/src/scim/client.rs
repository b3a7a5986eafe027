//! HTTP plumbing of the SCIM connector: the bearer token (fetched lazily through the
//! `SecretSource`, cached for five minutes, never logged) and the SCIM reading of error
//! bodies. Bounded reads, transport errors, `Retry-After` and the status mapping are the
//! shared ones of [`crate::http`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deprov_core::ports::{SecretError, SecretSource};
use deprov_core::ConnectorError;
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_MATCH, RETRY_AFTER};
use reqwest::{Method, Url};
use serde_json::Value;

pub(crate) use crate::http::describe;
use crate::http::{self, parse_retry_after, redact, snippet, TokenCache};

/// How long a fetched bearer token is reused before the secret is read again.
const TOKEN_TTL: Duration = Duration::from_secs(300);
const SCIM_JSON: &str = "application/scim+json";

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

pub(crate) struct Http {
    system: String,
    base: Url,
    client: reqwest::Client,
    secrets: Arc<dyn SecretSource>,
    secret_name: String,
    token_field: String,
    token: TokenCache,
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
        Ok(Http {
            system: system.to_string(),
            base,
            client: http::client(system, timeout, max_idle)?,
            secrets,
            secret_name: secret_name.to_string(),
            token_field: token_field.to_string(),
            token: TokenCache::default(),
        })
    }

    /// The bearer token, from the cache while it is fresh.
    async fn bearer(&self) -> Result<String, ConnectorError> {
        self.token
            .get(|| async {
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
                Ok((value, TOKEN_TTL))
            })
            .await
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
            .request(method.clone(), http::join(&self.base, segments))
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
        let ok = |status: u16| (200..300).contains(&status) || pass.contains(&status);
        // A 412 a caller passes is only a signal to read again: its body need not be JSON.
        let wants_json = |status: u16| status != 412 && ok(status);
        let raw = http::exchange(builder, &self.system, &request, wants_json)
            .await
            .map_err(|err| redact(err, &token))?;
        let status = raw.status;
        if ok(status) {
            let version = raw
                .header(ETAG.as_str())
                .or_else(|| raw.body["meta"]["version"].as_str().map(str::to_string));
            return Ok(Reply {
                status,
                version,
                body: raw.body,
            });
        }
        if status == 401 || status == 403 {
            self.token.forget().await;
        }
        let context = ErrorContext {
            system: &self.system,
            secret: &self.secret_name,
            token_field: &self.token_field,
            request: &request,
        };
        let retry_after = raw.header(RETRY_AFTER.as_str());
        let err = status_error(
            &context,
            status,
            retry_after.as_deref(),
            &raw.body,
            Utc::now(),
        );
        Err(redact(err, &token))
    }
}

/// The error of a secret the connector could not read. The message names the secret and
/// the field (never a value).
pub(crate) fn secret_error(system: &str, err: &SecretError) -> ConnectorError {
    http::secret_error(system, "its SCIM bearer token", err)
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
        _ => http::status_kind(status, delay, answered),
    }
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
