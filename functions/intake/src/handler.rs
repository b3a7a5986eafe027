//! The HR webhook: a signed lifecycle event in, a run started (or scheduled for the
//! event's effective time) out.
//!
//! In order, and nothing happens unless every step before passed: POST only (405); at most
//! 64 KiB (413, from `Content-Length` and from the body itself); the `Deprov-Signature`
//! over the raw body bytes (API Gateway's base64 is decoded by `lambda_http`) with the key
//! from Secrets Manager (401); the event's schema (400, every problem with its JSON path);
//! dedupe by `(source, event_id)` (409 when a delivered id comes back with other content);
//! then a one-time schedule (202 `scheduled`) or a Step Functions execution named by the
//! run id (202 `started`, 200 `duplicate`). A store or AWS failure answers 503 with
//! `Retry-After`: the HR system retries, and a retry of a claimed event starts the run
//! again under the same name, which is harmless, so a claim whose start failed is never
//! stranded.

use chrono::{DateTime, Utc};
use deprov_aws::lambda::required_env;
use deprov_aws::scheduler;
use deprov_core::event::{LifecycleEvent, MAX_EVENT_BYTES};
use deprov_core::flow::RunInput;
use deprov_core::ids;
use deprov_core::launch::{self, RunScheduler, RunStart, RunStarter};
use deprov_core::ports::{Clock, EventClaim, RunStore, SecretError, SecretSource};
use deprov_core::signature;
use lambda_http::http::{header, HeaderMap, Method, StatusCode};
use lambda_http::{Body, Error, Request, Response};
use serde_json::{json, Value};
use tracing::Instrument;

/// Seconds the HR system is asked to wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u64 = 30;

/// The function's settings, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub runs_table: String,
    pub state_machine_arn: String,
    /// Secrets Manager id of the webhook key: a plain string, or JSON `{"key": "…"}`
    /// (with an optional `"previous_key"` accepted during a rotation).
    pub webhook_secret: String,
    pub scheduler_role_arn: String,
    pub schedule_group: String,
}

impl Config {
    pub fn from_env() -> Result<Config, deprov_aws::ConfigError> {
        Ok(Config {
            runs_table: required_env("DEPROV_RUNS_TABLE")?,
            state_machine_arn: required_env("DEPROV_STATE_MACHINE_ARN")?,
            webhook_secret: required_env("DEPROV_WEBHOOK_SECRET")?,
            scheduler_role_arn: required_env("DEPROV_SCHEDULER_ROLE_ARN")?,
            schedule_group: std::env::var("DEPROV_SCHEDULE_GROUP")
                .ok()
                .filter(|group| !group.trim().is_empty())
                .unwrap_or_else(|| scheduler::DEFAULT_GROUP.to_string()),
        })
    }
}

/// What the handler works with: the runs table (dedupe), the webhook key, what starts and
/// schedules runs, and the clock.
pub struct Deps<R, S, X, Y, C> {
    pub runs: R,
    pub secrets: S,
    pub starter: X,
    pub scheduler: Y,
    pub clock: C,
    /// Secrets Manager id of the webhook key.
    pub webhook_secret: String,
}

/// A response before it becomes HTTP.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub retry_after: bool,
}

impl Reply {
    fn new(status: StatusCode, body: Value) -> Reply {
        Reply {
            status,
            body,
            retry_after: false,
        }
    }

    fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
        Reply::new(status, json!({ "error": message.to_string() }))
    }

    /// A store or AWS call failed: nothing was started; try again.
    fn unavailable(message: impl std::fmt::Display) -> Reply {
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

    fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Body::Text(self.body.to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        if self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        }
        response
    }
}

