//! HTTP plumbing shared by the connectors that speak HTTP (SCIM, Okta, Microsoft Graph,
//! Slack): the client, bounded reads of response bodies, transport and status mapping onto
//! `ConnectorError` (with `Retry-After` and epoch rate-limit resets), redaction of secrets
//! from messages, a token cache, `Link` pagination and the validation of connection
//! settings.
//!
//! Nothing here knows a vendor: each connector names its own credentials in the 401/403
//! messages and decides which statuses it wants to see.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretError;
use deprov_core::ConnectorError;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Url};
use serde_json::Value;

/// The most of a response body a connector reads.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// The longest server message quoted in an error.
const MAX_DETAIL_CHARS: usize = 300;
/// A listing that has not ended after this many pages is refused rather than followed.
pub(crate) const MAX_PAGES: usize = 10_000;

/// The HTTP client of one system.
pub(crate) fn client(
    system: &str,
    timeout: Duration,
    max_idle: usize,
) -> Result<reqwest::Client, ConnectorError> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .pool_max_idle_per_host(max_idle)
        .user_agent(concat!("deprov/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|err| {
            ConnectorError::InvalidConfig(format!(
                "system \"{system}\": cannot build the HTTP client: {err}"
            ))
        })
}

/// A response, read and decoded.
#[derive(Debug)]
pub(crate) struct Raw {
    pub status: u16,
    pub headers: HeaderMap,
    /// The JSON body; `Null` when empty, a `String` snippet when an error body is not JSON.
    pub body: Value,
}

impl Raw {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        header_str(&self.headers, name)
    }
}

/// Sends a request and reads the answer (bounded). A body that is not JSON is an error
/// when `ok` says the status is one the caller wants; otherwise it is kept as a snippet for
/// the error message.
pub(crate) async fn exchange(
    builder: RequestBuilder,
    system: &str,
    request: &str,
    ok: impl Fn(u16) -> bool,
) -> Result<Raw, ConnectorError> {
    let response = builder
        .send()
        .await
        .map_err(|err| transport_error(system, request, &err))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = read_bounded(response, system, request).await?;
    tracing::debug!(%system, %request, status, bytes = bytes.len(), "http response");
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => value,
            Err(_) if !ok(status) => Value::String(snippet(&String::from_utf8_lossy(&bytes))),
            Err(err) => {
                return Err(ConnectorError::Permanent(format!(
                    "system \"{system}\": {request} answered HTTP {status} with a body that is not JSON ({err})"
                )))
            }
        }
    };
    Ok(Raw {
        status,
        headers,
        body,
    })
}

/// `GET /api/v1/users/42`: how requests are named in errors, logs and evidence.
pub(crate) fn describe(method: &Method, segments: &[&str]) -> String {
    format!("{method} /{}", segments.join("/"))
}

/// `base` with `segments` appended, each percent-encoded as one path segment.
pub(crate) fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        path.extend(segments);
    }
    url
}

/// Whether `url` is on the same origin as `base`: a pagination link elsewhere would carry
/// the credential to another host, so it is refused.
pub(crate) fn same_origin(base: &Url, url: &Url) -> bool {
    base.scheme() == url.scheme()
        && base.host_str() == url.host_str()
        && base.port_or_known_default() == url.port_or_known_default()
}

pub(crate) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// The `rel="next"` target of a `Link` header (RFC 8288), as Okta and GitHub paginate.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            params
                .split(';')
                .any(|param| {
                    let param = param.trim().replace(' ', "");
                    param == "rel=\"next\"" || param == "rel=next"
                })
                .then(|| target.to_string())
        })
}

