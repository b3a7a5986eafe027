//! The intake's decisions against the in-memory fakes: every rejection starts nothing.

use chrono::{DateTime, Duration, TimeZone, Utc};
use http::{header, HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use super::*;
use crate::launch::MemoryLauncher;
use crate::signature;
use crate::testing::{ManualClock, MemorySecrets, MemoryStore};

const SECRET: &str = "deprov/webhook";
const KEY: &str = "whsec-test-key-0123456789";
const BAMBOO_SECRET: &str = "deprov/bamboohr";
const BAMBOO_KEY: &str = "bamboo-private-key-42";
const OKTA_SECRET: &str = "deprov/okta";
const OKTA_KEY: &str = "okta-hook-secret-value";

type TestDeps = Deps<MemoryStore, MemorySecrets, MemoryLauncher, MemoryLauncher, ManualClock>;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 17, 0, 0)
        .single()
        .unwrap_or_default()
}

fn deps() -> TestDeps {
    Deps {
        runs: MemoryStore::default(),
        secrets: MemorySecrets::default()
            .with(SECRET, "key", KEY)
            .with(BAMBOO_SECRET, "key", BAMBOO_KEY)
            .with(OKTA_SECRET, "key", OKTA_KEY),
        starter: MemoryLauncher::default(),
        scheduler: MemoryLauncher::default(),
        clock: ManualClock::at(now()),
        settings: Settings {
            bamboohr_secret: Some(BAMBOO_SECRET.into()),
            okta_secret: Some(OKTA_SECRET.into()),
            ..Settings::generic(SECRET)
        },
    }
}

/// Nothing was started, scheduled or unscheduled.
fn assert_nothing_started(deps: &TestDeps) {
    assert_eq!(deps.starter.start_calls(), 0);
    assert_eq!(deps.scheduler.schedule_calls(), 0);
    assert!(deps.scheduler.removed_schedules().is_empty());
}

/// The sample termination, effective at `now()` + `ahead`, written at +01:00.
fn event(id: &str, ahead: Duration) -> Value {
    let offset = chrono::FixedOffset::east_opt(3600).unwrap();
    json!({
        "event_id": id, "source": "workday", "kind": "termination",
        "termination_type": "involuntary",
        "person": {"id": "E1001", "email": "ada@example.com"},
        "effective_at": (now() + ahead).with_timezone(&offset).to_rfc3339(),
        "requested_by": "hr-bot"
    })
}

