//! The intake: one HTTP delivery in, one decision out — transport-independent, so the
//! Lambda behind API Gateway and `deprov serve` answer every request the same way.
//!
//! In order, and nothing happens unless every step before passed: a known route (404);
//! its method (405); `?dry_run=` well formed (400); at most [`MAX_EVENT_BYTES`] (413, from
//! `Content-Length` and from the body itself); the sender's proof (401, or 403 for the
//! unsigned Workday feed outside a trusted transport); the body mapped to lifecycle
//! events (400, every problem with its JSON path; an event type deprov does not act on is
//! acknowledged as `ignored`, so the vendor does not retry it forever); dedupe by
//! `(source, event_id)` (409 when a delivered id comes back with other content); then a
//! one-time schedule (202 `scheduled`) or a run started now (202 `started`, 200
//! `duplicate`). A store or launcher failure answers 503 with `Retry-After`.
//!
//! Future-dated leavers: a newer termination for the same person moves the pending
//! schedule (the new one is created, then the old one removed, so a crash in between
//! leaves two rather than none, and the retry finishes); a rehire or a cancel removes the
//! person's pending schedules. A removed schedule keeps its reason, and a late
//! re-delivery of its event does not bring it back.
//!
//! Sources, one module each: [`generic`] (the signed deprov event), [`bamboohr`],
//! [`okta_hooks`], [`workday`].

pub mod bamboohr;
pub mod generic;
pub mod okta_hooks;
pub mod workday;

use chrono::{DateTime, FixedOffset, Offset, Utc};
use http::{header, HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use crate::event::{LifecycleEvent, MAX_EVENT_BYTES};
use crate::flow::RunInput;
use crate::ids;
use crate::launch::{self, RunScheduler, RunStart, RunStarter};
use crate::ports::{Clock, EventClaim, RunStore, SecretError, SecretSource};
use crate::validation::{Invalid, Problem};

/// Seconds a sender is asked to wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u64 = 30;

/// The routes of the intake. On API Gateway the stage name may precede them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /events`: a lifecycle event signed with `Deprov-Signature`.
    Events,
    /// `POST /sources/bamboohr`: a BambooHR webhook.
    BambooHr,
    /// `GET|POST /sources/okta`: an Okta event hook (GET is its one-time verification).
    Okta,
    /// `POST /sources/workday`: an unsigned feed, accepted only over a trusted transport.
    Workday,
}

impl Route {
    pub const ALL: [Route; 4] = [Route::Events, Route::BambooHr, Route::Okta, Route::Workday];

    pub fn path(self) -> &'static str {
        match self {
            Route::Events => "/events",
            Route::BambooHr => "/sources/bamboohr",
            Route::Okta => "/sources/okta",
            Route::Workday => "/sources/workday",
        }
    }

    /// The methods the route answers, as an `Allow` header says it.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Okta => "GET, POST",
            _ => "POST",
        }
    }

    /// The route a request path names: exactly, or after a stage prefix (`/prod/events`).
    pub fn from_path(path: &str) -> Option<Route> {
        let path = path.trim_end_matches('/');
        Route::ALL.into_iter().find(|route| {
            path == route.path()
                || path
                    .strip_suffix(route.path())
                    .is_some_and(|prefix| prefix.starts_with('/') && !prefix[1..].contains('/'))
        })
    }
}

/// Which secrets prove each source, and which sources are on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Secret id of the `Deprov-Signature` key: a plain string, or `{"key": "…"}` with an
    /// optional `"previous_key"` during a rotation. The same shape for every source key.
    pub webhook_secret: String,
    /// Secret id of BambooHR's webhook private key; the route answers 404 without it.
    pub bamboohr_secret: Option<String>,
    /// The offset of BambooHR's dates (`2026-11-30` has none): the last day ends at
    /// midnight after it, at this offset.
    pub bamboohr_offset: FixedOffset,
    /// Secret id of the value Okta sends in its authorization header; 404 without it.
    pub okta_secret: Option<String>,
    /// The Workday feed is unsigned: only a deployment whose transport authenticates the
    /// sender (API Gateway IAM auth, mutual TLS, or a local operator's explicit flag) turns
    /// it on. 403 otherwise.
    pub workday_trusted: bool,
}

