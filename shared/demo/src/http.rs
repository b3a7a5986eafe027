//! The HTTP face of the provider: authentication, fault injection, routing, request
//! parsing and SCIM responses. One fallback handler does its own routing so that every
//! path — including unknown ones and wrong methods — answers with a SCIM error body.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::error::ScimError;
use crate::filter::{self, Scope};
use crate::schema::{self, Kind, LIST_SCHEMA, SEARCH_SCHEMA};
use crate::store::{etag_matches, Store};

/// Request bodies above this are refused with 413 before they are buffered.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// `ServiceProviderConfig.filter.maxResults`: the cap on `count`.
pub(crate) const MAX_RESULTS: usize = 1000;
const DEFAULT_COUNT: usize = 100;
const SCIM_JSON: &str = "application/scim+json";

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the server task and every `ScimProvider` handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub name: String,
    pub base: String,
    token: String,
    pub store: Mutex<Store>,
    latency_ns: AtomicU64,
    throttle_left: AtomicU32,
    retry_after: AtomicU64,
    fail_left: AtomicU32,
    /// Users whose changes are refused with 403 (an account the target protects).
    protected: Mutex<std::collections::HashSet<String>>,
    requests: Mutex<HashMap<String, u64>>,
    patches: Mutex<HashMap<String, u64>>,
}