fn body_of(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn signed(body: &[u8], t: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = signature::sign(KEY.as_bytes(), t, body);
    headers.insert(signature::HEADER, value.parse().unwrap());
    headers
}

async fn call(
    deps: &TestDeps,
    method: Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    accept(
        deps,
        Delivery {
            method: &method,
            path,
            query,
            headers,
            body,
        },
    )
    .await
}

async fn post_signed(deps: &TestDeps, body: &[u8]) -> Reply {
    let headers = signed(body, now().timestamp());
    call(deps, Method::POST, "/events", None, &headers, body).await
}

fn run_id(event_id: &str) -> String {
    ids::run_id("workday", event_id)
}

fn error_of(reply: &Reply) -> &str {
    reply.body["error"].as_str().unwrap_or_default()
}

fn paths_of(reply: &Reply) -> Vec<String> {
    reply.body["problems"]
        .as_array()
        .map(|problems| {
            problems
                .iter()
                .filter_map(|problem| problem["path"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ----- generic route --------------------------------------------------------------------

#[tokio::test]
async fn a_signed_valid_event_starts_its_run() {
    let deps = deps();
    let reply = post_signed(&deps, &body_of(&event("hr-1001", Duration::zero()))).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(
        reply.body,
        json!({"run_id": run_id("hr-1001"), "status": "started"})
    );
    let started = deps.starter.started();
    assert!(!started[&run_id("hr-1001")].dry_run);
    assert!(deps.scheduler.scheduled().is_empty());
    let headers = reply.headers();
    assert!(headers
        .iter()
        .any(|(name, value)| name == header::CONTENT_TYPE && value == "application/json"));
}

#[tokio::test]
async fn routes_match_with_and_without_a_stage_prefix_and_unknown_paths_are_404() {
    assert_eq!(Route::from_path("/events"), Some(Route::Events));
    assert_eq!(Route::from_path("/prod/events"), Some(Route::Events));
    assert_eq!(Route::from_path("/sources/okta/"), Some(Route::Okta));
    assert_eq!(Route::from_path("/a/b/events"), None);
    assert_eq!(Route::from_path("/xevents"), None);
    let deps = deps();
    let reply = call(&deps, Method::POST, "/nope", None, &HeaderMap::new(), b"{}").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(error_of(&reply).contains("/sources/bamboohr"));
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn a_tampered_body_is_refused_and_nothing_starts() {
    let deps = deps();
    let body = body_of(&event("hr-1001", Duration::zero()));
    let headers = signed(&body, now().timestamp());
    let tampered = String::from_utf8(body).unwrap().replace("E1001", "E1002");
    let reply = call(
        &deps,
        Method::POST,
        "/events",
        None,
        &headers,
        tampered.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&reply).contains("no v1 signature"));
    assert!(!reply.body.to_string().contains(KEY));
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn stale_missing_and_malformed_signatures_are_refused() {
    let deps = deps();
    let body = body_of(&event("hr-1001", Duration::zero()));
    let stale = call(
        &deps,
        Method::POST,
        "/events",
        None,
        &signed(&body, now().timestamp() - 600),
        &body,
    )
    .await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&stale).contains("600 s old"), "{}", stale.body);

    let missing = call(
        &deps,
        Method::POST,
        "/events",
        None,
        &HeaderMap::new(),
        &body,
    )
    .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&missing).contains("missing"));

    let mut headers = HeaderMap::new();
    headers.insert(signature::HEADER, "sha256=abc".parse().unwrap());
    let malformed = call(&deps, Method::POST, "/events", None, &headers, &body).await;
    assert_eq!(malformed.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&malformed).contains("t=<unix seconds>,v1="));
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn a_missing_key_is_deprovs_fault_and_never_leaks() {
    let mut deps = deps();
    deps.secrets = MemorySecrets::default().with(SECRET, "other", KEY);
    let reply = post_signed(&deps, &body_of(&event("hr-1001", Duration::zero()))).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error_of(&reply).contains("has no field \"key\""));
    assert!(!reply.body.to_string().contains(KEY));
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_anything_else() {
    let deps = deps();
    let big = vec![b' '; MAX_EVENT_BYTES + 1];
    for path in Route::ALL.map(Route::path) {
        let reply = call(&deps, Method::POST, path, None, &HeaderMap::new(), &big).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert!(error_of(&reply).contains("the limit is 65536"));
    }
    let mut headers = signed(b"{}", now().timestamp());
    headers.insert(header::CONTENT_LENGTH, "1000000".parse().unwrap());
    let reply = call(&deps, Method::POST, "/events", None, &headers, b"{}").await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn other_methods_are_refused_with_allow() {
    let deps = deps();
    let reply = call(&deps, Method::GET, "/events", None, &HeaderMap::new(), b"").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply
        .headers()
        .iter()
        .any(|(name, value)| name == header::ALLOW && value == "POST"));
    let reply = call(
        &deps,
        Method::PUT,
        "/sources/okta",
        None,
        &HeaderMap::new(),
        b"",
    )
    .await;
    assert_eq!(reply.allow, Some("GET, POST"));
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn malformed_json_and_schema_violations_list_every_problem() {
    let deps = deps();
    let mut value = event("hr-1001", Duration::zero());
    value["kind"] = json!("fired");
    value["person"]["email"] = json!(42);
    value["colour"] = json!("blue");
    let reply = post_signed(&deps, &body_of(&value)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let paths = paths_of(&reply);
    for path in ["$.kind", "$.person.email", "$.colour"] {
        assert!(
            paths.iter().any(|p| p == path),
            "{path} missing from {paths:?}"
        );
    }
    let reply = post_signed(&deps, b"not json").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body["problems"][0]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn duplicate_deliveries_start_one_run_and_a_reused_id_is_a_conflict() {
    let deps = deps();
    let value = event("hr-1001", Duration::zero());
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
    let mut changed = value.clone();
    changed["person"]["email"] = json!("eve@example.com");
    let reply = post_signed(&deps, &body_of(&changed)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
    assert!(error_of(&reply).contains("new event_id"));
    assert_eq!(deps.starter.started().len(), 1);
    assert_eq!(deps.starter.start_calls(), 3);
}

#[tokio::test]
async fn a_failed_start_answers_503_and_the_retry_starts_the_run() {
    let deps = deps();
    let body = body_of(&event("hr-1001", Duration::zero()));
    deps.starter.fail_next(1);
    let reply = post_signed(&deps, &body).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply
        .headers()
        .iter()
        .any(|(name, value)| name == header::RETRY_AFTER && value == "30"));
    assert!(deps.starter.started().is_empty());
    assert!(post_signed(&deps, &body).await.status.is_success());
    assert_eq!(deps.starter.started().len(), 1);
}

// ----- future-dated terminations ----------------------------------------------------------

#[tokio::test]
async fn a_termination_dated_tomorrow_schedules_moves_and_vanishes_on_cancel() {
    let deps = deps();
    let first = event("hr-1", Duration::days(1));
    let reply = post_signed(&deps, &body_of(&first)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    // The time is answered and stored with the offset the HR system gave.
    let given = first["effective_at"].as_str().unwrap();
    assert!(given.ends_with("+01:00"));
    assert_eq!(
        reply.body,
        json!({"run_id": run_id("hr-1"), "status": "scheduled", "start_at": given})
    );
    assert_eq!(
        deps.scheduler.scheduled()[&run_id("hr-1")].0.to_rfc3339(),
        given
    );
    assert_eq!(deps.starter.start_calls(), 0);

    // HR corrects the last day: a new event for the same person moves the schedule.
    let moved = event("hr-2", Duration::days(5));
    let reply = post_signed(&deps, &body_of(&moved)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["replaced"], json!([run_id("hr-1")]));
    let scheduled = deps.scheduler.scheduled();
    assert_eq!(scheduled.keys().collect::<Vec<_>>(), vec![&run_id("hr-2")]);
    let removed = deps.scheduler.removed_schedules();
    assert!(
        removed[&run_id("hr-1")].starts_with("moved:"),
        "{removed:?}"
    );

    // A late copy of the first event does not bring its schedule back.
    let late = post_signed(&deps, &body_of(&first)).await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.body);
    assert_eq!(late.body["schedule"], "removed");
    assert_eq!(deps.scheduler.scheduled().len(), 1);

    // The termination is cancelled: the pending schedule vanishes, the cancel run starts
    // (it stops anything of the person's that is running).
    let mut cancel = event("hr-3", Duration::zero());
    cancel["kind"] = json!("cancel");
    cancel.as_object_mut().unwrap().remove("termination_type");
    let reply = post_signed(&deps, &body_of(&cancel)).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["unscheduled"], json!([run_id("hr-2")]));
    assert!(deps.scheduler.scheduled().is_empty());
    assert!(deps.scheduler.removed_schedules()[&run_id("hr-2")].contains("cancel"));
    assert_eq!(
        deps.starter.started().keys().collect::<Vec<_>>(),
        vec![&run_id("hr-3")]
    );
}

#[tokio::test]
async fn a_termination_effective_now_supersedes_a_pending_one_and_a_transfer_does_not() {
    let deps = deps();
    post_signed(&deps, &body_of(&event("hr-1", Duration::days(3)))).await;
    let mut transfer = event("hr-2", Duration::days(3));
    transfer["kind"] = json!("transfer");
    transfer["transfer"] = json!({"from_roles": ["a"], "to_roles": ["b"]});
    transfer.as_object_mut().unwrap().remove("termination_type");
    let reply = post_signed(&deps, &body_of(&transfer)).await;
    assert_eq!(reply.body["status"], "started", "{}", reply.body);
    assert_eq!(deps.scheduler.scheduled().len(), 1);

    let reply = post_signed(&deps, &body_of(&event("hr-3", Duration::zero()))).await;
    assert_eq!(reply.body["status"], "started");
    assert_eq!(reply.body["unscheduled"], json!([run_id("hr-1")]));
    assert!(deps.scheduler.scheduled().is_empty());
}

#[tokio::test]
async fn a_failed_schedule_answers_503_and_the_retry_schedules() {
    let deps = deps();
    let body = body_of(&event("hr-1", Duration::days(2)));
    deps.scheduler.fail_next(1);
    assert_eq!(
        post_signed(&deps, &body).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(deps.scheduler.scheduled().is_empty());
    assert!(post_signed(&deps, &body).await.status.is_success());
    assert_eq!(deps.scheduler.scheduled().len(), 1);
}

// ----- dry run ----------------------------------------------------------------------------

#[tokio::test]
async fn a_dry_run_says_what_would_happen_and_changes_nothing() {
    let deps = deps();
    post_signed(&deps, &body_of(&event("hr-1", Duration::days(1)))).await;
    let before_claims = deps.scheduler.schedule_calls();
    let body = body_of(&event("hr-2", Duration::days(4)));
    let headers = signed(&body, now().timestamp());
    let reply = call(
        &deps,
        Method::POST,
        "/events",
        Some("dry_run=true"),
        &headers,
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["dry_run"], true);
    assert_eq!(reply.body["status"], "would_schedule");
    assert_eq!(reply.body["would_unschedule"], json!([run_id("hr-1")]));
    assert_eq!(deps.scheduler.schedule_calls(), before_claims);
    assert!(deps.scheduler.removed_schedules().is_empty());
    // Nothing was claimed: the real delivery afterwards is new.
    let real = call(&deps, Method::POST, "/events", None, &headers, &body).await;
    assert_eq!(real.status, StatusCode::ACCEPTED);

    // A dry run still checks the signature, and a bad flag is an error, not a real run.
    let reply = call(
        &deps,
        Method::POST,
        "/events",
        Some("dry_run=true"),
        &HeaderMap::new(),
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = call(
        &deps,
        Method::POST,
        "/events",
        Some("dry_run=yes"),
        &headers,
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(paths_of(&reply), vec!["?dry_run"]);
}

// ----- Workday feed -----------------------------------------------------------------------

#[tokio::test]
async fn the_unsigned_feed_is_refused_unless_the_transport_is_trusted() {
    let mut deps = deps();
    let body = body_of(&event("wd-1", Duration::zero()));
    let reply = call(
        &deps,
        Method::POST,
        "/sources/workday",
        None,
        &HeaderMap::new(),
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(error_of(&reply).contains("IAM"));
    assert_nothing_started(&deps);

    deps.settings.workday_trusted = true;
    let reply = call(
        &deps,
        Method::POST,
        "/sources/workday",
        None,
        &HeaderMap::new(),
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let reply = call(
        &deps,
        Method::POST,
        "/sources/workday",
        None,
        &HeaderMap::new(),
        b"{\"kind\": 1}",
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

// ----- BambooHR ---------------------------------------------------------------------------

fn bamboo_payload(status: &str, date: Option<&str>) -> Value {
    let mut fields = json!({
        "Employment Status": status,
        "Work Email": "grace@example.com",
        "First Name": "Grace",
        "Last Name": "Hopper",
        "Termination Type": "Voluntary",
    });
    if let Some(date) = date {
        fields["Termination Date"] = json!(date);
    }
    json!({"employees": [{"id": "4021", "changedFields": ["Employment Status"], "fields": fields}]})
}

fn bamboo_headers(body: &[u8], t: i64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let t = t.to_string();
    headers.insert(
        bamboohr::SIGNATURE_HEADER,
        bamboohr::sign(BAMBOO_KEY.as_bytes(), &t, body)
            .parse()
            .unwrap(),
    );
    headers.insert(bamboohr::TIMESTAMP_HEADER, t.parse().unwrap());
    headers
}

async fn post_bamboo(deps: &TestDeps, body: &[u8], headers: &HeaderMap) -> Reply {
    call(deps, Method::POST, "/sources/bamboohr", None, headers, body).await
}

#[tokio::test]
async fn a_bamboohr_termination_dated_ahead_is_scheduled_at_the_end_of_the_last_day() {
    let mut deps = deps();
    deps.settings.bamboohr_offset = chrono::FixedOffset::west_opt(5 * 3600).unwrap();
    let body = body_of(&bamboo_payload("Terminated", Some("2026-11-30")));
    let reply = post_bamboo(&deps, &body, &bamboo_headers(&body, now().timestamp())).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    let result = &reply.body["results"][0];
    assert_eq!(result["status"], "scheduled");
    assert_eq!(result["start_at"], "2026-12-01T00:00:00-05:00");
    let (at, input) = deps.scheduler.scheduled().into_values().next().unwrap();
    assert_eq!(at.to_rfc3339(), "2026-12-01T00:00:00-05:00");
    assert_eq!(input.event.source, "bamboohr");
    assert_eq!(input.event.person.id, "4021");
    assert_eq!(input.event.person.email, "grace@example.com");
    assert_eq!(
        input.event.person.display_name.as_deref(),
        Some("Grace Hopper")
    );

    // The same post again is a duplicate (a stable event id); a corrected date moves it.
    let again = post_bamboo(&deps, &body, &bamboo_headers(&body, now().timestamp())).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let body = body_of(&bamboo_payload("Terminated", Some("2026-12-04")));
    let moved = post_bamboo(&deps, &body, &bamboo_headers(&body, now().timestamp())).await;
    assert_eq!(moved.status, StatusCode::ACCEPTED, "{}", moved.body);
    assert_eq!(
        moved.body["results"][0]["replaced"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let scheduled = deps.scheduler.scheduled();
    assert_eq!(scheduled.len(), 1);
    assert_eq!(
        scheduled.values().next().unwrap().0.to_rfc3339(),
        "2026-12-05T00:00:00-05:00"
    );
}

#[tokio::test]
async fn bamboohr_signatures_are_checked_and_stale_ones_refused() {
    let deps = deps();
    let body = body_of(&bamboo_payload("Terminated", Some("2026-11-20")));
    let t = now().timestamp();

    let stale = post_bamboo(&deps, &body, &bamboo_headers(&body, t - 301)).await;
    assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&stale).contains("301 s old"), "{}", stale.body);

    let missing = post_bamboo(&deps, &body, &HeaderMap::new()).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&missing).contains("X-BambooHR-Signature header is missing"));

    let mut no_time = bamboo_headers(&body, t);
    no_time.remove(bamboohr::TIMESTAMP_HEADER);
    let reply = post_bamboo(&deps, &body, &no_time).await;
    assert!(error_of(&reply).contains("X-BambooHR-Timestamp header is missing"));

    // Signed over the body alone (the timestamp left out) does not match.
    let mut wrong = bamboo_headers(&body, t);
    let body_only = hex::encode(
        ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, BAMBOO_KEY.as_bytes()),
            &body,
        )
        .as_ref(),
    );
    wrong.insert(bamboohr::SIGNATURE_HEADER, body_only.parse().unwrap());
    let reply = post_bamboo(&deps, &body, &wrong).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&reply).contains("does not match"));
    assert!(!reply.body.to_string().contains(BAMBOO_KEY));

    let mut garbage = bamboo_headers(&body, t);
    garbage.insert(bamboohr::SIGNATURE_HEADER, "zz".parse().unwrap());
    let reply = post_bamboo(&deps, &body, &garbage).await;
    assert!(error_of(&reply).contains("64 hex digits"));
    assert_nothing_started(&deps);

    // The genuine one, dated in the past: started now.
    let reply = post_bamboo(&deps, &body, &bamboo_headers(&body, t)).await;
    assert_eq!(
        reply.body["results"][0]["status"], "started",
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn bamboohr_mapping_failures_name_the_vendor_field_and_start_nothing() {
    let deps = deps();
    let t = now().timestamp();
    let mut payload = bamboo_payload("Terminated", None);
    payload["employees"][0]["fields"]
        .as_object_mut()
        .unwrap()
        .remove("Work Email");
    payload["employees"]
        .as_array_mut()
        .unwrap()
        .push(json!({"fields": {"Employment Status": "Terminated", "Work Email": "x@example.com", "Termination Date": "30/11/2026", "Termination Type": "Sabbatical"}}));
    let body = body_of(&payload);
    let reply = post_bamboo(&deps, &body, &bamboo_headers(&body, t)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let paths = paths_of(&reply);
    for path in [
        "$.employees[0].fields[\"Work Email\"]",
        "$.employees[0].fields[\"Termination Date\"]",
        "$.employees[1].id",
        "$.employees[1].fields[\"Termination Date\"]",
        "$.employees[1].fields[\"Termination Type\"]",
    ] {
        assert!(paths.iter().any(|p| p == path), "{path} not in {paths:?}");
    }
    for body in [
        b"[]".to_vec(),
        b"{\"employees\": 3}".to_vec(),
        b"{".to_vec(),
    ] {
        let reply = post_bamboo(&deps, &body, &bamboo_headers(&body, t)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
        assert!(!paths_of(&reply).is_empty());
    }
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn bamboohr_changes_other_than_terminations_are_acknowledged_as_ignored() {
    let deps = deps();
    let body = body_of(&bamboo_payload("Full-Time", None));
    let reply = post_bamboo(&deps, &body, &bamboo_headers(&body, now().timestamp())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["status"], "ignored");
    assert_eq!(reply.body["ignored"][0]["path"], "$.employees[0]");
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn an_unconfigured_source_answers_404() {
    let mut deps = deps();
    deps.settings.bamboohr_secret = None;
    deps.settings.okta_secret = None;
    let body = body_of(&bamboo_payload("Terminated", Some("2026-11-30")));
    let reply = post_bamboo(&deps, &body, &bamboo_headers(&body, now().timestamp())).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(error_of(&reply).contains("DEPROV_BAMBOOHR_SECRET"));
    let reply = call(
        &deps,
        Method::GET,
        "/sources/okta",
        None,
        &HeaderMap::new(),
        b"",
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_nothing_started(&deps);
}

// ----- Okta event hooks -------------------------------------------------------------------

fn okta_headers(secret: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(okta_hooks::AUTH_HEADER, secret.parse().unwrap());
    headers
}

fn okta_payload(events: Vec<Value>) -> Vec<u8> {
    body_of(&json!({
        "eventType": "com.okta.event_hook", "eventTypeVersion": "1.0",
        "cloudEventsVersion": "0.1", "source": "https://example.okta.com/api/v1/eventHooks/who1",
        "eventId": "b5b9ab2b-d6fa-4b6e-9c9a-a0a8a34b8c10", "eventTime": "2026-11-25T16:59:58.000Z",
        "contentType": "application/json",
        "data": {"events": events}
    }))
}

fn okta_event(uuid: &str, event_type: &str) -> Value {
    json!({
        "uuid": uuid, "published": "2026-11-25T16:59:57.123Z", "eventType": event_type,
        "actor": {"id": "00uadmin", "type": "User", "alternateId": "admin@example.com"},
        "target": [{"id": "00u1abcd", "type": "User", "alternateId": "linus@example.com", "displayName": "Linus T"}]
    })
}

#[tokio::test]
async fn okta_one_time_verification_echoes_the_challenge_only_with_the_secret() {
    let deps = deps();
    let mut headers = okta_headers(OKTA_KEY);
    headers.insert(
        okta_hooks::CHALLENGE_HEADER,
        "X8zXoVC2x3_abc".parse().unwrap(),
    );
    let reply = call(&deps, Method::GET, "/sources/okta", None, &headers, b"").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, json!({"verification": "X8zXoVC2x3_abc"}));

    headers.insert(okta_hooks::AUTH_HEADER, "wrong".parse().unwrap());
    let reply = call(&deps, Method::GET, "/sources/okta", None, &headers, b"").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = call(
        &deps,
        Method::GET,
        "/sources/okta",
        None,
        &okta_headers(OKTA_KEY),
        b"",
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(error_of(&reply).contains(okta_hooks::CHALLENGE_HEADER));
    assert_nothing_started(&deps);
}

#[tokio::test]
async fn okta_deactivate_and_suspend_start_runs_and_other_types_are_ignored() {
    let deps = deps();
    let body = okta_payload(vec![
        okta_event(
            "9f1c7c1e-0c9a-4c60-b3d5-2a0b1f6f9a01",
            "user.lifecycle.deactivate",
        ),
        okta_event("9f1c7c1e-0c9a-4c60-b3d5-2a0b1f6f9a02", "user.session.start"),
        okta_event(
            "9f1c7c1e-0c9a-4c60-b3d5-2a0b1f6f9a03",
            "user.lifecycle.suspend",
        ),
    ]);
    let reply = call(
        &deps,
        Method::POST,
        "/sources/okta",
        None,
        &okta_headers(OKTA_KEY),
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
    assert_eq!(reply.body["results"].as_array().unwrap().len(), 2);
    assert_eq!(reply.body["ignored"][0]["event_type"], "user.session.start");
    let started = deps.starter.started();
    let kinds: Vec<_> = started
        .values()
        .map(|input| input.event.kind.as_str())
        .collect();
    assert!(kinds.contains(&"termination") && kinds.contains(&"leave_of_absence"));
    let input = &started[&ids::run_id("okta", "9f1c7c1e-0c9a-4c60-b3d5-2a0b1f6f9a01")];
    assert_eq!(input.event.person.id, "00u1abcd");
    assert_eq!(input.event.person.email, "linus@example.com");
    assert_eq!(input.event.requested_by, "admin@example.com");

    // Okta's retry of the same delivery is a duplicate.
    let again = call(
        &deps,
        Method::POST,
        "/sources/okta",
        None,
        &okta_headers(OKTA_KEY),
        &body,
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(deps.starter.started().len(), 2);
}

#[tokio::test]
async fn okta_rejections_start_nothing() {
    let deps = deps();
    let body = okta_payload(vec![okta_event("u-1", "user.lifecycle.deactivate")]);
    let reply = call(
        &deps,
        Method::POST,
        "/sources/okta",
        None,
        &HeaderMap::new(),
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&reply).contains("Authorization header is missing"));
    let reply = call(
        &deps,
        Method::POST,
        "/sources/okta",
        None,
        &okta_headers("nope"),
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(!reply.body.to_string().contains(OKTA_KEY));

    let mut broken = okta_event("u-2", "user.lifecycle.deactivate");
    broken["target"] = json!([{"type": "AppInstance", "id": "0oa1"}]);
    broken.as_object_mut().unwrap().remove("published");
    let body = okta_payload(vec![broken]);
    let reply = call(
        &deps,
        Method::POST,
        "/sources/okta",
        None,
        &okta_headers(OKTA_KEY),
        &body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let paths = paths_of(&reply);
    assert!(
        paths.contains(&"$.data.events[0].target".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"$.data.events[0].published".to_string()),
        "{paths:?}"
    );
    let reply = call(
        &deps,
        Method::POST,
        "/sources/okta",
        None,
        &okta_headers(OKTA_KEY),
        b"{\"data\": {}}",
    )
    .await;
    assert_eq!(paths_of(&reply), vec!["$.data.events"]);
    assert_nothing_started(&deps);
}