/// Every item of a JSON-array listing that pages with `Link: <…>; rel="next"` (Okta,
/// GitHub), fetching each page with `fetch(url, pass)`. Next-page links must stay on
/// `base`'s origin (the token is never sent elsewhere). `None` when the first page is 404.
pub(crate) async fn link_pages<F, Fut>(
    system: &str,
    base: &Url,
    first: Url,
    request: &str,
    mut fetch: F,
) -> Result<Option<Vec<Value>>, ConnectorError>
where
    F: FnMut(Url, &'static [u16]) -> Fut,
    Fut: std::future::Future<Output = Result<Raw, ConnectorError>>,
{
    let mut url = first;
    let mut items = Vec::new();
    for page in 0..MAX_PAGES {
        let pass: &'static [u16] = if page == 0 { &[404] } else { &[] };
        let raw = fetch(url.clone(), pass).await?;
        if raw.status == 404 {
            return Ok(None);
        }
        match raw.body {
            Value::Array(page) => items.extend(page),
            _ => {
                return Err(ConnectorError::Permanent(format!(
                    "system \"{system}\": {request} answered something that is not a JSON array"
                )))
            }
        }
        let Some(next) = next_link(&raw.headers) else {
            return Ok(Some(items));
        };
        url = Url::parse(&next)
            .ok()
            .filter(|next| same_origin(base, next))
            .ok_or_else(|| {
                ConnectorError::Permanent(format!(
                    "system \"{system}\": {request} links its next page to {next}, outside {base}; refusing to send the token there"
                ))
            })?;
    }
    Err(ConnectorError::Permanent(format!(
        "system \"{system}\": {request} did not end after {MAX_PAGES} pages"
    )))
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

pub(crate) fn transport_error(system: &str, request: &str, err: &reqwest::Error) -> ConnectorError {
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    // URLs carry no secret (userinfo is refused in base URLs); the error chain names the
    // cause (DNS, TLS, reset).
    let mut cause = String::new();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        cause = format!(": {inner}");
        source = inner.source();
    }
    ConnectorError::Transient(format!("system \"{system}\": {request} {what}{cause}"))
}

/// The error of a secret a connector could not read: `what` says what it wanted
/// ("its Okta API token"). The message names the secret and the field, never a value.
pub(crate) fn secret_error(system: &str, what: &str, err: &SecretError) -> ConnectorError {
    match err {
        SecretError::NotFound(_) | SecretError::MissingField { .. } => {
            ConnectorError::InvalidConfig(format!("system \"{system}\" cannot get {what}: {err}"))
        }
        SecretError::Unreadable { .. } => {
            ConnectorError::Transient(format!("system \"{system}\" cannot get {what}: {err}"))
        }
    }
}

/// Replaces any occurrence of a secret value in an error message (a server echoing it).
pub(crate) fn redact(err: ConnectorError, secret: &str) -> ConnectorError {
    if secret.len() < 4 {
        return err;
    }
    let clean = |message: String| message.replace(secret, "[redacted]");
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

/// A server's text, trimmed and cut to a length fit for an error message.
pub(crate) fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// Maps a non-success status other than 401/403 (whose messages name each connector's
/// credential) onto the error the orchestrator acts on. `answered` is the message.
pub(crate) fn status_kind(
    status: u16,
    delay: Option<Duration>,
    answered: String,
) -> ConnectorError {
    match status {
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

/// A rate-limit reset given as UTC epoch seconds (Okta's `X-Rate-Limit-Reset`, GitHub's
/// `X-RateLimit-Reset`): the delay until then; a time in the past means "now".
pub(crate) fn parse_reset_epoch(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let epoch = value.trim().parse::<i64>().ok()?;
    let reset = DateTime::<Utc>::from_timestamp(epoch, 0)?;
    Some((reset - now).to_std().unwrap_or(Duration::ZERO))
}

/// The delay a throttled answer asks for: `Retry-After`, else `reset_header` (epoch
/// seconds) when the vendor has one.
pub(crate) fn retry_delay(
    headers: &HeaderMap,
    reset_header: Option<&str>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    header_str(headers, RETRY_AFTER.as_str())
        .and_then(|value| parse_retry_after(&value, now))
        .or_else(|| {
            reset_header
                .and_then(|name| header_str(headers, name))
                .and_then(|value| parse_reset_epoch(&value, now))
        })
}

/// A credential fetched once and reused until it expires.
#[derive(Default)]
pub(crate) struct TokenCache {
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl TokenCache {
    /// The cached token while it is fresh, else the one `fetch` gives (with how long it
    /// stays valid).
    pub(crate) async fn get<F, Fut>(&self, fetch: F) -> Result<String, ConnectorError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(String, Duration), ConnectorError>>,
    {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let (token, ttl) = fetch().await?;
        *cached = Some((token.clone(), Instant::now() + ttl));
        Ok(token)
    }

    pub(crate) async fn forget(&self) {
        *self.token.lock().await = None;
    }
}

/// One JSON request with an OAuth bearer token from `cache` (`fetch_token` when it is
/// stale). A 401 drops the token and the request goes once more with a fresh one; any other
/// refusal, or a second 401, is mapped by the vendor's `refused` (with the token redacted
/// from whatever the vendor echoed).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_with_token<F, Fut>(
    client: &reqwest::Client,
    cache: &TokenCache,
    fetch_token: F,
    system: &str,
    method: Method,
    url: Url,
    request: &str,
    body: Option<&Value>,
    pass: &[u16],
    refused: impl Fn(&Raw) -> ConnectorError,
) -> Result<Raw, ConnectorError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(String, Duration), ConnectorError>>,
{
    let ok = |status: u16| (200..300).contains(&status) || pass.contains(&status);
    for attempt in 0..2 {
        let token = cache.get(&fetch_token).await?;
        let mut builder = client
            .request(method.clone(), url.clone())
            .bearer_auth(&token)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        tracing::debug!(%system, %request, "request");
        let raw = exchange(builder, system, request, ok)
            .await
            .map_err(|err| redact(err, &token))?;
        if ok(raw.status) {
            return Ok(raw);
        }
        if raw.status == 401 {
            cache.forget().await;
            if attempt == 0 {
                continue;
            }
        }
        return Err(redact(refused(&raw), &token));
    }
    Err(ConnectorError::Transient(format!(
        "system \"{system}\": {request} was refused twice with fresh tokens"
    )))
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

/// A base URL a connector may send credentials to.
pub(crate) fn check_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|err| format!("is not a URL ({err})"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(format!(
            "must be an https:// (or http://) URL, not {}://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry a user name or password (credentials come from the secret)".into(),
        );
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".into());
    }
    Ok(url)
}

/// Reads a system's `connection` settings, collecting every problem as what to fix.
pub(crate) struct Settings<'a> {
    system: &'a str,
    kind: &'a str,
    config: &'a SystemConfig,
    pub problems: Vec<String>,
}

impl<'a> Settings<'a> {
    /// Starts reading; keys not in `known` are problems.
    pub(crate) fn new(
        system: &'a str,
        kind: &'a str,
        config: &'a SystemConfig,
        known: &[&str],
    ) -> Settings<'a> {
        let mut problems = Vec::new();
        for name in config.connection.keys() {
            if !known.contains(&name.as_str()) {
                problems.push(format!(
                    "systems.{system}.connection.{name} is not a {kind} setting; the {kind} settings are {}",
                    known.join(", ")
                ));
            }
        }
        Settings {
            system,
            kind,
            config,
            problems,
        }
    }

    pub(crate) fn key(&self, name: &str) -> String {
        format!("systems.{}.connection.{name}", self.system)
    }

    /// A URL setting; `default` when absent (`None` makes it required).
    pub(crate) fn url(&mut self, name: &str, default: Option<&str>, example: &str) -> Option<Url> {
        let key = self.key(name);
        match self.config.connection.get(name) {
            None => match default {
                Some(default) => check_base_url(default).ok(),
                None => {
                    self.problems
                        .push(format!("{key} is required, e.g. \"{example}\""));
                    None
                }
            },
            Some(Value::String(text)) => match check_base_url(text) {
                Ok(url) => Some(url),
                Err(why) => {
                    self.problems
                        .push(format!("{key} = \"{text}\" {why}, e.g. \"{example}\""));
                    None
                }
            },
            Some(other) => {
                self.problems.push(format!(
                    "{key} must be a string (a URL, e.g. \"{example}\"), not {other}"
                ));
                None
            }
        }
    }

    /// A whole number from 1 to `max`.
    pub(crate) fn number(&mut self, name: &str, default: u64, max: u64) -> u64 {
        match self.config.connection.get(name) {
            None => default,
            Some(value) => match value.as_u64() {
                Some(n) if (1..=max).contains(&n) => n,
                _ => {
                    self.problems.push(format!(
                        "{} = {value} must be a whole number from 1 to {max} (default {default})",
                        self.key(name)
                    ));
                    default
                }
            },
        }
    }

    /// A non-empty string; `default` when absent (`None` makes it required).
    pub(crate) fn text(&mut self, name: &str, default: Option<&str>, what: &str) -> Option<String> {
        match self.config.connection.get(name) {
            None if default.is_some() => default.map(str::to_string),
            None => {
                self.problems
                    .push(format!("{} is required: {what}", self.key(name)));
                None
            }
            Some(Value::String(text)) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Some(other) => {
                self.problems
                    .push(format!("{} = {other} must be {what}", self.key(name)));
                default.map(str::to_string)
            }
        }
    }

    /// `true` or `false`; `false` when absent.
    pub(crate) fn flag(&mut self, name: &str) -> bool {
        match self.config.connection.get(name) {
            None => false,
            Some(Value::Bool(on)) => *on,
            Some(other) => {
                self.problems.push(format!(
                    "{} = {other} must be true or false (default false)",
                    self.key(name)
                ));
                false
            }
        }
    }

    /// One of `options` (the first is the default).
    pub(crate) fn choice(&mut self, name: &str, options: &[&'static str]) -> &'static str {
        let default = options.first().copied().unwrap_or_default();
        match self.config.connection.get(name) {
            None => default,
            Some(value) => match options.iter().find(|o| value.as_str() == Some(**o)) {
                Some(found) => found,
                None => {
                    self.problems.push(format!(
                        "{} = {value} must be one of \"{}\" (default \"{default}\")",
                        self.key(name),
                        options.join("\", \"")
                    ));
                    default
                }
            },
        }
    }

    /// The name of the system's secret; `holds` says what its fields hold.
    pub(crate) fn secret(&mut self, holds: &str) -> Option<String> {
        match self.config.secret.as_deref() {
            Some(name) if !name.trim().is_empty() => Some(name.to_string()),
            _ => {
                self.problems.push(format!(
                    "systems.{system}.secret is required for a {kind} system: the name of the secret whose {holds}, e.g. secret = \"deprov/connector/{system}\"",
                    system = self.system,
                    kind = self.kind,
                ));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

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
    fn epoch_resets_become_delays() {
        let at = now().timestamp();
        assert_eq!(
            parse_reset_epoch(&(at + 42).to_string(), now()),
            Some(Duration::from_secs(42))
        );
        assert_eq!(
            parse_reset_epoch(&(at - 42).to_string(), now()),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_reset_epoch("tomorrow", now()), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-rate-limit-reset",
            HeaderValue::from_str(&(at + 9).to_string()).unwrap_or(HeaderValue::from_static("0")),
        );
        assert_eq!(
            retry_delay(&headers, Some("x-rate-limit-reset"), now()),
            Some(Duration::from_secs(9))
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            retry_delay(&headers, Some("x-rate-limit-reset"), now()),
            Some(Duration::from_secs(3)),
            "Retry-After wins"
        );
        assert_eq!(retry_delay(&HeaderMap::new(), None, now()), None);
    }

    #[test]
    fn next_links_are_found() {
        let mut headers = HeaderMap::new();
        headers.append(
            reqwest::header::LINK,
            HeaderValue::from_static("<https://x.okta.com/api/v1/users?limit=2>; rel=\"self\""),
        );
        assert_eq!(next_link(&headers), None);
        headers.append(
            reqwest::header::LINK,
            HeaderValue::from_static(
                "<https://x.okta.com/api/v1/users?after=00u2&limit=2>; rel=\"next\"",
            ),
        );
        assert_eq!(
            next_link(&headers).as_deref(),
            Some("https://x.okta.com/api/v1/users?after=00u2&limit=2")
        );
        let base = Url::parse("https://x.okta.com").unwrap_or_else(|err| panic!("{err}"));
        let other = Url::parse("https://evil.example/api").unwrap_or_else(|err| panic!("{err}"));
        assert!(!same_origin(&base, &other));
        assert!(same_origin(&base, &join(&base, &["api", "v1", "a b"])));
        assert_eq!(join(&base, &["api", "a/b"]).path(), "/api/a%2Fb");
    }

    #[test]
    fn statuses_map_to_kinds() {
        let kind = |status, delay| status_kind(status, delay, "x".into());
        assert!(matches!(kind(429, None), ConnectorError::Throttled { .. }));
        assert!(matches!(
            kind(503, Some(Duration::ZERO)),
            ConnectorError::Throttled { .. }
        ));
        assert!(matches!(kind(503, None), ConnectorError::Transient(_)));
        assert!(matches!(kind(501, None), ConnectorError::Permanent(_)));
        assert!(matches!(kind(404, None), ConnectorError::NotFound(_)));
        assert!(matches!(kind(400, None), ConnectorError::Permanent(_)));
    }

    #[test]
    fn redaction_removes_an_echoed_secret() {
        let err = ConnectorError::Permanent("bad token s3cr3t-value here".into());
        assert_eq!(
            redact(err, "s3cr3t-value"),
            ConnectorError::Permanent("bad token [redacted] here".into())
        );
    }
}