impl Shared {
    pub(crate) fn new(name: &str, token: &str, base: String) -> Self {
        Shared {
            name: name.to_owned(),
            token: token.to_owned(),
            store: Mutex::new(Store::new(base.clone())),
            base,
            latency_ns: AtomicU64::new(0),
            throttle_left: AtomicU32::new(0),
            retry_after: AtomicU64::new(1),
            fail_left: AtomicU32::new(0),
            protected: Mutex::new(std::collections::HashSet::new()),
            requests: Mutex::new(HashMap::new()),
            patches: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn protect_user(&self, id: &str) {
        lock(&self.protected).insert(id.to_owned());
    }

    /// A change (anything but GET) to a protected user's resource.
    fn changes_protected_user(&self, method: &Method, path: &str) -> bool {
        if method == Method::GET {
            return false;
        }
        path.strip_prefix("/scim/v2/Users/")
            .map(|id| id.trim_end_matches('/'))
            .is_some_and(|id| lock(&self.protected).contains(id))
    }

    pub(crate) fn requests(&self, method: &str) -> u64 {
        lock(&self.requests)
            .get(&method.to_ascii_uppercase())
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn patches_of_user(&self, id: &str) -> u64 {
        lock(&self.patches).get(id).copied().unwrap_or(0)
    }

    pub(crate) fn set_latency(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.latency_ns.store(ns, Ordering::Relaxed);
    }

    pub(crate) fn throttle_next(&self, n: u32, retry_after_secs: u64) {
        self.retry_after.store(retry_after_secs, Ordering::Relaxed);
        self.throttle_left.store(n, Ordering::Relaxed);
    }

    pub(crate) fn fail_next(&self, n: u32) {
        self.fail_left.store(n, Ordering::Relaxed);
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    fn count(&self, method: &Method, path: &str) {
        *lock(&self.requests)
            .entry(method.as_str().to_owned())
            .or_default() += 1;
        if method == Method::PATCH {
            let user = path
                .strip_prefix("/scim/v2/Users/")
                .map(|id| id.trim_end_matches('/'))
                .filter(|id| !id.is_empty() && !id.contains('/'));
            if let Some(id) = user {
                *lock(&self.patches).entry(id.to_owned()).or_default() += 1;
            }
        }
    }
}

/// `Some(refusal)` unless the request carries the provider's bearer token.
fn check_auth(sh: &Shared, headers: &HeaderMap) -> Option<Response> {
    refuse_unauthenticated(sh, headers).err()
}

/// Compares secrets without an early exit, so response timing does not reveal how many
/// leading bytes of a guessed token were right.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

fn scim_response(status: StatusCode, body: &Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    resp
}

pub(crate) fn error_response(e: &ScimError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    scim_response(status, &e.body())
}

fn with_header(mut resp: Response, name: header::HeaderName, value: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
    resp
}

#[allow(clippy::result_large_err)] // private; the error is the response itself
fn refuse_unauthenticated(sh: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim());
    let (detail, challenge) = match given {
        Some(t) if constant_time_eq(t.as_bytes(), sh.token.as_bytes()) => return Ok(()),
        Some(_) => (
            "the bearer token is not valid",
            format!("Bearer realm=\"{}\", error=\"invalid_token\"", sh.name),
        ),
        None => (
            "an \"Authorization: Bearer <token>\" header is required",
            format!("Bearer realm=\"{}\"", sh.name),
        ),
    };
    let resp = error_response(&ScimError::new(401, None, detail));
    Err(with_header(resp, header::WWW_AUTHENTICATE, &challenge))
}

/// Entry point for every request: count, delay, inject faults, authenticate, route.
pub(crate) async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    sh.count(&method, &path);
    let latency = Duration::from_nanos(sh.latency_ns.load(Ordering::Relaxed));
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = if Shared::take(&sh.throttle_left) {
        let secs = sh.retry_after.load(Ordering::Relaxed);
        let e = ScimError::new(
            429,
            None,
            format!("too many requests; retry after {secs} s"),
        );
        with_header(error_response(&e), header::RETRY_AFTER, &secs.to_string())
    } else if Shared::take(&sh.fail_left) {
        error_response(&ScimError::new(
            503,
            None,
            "the service is temporarily unavailable",
        ))
    } else if let Some(resp) = check_auth(&sh, req.headers()) {
        resp
    } else if sh.changes_protected_user(&method, &path) {
        error_response(&ScimError::new(
            403,
            None,
            "this account is protected; changes to it are refused",
        ))
    } else {
        route(&sh, req).await.unwrap_or_else(|e| error_response(&e))
    };
    tracing::debug!(provider = %sh.name, %method, %path, status = resp.status().as_u16(), "scim request");
    resp
}

fn method_not_allowed(allow: &str) -> ScimError {
    ScimError::new(
        405,
        None,
        format!("method not allowed here; allowed: {allow}"),
    )
}

async fn route(sh: &Shared, req: Request) -> Result<Response, ScimError> {
    let path = req.uri().path().to_owned();
    let rel = path
        .strip_prefix("/scim/v2")
        .filter(|r| r.is_empty() || r.starts_with('/'))
        .ok_or_else(|| {
            ScimError::not_found(format!(
                "no SCIM endpoint at \"{path}\"; the base is /scim/v2"
            ))
        })?;
    let segs: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    let method = match req.method() {
        &Method::HEAD => Method::GET,
        m => m.clone(),
    };
    let query = params(req.uri())?;
    let if_match = header_string(req.headers(), header::IF_MATCH);
    let if_none_match = header_string(req.headers(), header::IF_NONE_MATCH);
    let kind_of = |s: &str| match s {
        "Users" => Some(Kind::User),
        "Groups" => Some(Kind::Group),
        _ => None,
    };
    match (segs.as_slice(), &method) {
        (["ServiceProviderConfig"], &Method::GET) => Ok(scim_response(
            StatusCode::OK,
            &schema::service_provider_config(&sh.base, MAX_RESULTS),
        )),
        (["ResourceTypes"], &Method::GET) => Ok(discovery_list(schema::resource_types(&sh.base))),
        (["Schemas"], &Method::GET) => Ok(discovery_list(schema::schemas(&sh.base))),
        (["ResourceTypes" | "Schemas", id], &Method::GET) => {
            let all = if segs[0] == "Schemas" {
                schema::schemas(&sh.base)
            } else {
                schema::resource_types(&sh.base)
            };
            all.into_iter()
                .find(|v| v.get("id").and_then(Value::as_str) == Some(*id))
                .map(|v| scim_response(StatusCode::OK, &v))
                .ok_or_else(|| ScimError::not_found(format!("{} \"{id}\" not found", segs[0])))
        }
        (["ServiceProviderConfig" | "ResourceTypes" | "Schemas", ..], _) => {
            Err(method_not_allowed("GET"))
        }
        (["Bulk"], _) | (["Me", ..], _) => Err(ScimError::new(
            501,
            None,
            format!("/{} is not supported", segs[0]),
        )),
        ([ep], m) if kind_of(ep).is_some() => {
            let kind = kind_of(ep).ok_or_else(|| ScimError::not_found("unknown endpoint"))?;
            match *m {
                Method::GET => list(sh, kind, ListParams::from_query(&query)?),
                Method::POST => {
                    let body = read_json(req).await?;
                    create(sh, kind, &body)
                }
                _ => Err(method_not_allowed("GET, POST")),
            }
        }
        ([ep, ".search"], m) if kind_of(ep).is_some() => {
            let kind = kind_of(ep).ok_or_else(|| ScimError::not_found("unknown endpoint"))?;
            if *m != Method::POST {
                return Err(method_not_allowed("POST"));
            }
            let body = read_json(req).await?;
            list(sh, kind, ListParams::from_search(&body)?)
        }
        ([ep, id], m) if kind_of(ep).is_some() => {
            let kind = kind_of(ep).ok_or_else(|| ScimError::not_found("unknown endpoint"))?;
            let id = (*id).to_owned();
            match *m {
                Method::GET => get(sh, kind, &id, &query, if_none_match.as_deref()),
                Method::PUT => {
                    let body = read_json(req).await?;
                    let attrs = schema::from_body(kind, &body)?;
                    lock(&sh.store).replace(kind, &id, attrs, if_match.as_deref())?;
                    resource_response(sh, kind, &id, StatusCode::OK, &query)
                }
                Method::PATCH => {
                    let body = read_json(req).await?;
                    lock(&sh.store).patch(kind, &id, &body, if_match.as_deref())?;
                    resource_response(sh, kind, &id, StatusCode::OK, &query)
                }
                Method::DELETE => {
                    lock(&sh.store).delete(kind, &id, if_match.as_deref())?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(method_not_allowed("GET, PUT, PATCH, DELETE")),
            }
        }
        _ => Err(ScimError::not_found(format!(
            "no SCIM endpoint at \"{path}\""
        ))),
    }
}

fn header_string(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn params(uri: &axum::http::Uri) -> Result<HashMap<String, String>, ScimError> {
    let Query(raw) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ScimError::invalid_syntax(format!("bad query string: {e}")))?;
    // Parameter names are matched case-insensitively, like attribute names.
    Ok(raw
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect())
}

/// Reads the body (at most `MAX_BODY`) and parses it as JSON, after checking the media type.
async fn read_json(req: Request) -> Result<Value, ScimError> {
    let too_large = || {
        ScimError::new(
            413,
            None,
            format!("the request body exceeds {MAX_BODY} bytes"),
        )
    };
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match ctype.as_deref() {
        Some(SCIM_JSON | "application/json") => {}
        other => {
            return Err(ScimError::new(
                415,
                None,
                format!("Content-Type must be {SCIM_JSON} or application/json, not {other:?}"),
            ))
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let mut body: Body = req.into_body();
    let mut buf = Vec::new();
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame
            .map_err(|e| ScimError::invalid_syntax(format!("could not read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_BODY {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    serde_json::from_slice(&buf)
        .map_err(|e| ScimError::invalid_syntax(format!("the body is not valid JSON: {e}")))
}

fn discovery_list(items: Vec<Value>) -> Response {
    scim_response(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": items.len(),
            "itemsPerPage": items.len(),
            "startIndex": 1,
            "Resources": items,
        }),
    )
}

#[derive(Debug, Default)]
struct ListParams {
    filter: Option<String>,
    start: usize,
    count: usize,
    projection: Projection,
}

#[derive(Debug, Default)]
struct Projection {
    attributes: Vec<String>,
    excluded: Vec<String>,
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Projection {
    fn from_query(q: &HashMap<String, String>) -> Self {
        Projection {
            attributes: q
                .get("attributes")
                .map(|s| split_list(s))
                .unwrap_or_default(),
            excluded: q
                .get("excludedattributes")
                .map(|s| split_list(s))
                .unwrap_or_default(),
        }
    }

    /// `attributes` / `excludedAttributes` (RFC 7644 §3.4.2.5); `id` and `schemas` stay.
    fn apply(&self, kind: Kind, v: Value) -> Value {
        let Value::Object(mut obj) = v else { return v };
        if !self.attributes.is_empty() {
            let mut out = Map::new();
            for keep in ["schemas", "id"] {
                if let Some(x) = obj.get(keep) {
                    out.insert(keep.to_owned(), x.clone());
                }
            }
            for want in &self.attributes {
                let Some(chain) = schema::resolve(kind, want) else {
                    continue;
                };
                let Some(top) = chain.first() else { continue };
                let Some(src) = obj.get(top.name) else {
                    continue;
                };
                match (chain.get(1), src) {
                    (None, _) => {
                        out.insert(top.name.to_owned(), src.clone());
                    }
                    (Some(sub), Value::Object(o)) => {
                        if let Some(x) = o.get(sub.name) {
                            let slot = out.entry(top.name).or_insert_with(|| json!({}));
                            slot[sub.name] = x.clone();
                        }
                    }
                    (Some(sub), Value::Array(items)) => {
                        let slot = out
                            .entry(top.name)
                            .or_insert_with(|| Value::Array(vec![json!({}); items.len()]));
                        if let Value::Array(dst) = slot {
                            for (d, s) in dst.iter_mut().zip(items) {
                                if let (Value::Object(d), Some(x)) = (d, s.get(sub.name)) {
                                    d.insert(sub.name.to_owned(), x.clone());
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            obj = out;
        }
        for drop in &self.excluded {
            if let Some(top) = schema::resolve(kind, drop).and_then(|c| c.first().copied()) {
                if top.name != "id" {
                    obj.remove(top.name);
                }
            }
        }
        Value::Object(obj)
    }
}

fn parse_int(name: &str, s: &str) -> Result<i64, ScimError> {
    s.trim().parse::<i64>().map_err(|_| {
        ScimError::invalid_value(format!("\"{name}\" must be an integer, not \"{s}\""))
    })
}

impl ListParams {
    fn new(
        filter: Option<String>,
        start: Option<i64>,
        count: Option<i64>,
        projection: Projection,
    ) -> Self {
        ListParams {
            filter,
            // RFC 7644 §3.4.2.4: startIndex < 1 means 1; a negative count means 0.
            start: usize::try_from(start.unwrap_or(1).max(1)).unwrap_or(1),
            count: usize::try_from(count.unwrap_or(DEFAULT_COUNT as i64).max(0))
                .unwrap_or(0)
                .min(MAX_RESULTS),
            projection,
        }
    }

    fn from_query(q: &HashMap<String, String>) -> Result<Self, ScimError> {
        let start = q
            .get("startindex")
            .map(|s| parse_int("startIndex", s))
            .transpose()?;
        let count = q.get("count").map(|s| parse_int("count", s)).transpose()?;
        Ok(Self::new(
            q.get("filter").cloned(),
            start,
            count,
            Projection::from_query(q),
        ))
    }

    fn from_search(body: &Value) -> Result<Self, ScimError> {
        let schemas_ok = body
            .get("schemas")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|u| u.as_str() == Some(SEARCH_SCHEMA)));
        if !schemas_ok {
            return Err(ScimError::invalid_syntax(format!(
                "\"schemas\" must be [\"{SEARCH_SCHEMA}\"]"
            )));
        }
        let int = |name: &str| -> Result<Option<i64>, ScimError> {
            match body.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                    ScimError::invalid_value(format!("\"{name}\" must be an integer"))
                }),
            }
        };
        let strings = |name: &str| -> Vec<String> {
            body.get(name)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let filter = match body.get("filter") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ScimError::invalid_filter("\"filter\" must be a string")),
        };
        let projection = Projection {
            attributes: strings("attributes"),
            excluded: strings("excludedAttributes"),
        };
        Ok(Self::new(
            filter,
            int("startIndex")?,
            int("count")?,
            projection,
        ))
    }
}

fn list(sh: &Shared, kind: Kind, p: ListParams) -> Result<Response, ScimError> {
    let filter = p
        .filter
        .as_deref()
        .map(|f| filter::parse(f, Scope::Resource(kind)))
        .transpose()?;
    let store = lock(&sh.store);
    let all = store.list(kind, filter.as_ref());
    let total = all.len();
    let page: Vec<Value> = all
        .into_iter()
        .skip(p.start - 1)
        .take(p.count)
        .map(|(v, _)| p.projection.apply(kind, v))
        .collect();
    drop(store);
    Ok(scim_response(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "itemsPerPage": page.len(),
            "startIndex": p.start,
            "Resources": page,
        }),
    ))
}

fn resource_response(
    sh: &Shared,
    kind: Kind,
    id: &str,
    status: StatusCode,
    query: &HashMap<String, String>,
) -> Result<Response, ScimError> {
    let store = lock(&sh.store);
    let res = store
        .get(kind, id)
        .ok_or_else(|| ScimError::not_found(format!("{} \"{id}\" not found", kind.name())))?;
    let etag = res.etag();
    let body = Projection::from_query(query).apply(kind, store.render(res));
    let location = store.location(kind, id);
    drop(store);
    let mut resp = with_header(scim_response(status, &body), header::ETAG, &etag);
    if status == StatusCode::CREATED {
        resp = with_header(resp, header::LOCATION, &location);
    }
    Ok(resp)
}

fn get(
    sh: &Shared,
    kind: Kind,
    id: &str,
    query: &HashMap<String, String>,
    if_none_match: Option<&str>,
) -> Result<Response, ScimError> {
    if let Some(h) = if_none_match {
        let store = lock(&sh.store);
        if let Some(res) = store.get(kind, id).filter(|r| etag_matches(h, r.version)) {
            let etag = res.etag();
            drop(store);
            return Ok(with_header(
                StatusCode::NOT_MODIFIED.into_response(),
                header::ETAG,
                &etag,
            ));
        }
    }
    resource_response(sh, kind, id, StatusCode::OK, query)
}

fn create(sh: &Shared, kind: Kind, body: &Value) -> Result<Response, ScimError> {
    let attrs = schema::from_body(kind, body)?;
    let id = lock(&sh.store).create(kind, attrs)?;
    resource_response(sh, kind, &id, StatusCode::CREATED, &HashMap::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