impl Settings {
    /// The generic route only, with the key in `webhook_secret`.
    pub fn generic(webhook_secret: impl Into<String>) -> Settings {
        Settings {
            webhook_secret: webhook_secret.into(),
            bamboohr_secret: None,
            bamboohr_offset: Utc.fix(),
            okta_secret: None,
            workday_trusted: false,
        }
    }
}

/// A UTC offset as written after an RFC 3339 time: `+01:00`, `-05:00`, `Z`.
pub fn parse_offset(text: &str) -> Option<FixedOffset> {
    DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{}", text.trim()))
        .ok()
        .map(|at| *at.offset())
}

/// What the intake works with: the runs store (dedupe), the source keys, what starts and
/// schedules runs, and the clock.
pub struct Deps<R, S, X, Y, C> {
    pub runs: R,
    pub secrets: S,
    pub starter: X,
    pub scheduler: Y,
    pub clock: C,
    pub settings: Settings,
}

/// One delivery, as any HTTP server hands it over.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The answer, before it becomes HTTP: always a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// Send `Retry-After: RETRY_AFTER_SECS`.
    pub retry_after: bool,
    /// Send `Allow: …` (405).
    pub allow: Option<&'static str>,
}

impl Reply {
    pub fn new(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body,
            retry_after: false,
            allow: None,
        }
    }

    pub fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
        Reply::new(status, json!({ "error": message.to_string() }))
    }

    /// The body could not be used: every problem with its JSON path.
    pub fn invalid(invalid: &Invalid) -> Reply {
        Reply::new(
            StatusCode::BAD_REQUEST,
            json!({
                "error": format!("the {} is invalid; fix every problem listed", invalid.what),
                "problems": invalid.problems.iter().map(|problem| json!({
                    "path": problem.path,
                    "message": problem.message,
                })).collect::<Vec<_>>(),
            }),
        )
    }

    /// A store or launcher call failed: nothing more was done; try again.
    pub fn unavailable(message: impl std::fmt::Display) -> Reply {
        tracing::error!(error = %message, "intake could not finish; answering 503");
        Reply {
            retry_after: true,
            ..Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "deprov could not accept the event now ({message}); retry the same delivery in {RETRY_AFTER_SECS} s: it is deduplicated"
                ),
            )
        }
    }

    /// The headers to send besides the body.
    pub fn headers(&self) -> Vec<(header::HeaderName, header::HeaderValue)> {
        let mut headers = vec![(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        )];
        if self.retry_after {
            headers.push((
                header::RETRY_AFTER,
                header::HeaderValue::from(RETRY_AFTER_SECS),
            ));
        }
        if let Some(allow) = self.allow {
            headers.push((header::ALLOW, header::HeaderValue::from_static(allow)));
        }
        headers
    }

    /// The body as sent.
    pub fn body_bytes(&self) -> Vec<u8> {
        self.body.to_string().into_bytes()
    }
}

/// What a source made of a delivery: events to act on, and what it acknowledged without
/// acting (an event type deprov does not handle), each with its reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mapped {
    pub events: Vec<LifecycleEvent>,
    pub ignored: Vec<Value>,
}