/// One HTTP request. Every outcome is a response; the error is never used.
pub async fn handle<R, S, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    request: Request,
) -> Result<Response<Body>, Error>
where
    R: RunStore,
    S: SecretSource,
    X: RunStarter,
    Y: RunScheduler,
    C: Clock,
{
    let span = tracing::info_span!(
        "intake",
        run_id = tracing::field::Empty,
        source = tracing::field::Empty,
        event_id = tracing::field::Empty,
    );
    let reply = accept(deps, request.method(), request.headers(), request.body())
        .instrument(span)
        .await;
    Ok(reply.into_response())
}

/// The decision for one delivery.
pub async fn accept<R, S, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply
where
    R: RunStore,
    S: SecretSource,
    X: RunStarter,
    Y: RunScheduler,
    C: Clock,
{
    if method != Method::POST {
        return Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not accepted; POST a signed lifecycle event"),
        );
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let size = declared.unwrap_or(0).max(body.len() as u64);
    if size > MAX_EVENT_BYTES as u64 {
        return Reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is {size} bytes; the limit is {MAX_EVENT_BYTES}"),
        );
    }

    // The signature, before the body is even parsed.
    let keys = match webhook_keys(&deps.secrets, &deps.webhook_secret).await {
        Ok(keys) => keys,
        Err(reply) => return reply,
    };
    let key_refs: Vec<&[u8]> = keys.iter().map(|key| key.as_bytes()).collect();
    let header = headers
        .get(signature::HEADER)
        .map(|value| value.to_str().unwrap_or("\u{fffd}"));
    let now = deps.clock.now();
    if let Err(err) = signature::verify(header, body, &key_refs, now.timestamp()) {
        tracing::warn!(reason = %err, "signature refused");
        return Reply::error(StatusCode::UNAUTHORIZED, err);
    }

    let event = match LifecycleEvent::parse(body) {
        Ok(event) => event,
        Err(invalid) => {
            tracing::warn!(problems = invalid.problems.len(), "invalid event refused");
            return Reply::new(
                StatusCode::BAD_REQUEST,
                json!({
                    "error": format!("the {} is invalid; fix every problem listed", invalid.what),
                    "problems": invalid.problems.iter().map(|problem| json!({
                        "path": problem.path,
                        "message": problem.message,
                    })).collect::<Vec<_>>(),
                }),
            );
        }
    };
    let span = tracing::Span::current();
    span.record("source", event.source.as_str());
    span.record("event_id", event.event_id.as_str());
    launch_run(deps, event, now).await
}