/// The decision for one delivery. Every outcome is a reply.
pub async fn accept<R, S, X, Y, C>(deps: &Deps<R, S, X, Y, C>, delivery: Delivery<'_>) -> Reply
where
    R: RunStore,
    S: SecretSource,
    X: RunStarter,
    Y: RunScheduler,
    C: Clock,
{
    let Some(route) = Route::from_path(delivery.path) else {
        return Reply::error(
            StatusCode::NOT_FOUND,
            format!(
                "no intake route at {}; the routes are {}",
                truncated(delivery.path, 64),
                Route::ALL.map(Route::path).join(", ")
            ),
        );
    };
    let method = delivery.method;
    let verification = route == Route::Okta && method == Method::GET;
    if method != Method::POST && !verification {
        return Reply {
            allow: Some(route.allow()),
            ..Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{method} is not accepted at {}; use {}",
                    route.path(),
                    route.allow()
                ),
            )
        };
    }
    let dry_run = match dry_run(delivery.query) {
        Ok(dry_run) => dry_run,
        Err(reply) => return reply,
    };
    let declared = delivery
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let size = declared.unwrap_or(0).max(delivery.body.len() as u64);
    if size > MAX_EVENT_BYTES as u64 {
        return Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is {size} bytes; the limit is {MAX_EVENT_BYTES}"),
        );
    }

    let now = deps.clock.now();
    let mapped = match route {
        Route::Events => generic::receive(deps, delivery, now).await,
        Route::Workday => workday::receive(deps, delivery),
        Route::BambooHr => bamboohr::receive(deps, delivery, now).await,
        Route::Okta if verification => return okta_hooks::verify_hook(deps, delivery).await,
        Route::Okta => okta_hooks::receive(deps, delivery).await,
    };
    let mapped = match mapped {
        Ok(mapped) => mapped,
        Err(reply) => return reply,
    };
    let single = matches!(route, Route::Events | Route::Workday);
    let mut replies = Vec::with_capacity(mapped.events.len());
    for event in mapped.events {
        let span = tracing::info_span!(
            "intake",
            run_id = %ids::run_id(&event.source, &event.event_id),
            source = %event.source,
            event_id = %event.event_id,
        );
        let _entered = span.enter();
        let reply = if dry_run {
            plan_launch(deps, &event, now).await
        } else {
            launch_run(deps, event, now).await
        };
        replies.push(reply);
    }
    if single {
        return replies.pop().unwrap_or_else(|| {
            Reply::error(StatusCode::BAD_REQUEST, "the delivery holds no event")
        });
    }
    combine(replies, mapped.ignored, dry_run)
}

/// `?dry_run=true|false` (also `1|0`); anything else is a 400, not a silent real run.
fn dry_run(query: Option<&str>) -> Result<bool, Reply> {
    let mut dry_run = false;
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "dry_run" {
            return Err(Reply::new(
                StatusCode::BAD_REQUEST,
                json!({
                    "error": format!("unknown query parameter `{}`; the only one is dry_run=true|false", truncated(name, 32)),
                    "problems": [{"path": format!("?{}", truncated(name, 32)), "message": "unknown query parameter"}],
                }),
            ));
        }
        dry_run = match value {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(Reply::new(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "error": format!("dry_run=`{}` is neither true nor false", truncated(other, 32)),
                        "problems": [{"path": "?dry_run", "message": "must be true or false"}],
                    }),
                ))
            }
        };
    }
    Ok(dry_run)
}

/// A vendor delivery may carry several events: each has its own result; the status is
/// the one that asks most of the sender (503 retry > 409 > 202 > 200).
fn combine(replies: Vec<Reply>, ignored: Vec<Value>, dry_run: bool) -> Reply {
    let rank = |status: StatusCode| match status.as_u16() {
        503 => 4,
        409 => 3,
        202 => 2,
        _ => 1,
    };
    let status = replies
        .iter()
        .map(|reply| reply.status)
        .max_by_key(|status| rank(*status))
        .unwrap_or(StatusCode::OK);
    let retry_after = replies.iter().any(|reply| reply.retry_after);
    let mut body = json!({
        "status": if replies.is_empty() { "ignored" } else if retry_after { "retry" } else { "accepted" },
        "results": replies.into_iter().map(|reply| reply.body).collect::<Vec<_>>(),
        "ignored": ignored,
    });
    if dry_run {
        body["dry_run"] = json!(true);
    }
    Reply {
        retry_after,
        ..Reply::new(status, body)
    }
}

/// The accepted keys of a source: the current one, and the previous one while a rotation
/// is under way. A missing or unusable key is deprov's fault (500), not the sender's.
pub(crate) async fn source_keys<S: SecretSource>(
    secrets: &S,
    name: &str,
) -> Result<Vec<String>, Reply> {
    let misconfigured = |message: String| {
        tracing::error!(error = %message, "source key unusable");
        Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("deprov's key for this source is misconfigured: {message}"),
        )
    };
    let secret = match secrets.secret(name).await {
        Ok(secret) => secret,
        Err(err @ SecretError::Unreadable { .. }) => return Err(Reply::unavailable(err)),
        Err(err) => return Err(misconfigured(err.to_string())),
    };
    // A plain-string secret reads as the field `token`.
    let key = secret
        .field("key")
        .or_else(|_| secret.field("token"))
        .map_err(|_| {
            misconfigured(format!(
                "secret \"{name}\" has no field \"key\"; store the key as a plain string or as {{\"key\": \"…\"}}"
            ))
        })?;
    if key.trim().is_empty() {
        return Err(misconfigured(format!(
            "secret \"{name}\" holds an empty key"
        )));
    }
    let mut keys = vec![key.to_string()];
    if let Ok(previous) = secret.field("previous_key") {
        if !previous.trim().is_empty() {
            keys.push(previous.to_string());
        }
    }
    Ok(keys)
}

/// A source that is not configured: the route exists but answers nothing else.
pub(crate) fn not_configured(route: Route, how: &str) -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        format!("the {} source is not configured here; {how}", route.path()),
    )
}

/// An event a source built from its vendor's payload, checked like any other event.
/// Problems name the vendor's field (`at`) and the event field they became.
pub(crate) fn checked_event(value: &Value, at: &str) -> Result<LifecycleEvent, Vec<Problem>> {
    let bytes = serde_json::to_vec(value).map_err(|err| {
        vec![Problem {
            path: at.to_string(),
            line: None,
            message: format!("cannot encode the mapped event: {err}"),
        }]
    })?;
    LifecycleEvent::parse(&bytes).map_err(|invalid| {
        invalid
            .problems
            .into_iter()
            .map(|problem| Problem {
                path: at.to_string(),
                line: None,
                message: format!(
                    "maps to an invalid lifecycle event: {}: {}",
                    problem.path, problem.message
                ),
            })
            .collect()
    })
}

/// The header's value as text; `None` when absent, a replacement character when it is
/// not visible ASCII (which then fails whatever check it is for).
pub(crate) fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .map(|value| value.to_str().unwrap_or("\u{fffd}"))
}

/// At most `max` characters of something the sender wrote, for an error message.
pub(crate) fn truncated(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Dry run: what accepting the event would do, changing nothing (no claim, no schedule,
/// no start). Reads the person's pending schedules to say which would move.
async fn plan_launch<R, S, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    event: &LifecycleEvent,
    now: DateTime<Utc>,
) -> Reply
where
    Y: RunScheduler,
{
    let run_id = ids::run_id(&event.source, &event.event_id);
    let start_at = launch::start_at(event, now);
    let replaced = if launch::supersedes_schedules(event.kind) {
        match deps.scheduler.pending_for(&event.person.id).await {
            Ok(pending) => pending
                .into_iter()
                .filter(|pending| pending.run_id != run_id)
                .map(|pending| pending.run_id)
                .collect(),
            Err(err) => return Reply::unavailable(err),
        }
    } else {
        Vec::new()
    };
    let mut body = json!({
        "dry_run": true,
        "run_id": run_id,
        "status": if start_at.is_some() { "would_schedule" } else { "would_start" },
        "would_unschedule": replaced,
        "event": event,
    });
    if let Some(at) = start_at {
        body["start_at"] = json!(at.to_rfc3339());
    }
    Reply::new(StatusCode::OK, body)
}

/// Dedupe, then schedule or start; a leaver's newer date moves their pending schedule, a
/// rehire or cancel removes it.
async fn launch_run<R, S, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    event: LifecycleEvent,
    now: DateTime<Utc>,
) -> Reply
where
    R: RunStore,
    X: RunStarter,
    Y: RunScheduler,
{
    let run_id = ids::run_id(&event.source, &event.event_id);

    // What this event id said the first time: the same id with other content is a
    // conflict, not a duplicate (the sender must use a new id for a corrected event).
    // Stored as a claim of its own, `<event_id>#content` (`#` cannot occur in an id).
    let content = match serde_json::to_vec(&event) {
        Ok(bytes) => ids::sha256_hex(&bytes),
        Err(err) => return Reply::unavailable(format!("encoding the event: {err}")),
    };
    let content_key = format!("{}#content", event.event_id);
    match deps
        .runs
        .claim_event(&event.source, &content_key, &content)
        .await
    {
        Ok(EventClaim::Existing(first)) if first != content => {
            tracing::warn!("event id reused with different content");
            return Reply::new(
                StatusCode::CONFLICT,
                json!({
                    "error": format!(
                        "event \"{}\" from \"{}\" was delivered before with different content; a new or corrected event needs a new event_id",
                        event.event_id, event.source
                    ),
                    "run_id": run_id,
                }),
            );
        }
        Ok(_) => {}
        Err(err) => return Reply::unavailable(err),
    }
    let duplicate = match deps
        .runs
        .claim_event(&event.source, &event.event_id, &run_id)
        .await
    {
        Ok(EventClaim::New) => false,
        Ok(EventClaim::Existing(_)) => true,
        Err(err) => return Reply::unavailable(err),
    };

    // A claimed event is launched again on every delivery: the start (same execution
    // name) and the schedule (same schedule name) are idempotent, and a delivery whose
    // start failed after its claim is finished by the retry.
    let person_id = event.person.id.clone();
    let kind = event.kind;
    let event_id = event.event_id.clone();
    let start_at = launch::start_at(&event, now);
    let input = RunInput {
        event,
        dry_run: false,
    };
    if let Some(at) = start_at {
        if duplicate {
            // A schedule moved or cancelled since stays removed: this is a late copy.
            match deps.scheduler.removed(&run_id).await {
                Ok(Some(reason)) => {
                    tracing::info!(%reason, "duplicate of an event whose schedule was removed");
                    return Reply::new(
                        StatusCode::OK,
                        json!({"run_id": run_id, "status": "duplicate", "start_at": at.to_rfc3339(), "schedule": "removed", "reason": reason}),
                    );
                }
                Ok(None) => {}
                Err(err) => return Reply::unavailable(err),
            }
        }
        if let Err(err) = deps
            .scheduler
            .schedule_run(&run_id, &person_id, at, &input)
            .await
        {
            return Reply::unavailable(err);
        }
        let reason = format!(
            "moved: run {run_id} (event {event_id}) now starts at {}",
            at.to_rfc3339()
        );
        let replaced = match unschedule_others(deps, &person_id, &run_id, &reason).await {
            Ok(replaced) => replaced,
            Err(reply) => return reply,
        };
        let at = at.to_rfc3339();
        tracing::info!(start_at = %at, duplicate, replaced = replaced.len(), "run scheduled");
        let mut body = json!({
            "run_id": run_id,
            "status": if duplicate { "duplicate" } else { "scheduled" },
            "start_at": at,
        });
        if !replaced.is_empty() {
            body["replaced"] = json!(replaced);
        }
        let status = if duplicate {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        return Reply::new(status, body);
    }

    let unscheduled = if launch::supersedes_schedules(kind) {
        let reason = if kind.stops_pending_runs() {
            format!("removed: {} event {event_id} (run {run_id})", kind.as_str())
        } else {
            format!("superseded: run {run_id} (event {event_id}) takes effect now")
        };
        match unschedule_others(deps, &person_id, &run_id, &reason).await {
            Ok(removed) => removed,
            Err(reply) => return reply,
        }
    } else {
        Vec::new()
    };
    let mut reply = match deps.starter.start_run(&run_id, &input).await {
        Ok(RunStart::Started) if !duplicate => {
            tracing::info!("run started");
            Reply::new(
                StatusCode::ACCEPTED,
                json!({"run_id": run_id, "status": "started"}),
            )
        }
        Ok(_) => {
            tracing::info!("duplicate delivery");
            Reply::new(
                StatusCode::OK,
                json!({"run_id": run_id, "status": "duplicate"}),
            )
        }
        Err(err) => return Reply::unavailable(err),
    };
    if !unscheduled.is_empty() {
        reply.body["unscheduled"] = json!(unscheduled);
    }
    reply
}

/// Removes the person's pending schedules other than `keep`'s; returns their run ids.
async fn unschedule_others<R, S, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    person_id: &str,
    keep: &str,
    reason: &str,
) -> Result<Vec<String>, Reply>
where
    Y: RunScheduler,
{
    let pending = deps
        .scheduler
        .pending_for(person_id)
        .await
        .map_err(Reply::unavailable)?;
    let mut removed = Vec::new();
    for run in pending.into_iter().filter(|run| run.run_id != keep) {
        deps.scheduler
            .unschedule(&run.run_id, reason)
            .await
            .map_err(Reply::unavailable)?;
        tracing::info!(removed_run = %run.run_id, %reason, "pending schedule removed");
        removed.push(run.run_id);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