/// The webhook keys: the current one, and the previous one while a rotation is under way.
async fn webhook_keys<S: SecretSource>(secrets: &S, name: &str) -> Result<Vec<String>, Reply> {
    let misconfigured = |message: String| {
        tracing::error!(error = %message, "webhook key unusable");
        Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("deprov's webhook key is misconfigured: {message}"),
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

/// Dedupe, then schedule or start.
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
    tracing::Span::current().record("run_id", run_id.as_str());

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
    let start_at = launch::start_at(&event, now);
    let input = RunInput {
        event,
        dry_run: false,
    };
    if let Some(at) = start_at {
        if let Err(err) = deps
            .scheduler
            .schedule_run(&run_id, &person_id, at, &input)
            .await
        {
            return Reply::unavailable(err);
        }
        let at = at.to_rfc3339();
        tracing::info!(start_at = %at, duplicate, "run scheduled");
        return if duplicate {
            Reply::new(
                StatusCode::OK,
                json!({"run_id": run_id, "status": "duplicate", "start_at": at}),
            )
        } else {
            Reply::new(
                StatusCode::ACCEPTED,
                json!({"run_id": run_id, "status": "scheduled", "start_at": at}),
            )
        };
    }
    match deps.starter.start_run(&run_id, &input).await {
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
        Err(err) => Reply::unavailable(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use deprov_core::launch::MemoryLauncher;
    use deprov_core::testing::{ManualClock, MemorySecrets, MemoryStore};

    const SECRET: &str = "deprov/webhook";
    const KEY: &str = "whsec-test-key-0123456789";

    type TestDeps = Deps<MemoryStore, MemorySecrets, MemoryLauncher, MemoryLauncher, ManualClock>;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 17, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn deps() -> TestDeps {
        Deps {
            runs: MemoryStore::default(),
            secrets: MemorySecrets::default().with(SECRET, "key", KEY),
            starter: MemoryLauncher::default(),
            scheduler: MemoryLauncher::default(),
            clock: ManualClock::at(now()),
            webhook_secret: SECRET.into(),
        }
    }

    /// The sample termination, effective at `now()` + `ahead`.
    fn event(ahead: chrono::Duration) -> Value {
        json!({
            "event_id": "hr-1001", "source": "workday", "kind": "termination",
            "termination_type": "involuntary",
            "person": {"id": "E1001", "email": "ada@example.com"},
            "effective_at": (now() + ahead).to_rfc3339(),
            "requested_by": "hr-bot"
        })
    }

    fn body_of(value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).unwrap_or_default()
    }

    fn signed(body: &[u8], t: i64) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = signature::sign(KEY.as_bytes(), t, body);
        headers.insert(signature::HEADER, value.parse().unwrap());
        headers
    }

    async fn post(deps: &TestDeps, body: &[u8], headers: &HeaderMap) -> Reply {
        accept(deps, &Method::POST, headers, body).await
    }

    async fn post_signed(deps: &TestDeps, body: &[u8]) -> Reply {
        post(deps, body, &signed(body, now().timestamp())).await
    }

    fn run_id() -> String {
        ids::run_id("workday", "hr-1001")
    }

    #[tokio::test]
    async fn a_signed_valid_event_starts_its_run() {
        let deps = deps();
        let reply = post_signed(&deps, &body_of(&event(chrono::Duration::zero()))).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(reply.body, json!({"run_id": run_id(), "status": "started"}));
        let started = deps.starter.started();
        assert_eq!(started.len(), 1);
        let input = &started[&run_id()];
        assert!(!input.dry_run);
        assert_eq!(input.event.event_id, "hr-1001");
        assert!(deps.scheduler.scheduled().is_empty());
    }

    #[tokio::test]
    async fn the_http_response_is_json_and_the_raw_request_body_is_what_is_verified() {
        let deps = deps();
        let body = body_of(&event(chrono::Duration::zero()));
        let mut request = Request::new(Body::Binary(body.clone()));
        *request.method_mut() = Method::POST;
        *request.headers_mut() = signed(&body, now().timestamp());
        let response = handle(&deps, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let reply: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
        assert_eq!(reply["status"], "started");
    }

    /// `events/intake.json` (an API Gateway HTTP API request, signed with the documented
    /// sample key at its own time) goes through lambda_http's decoding and is accepted.
    #[tokio::test]
    async fn the_shipped_sample_request_is_accepted() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/intake.json");
        let text = std::fs::read_to_string(path).unwrap();
        let request = lambda_http::request::from_str(&text).unwrap();
        let signed_at = Utc.timestamp_opt(1_764_086_400, 0).single().unwrap();
        let mut deps = deps();
        deps.secrets = MemorySecrets::default().with(SECRET, "key", "deprov-sample-webhook-key");
        deps.clock = ManualClock::at(signed_at + chrono::Duration::seconds(10));
        let response = handle(&deps, request).await.unwrap();
        let reply: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
        // The sample termination is effective a year after it was signed: scheduled.
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{reply}");
        assert_eq!(reply["status"], "scheduled");
        assert_eq!(reply["run_id"], ids::run_id("workday", "hr-2026-000123"));
        assert_eq!(deps.scheduler.scheduled().len(), 1);
    }

    #[tokio::test]
    async fn a_tampered_body_is_refused_and_nothing_starts() {
        let deps = deps();
        let body = body_of(&event(chrono::Duration::zero()));
        let headers = signed(&body, now().timestamp());
        let tampered = String::from_utf8(body)
            .unwrap()
            .replace("E1001", "E1002")
            .into_bytes();
        let reply = post(&deps, &tampered, &headers).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        let error = reply.body["error"].as_str().unwrap_or_default();
        assert!(error.contains("no v1 signature"), "{error}");
        assert!(!reply.body.to_string().contains(KEY));
        assert_eq!(deps.starter.start_calls(), 0);
        // Nothing was claimed either: the genuine delivery still starts the run.
        let genuine = body_of(&event(chrono::Duration::zero()));
        assert_eq!(
            post_signed(&deps, &genuine).await.status,
            StatusCode::ACCEPTED
        );
    }

    #[tokio::test]
    async fn stale_missing_and_malformed_signatures_are_refused() {
        let deps = deps();
        let body = body_of(&event(chrono::Duration::zero()));
        let stale = post(&deps, &body, &signed(&body, now().timestamp() - 600)).await;
        assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
        assert!(stale.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("600 s old"));

        let missing = post(&deps, &body, &HeaderMap::new()).await;
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert!(missing.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("missing"));

        let mut headers = HeaderMap::new();
        headers.insert(signature::HEADER, "sha256=abc".parse().unwrap());
        let malformed = post(&deps, &body, &headers).await;
        assert_eq!(malformed.status, StatusCode::UNAUTHORIZED);
        assert!(malformed.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("t=<unix seconds>,v1="));
        assert_eq!(deps.starter.start_calls(), 0);
    }

    #[tokio::test]
    async fn a_plain_string_secret_and_a_previous_key_are_accepted() {
        let mut deps = deps();
        // SecretsManagerSource reads a plain string as the field `token`.
        deps.secrets = MemorySecrets::default().with(SECRET, "token", KEY);
        let body = body_of(&event(chrono::Duration::zero()));
        assert_eq!(post_signed(&deps, &body).await.status, StatusCode::ACCEPTED);

        let mut deps = self::deps();
        deps.secrets = MemorySecrets::default()
            .with(SECRET, "key", "whsec-new-key-after-rotation")
            .with(SECRET, "previous_key", KEY);
        assert_eq!(post_signed(&deps, &body).await.status, StatusCode::ACCEPTED);

        let mut deps = self::deps();
        deps.secrets = MemorySecrets::default().with(SECRET, "other", KEY);
        let reply = post_signed(&deps, &body).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(reply.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("has no field \"key\""));
        assert!(!reply.body.to_string().contains(KEY));
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_before_anything_else() {
        let deps = deps();
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        // Unsigned: the size is checked first.
        let reply = post(&deps, &big, &HeaderMap::new()).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        // A declared length over the limit is enough.
        let mut headers = signed(b"{}", now().timestamp());
        headers.insert(header::CONTENT_LENGTH, "1000000".parse().unwrap());
        let reply = post(&deps, b"{}", &headers).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(deps.starter.start_calls(), 0);
    }

    #[tokio::test]
    async fn other_methods_are_refused() {
        let deps = deps();
        let reply = accept(&deps, &Method::GET, &HeaderMap::new(), b"").await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reply.into_response().headers()[header::ALLOW], "POST");
    }

    #[tokio::test]
    async fn an_invalid_event_lists_every_problem_with_its_path() {
        let deps = deps();
        let mut value = event(chrono::Duration::zero());
        value["kind"] = json!("fired");
        value["person"]["email"] = json!(42);
        value["colour"] = json!("blue");
        let reply = post_signed(&deps, &body_of(&value)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
        let paths: Vec<&str> = reply.body["problems"]
            .as_array()
            .map(|problems| {
                problems
                    .iter()
                    .filter_map(|problem| problem["path"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        for path in ["$.kind", "$.person.email", "$.colour"] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        assert!(reply.body["problems"][0]["message"].is_string());
        assert_eq!(deps.starter.start_calls(), 0);

        let reply = post_signed(&deps, b"not json").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn duplicate_deliveries_start_one_run() {
        let deps = deps();
        let value = event(chrono::Duration::zero());
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let reply = post_signed(&deps, &body_of(&value)).await;
            statuses.push((reply.status, reply.body["status"].clone()));
        }
        assert_eq!(
            statuses,
            vec![
                (StatusCode::ACCEPTED, json!("started")),
                (StatusCode::OK, json!("duplicate")),
                (StatusCode::OK, json!("duplicate")),
            ]
        );
        assert_eq!(deps.starter.started().len(), 1);
        // The same event re-serialised (other key order, spacing) is still a duplicate.
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        assert_eq!(post_signed(&deps, &pretty).await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_reused_event_id_with_other_content_is_a_conflict() {
        let deps = deps();
        let value = event(chrono::Duration::zero());
        assert_eq!(
            post_signed(&deps, &body_of(&value)).await.status,
            StatusCode::ACCEPTED
        );
        let mut changed = value.clone();
        changed["person"]["id"] = json!("E2002");
        let reply = post_signed(&deps, &body_of(&changed)).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
        assert!(reply.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("new event_id"));
        assert_eq!(deps.starter.start_calls(), 1);
    }

    #[tokio::test]
    async fn a_future_termination_is_scheduled_not_started() {
        let deps = deps();
        let value = event(chrono::Duration::days(5));
        let reply = post_signed(&deps, &body_of(&value)).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        let at = now() + chrono::Duration::days(5);
        assert_eq!(
            reply.body,
            json!({"run_id": run_id(), "status": "scheduled", "start_at": at.to_rfc3339()})
        );
        assert_eq!(deps.starter.start_calls(), 0);
        let scheduled = deps.scheduler.scheduled();
        assert_eq!(scheduled[&run_id()].0, at);
        assert_eq!(scheduled[&run_id()].1.event.event_id, "hr-1001");

        // Again: a duplicate, still one schedule. A transfer dated ahead starts now.
        let again = post_signed(&deps, &body_of(&value)).await;
        assert_eq!(
            (again.status, again.body["status"].clone()),
            (StatusCode::OK, json!("duplicate"))
        );
        assert_eq!(deps.scheduler.scheduled().len(), 1);
        let mut transfer = value.clone();
        transfer["event_id"] = json!("hr-1002");
        transfer["kind"] = json!("transfer");
        transfer["transfer"] = json!({"from_roles": ["a"], "to_roles": ["b"]});
        if let Some(object) = transfer.as_object_mut() {
            object.remove("termination_type");
        }
        let reply = post_signed(&deps, &body_of(&transfer)).await;
        assert_eq!(
            (reply.status, reply.body["status"].clone()),
            (StatusCode::ACCEPTED, json!("started")),
            "{}",
            reply.body
        );
    }

    #[tokio::test]
    async fn a_failed_start_answers_503_and_the_retry_starts_the_run() {
        let deps = deps();
        let body = body_of(&event(chrono::Duration::zero()));
        deps.starter.fail_next(1);
        let reply = post_signed(&deps, &body).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.retry_after);
        assert!(reply.body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("retry"));
        let response = reply.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "30");
        assert!(deps.starter.started().is_empty());

        // The event is claimed now; the retry must still start it.
        let retry = post_signed(&deps, &body).await;
        assert!(retry.status.is_success(), "{}", retry.body);
        assert_eq!(deps.starter.started().len(), 1);
        assert_eq!(deps.starter.start_calls(), 2);
    }

    #[tokio::test]
    async fn a_failed_schedule_answers_503_and_the_retry_schedules() {
        let deps = deps();
        let body = body_of(&event(chrono::Duration::days(2)));
        deps.scheduler.fail_next(1);
        assert_eq!(
            post_signed(&deps, &body).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(deps.scheduler.scheduled().is_empty());
        assert!(post_signed(&deps, &body).await.status.is_success());
        assert_eq!(deps.scheduler.scheduled().len(), 1);
    }
}
