//! The HR webhook on API Gateway: the request becomes a [`Delivery`], the shared intake
//! ([`deprov_core::intake`]) decides, the [`Reply`] becomes the response. Every rule —
//! routes, signatures, sources, dedupe, schedules that move — lives there, where
//! `deprov serve` uses it too.

use chrono::Offset as _;
use deprov_aws::lambda::required_env;
use deprov_aws::scheduler;
use deprov_core::intake::{self, Delivery, Deps, Reply, Settings};
use deprov_core::launch::{RunScheduler, RunStarter};
use deprov_core::ports::{Clock, RunStore, SecretSource};
use lambda_http::{Body, Error, Request, Response};

/// The function's settings, from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub runs_table: String,
    pub state_machine_arn: String,
    pub scheduler_role_arn: String,
    pub schedule_group: String,
    pub settings: Settings,
}

fn optional_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

impl Config {
    pub fn from_env() -> Result<Config, deprov_aws::ConfigError> {
        let bamboohr_offset = match optional_env("DEPROV_BAMBOOHR_UTC_OFFSET") {
            Some(text) => intake::parse_offset(&text).ok_or_else(|| {
                deprov_aws::ConfigError(format!(
                    "DEPROV_BAMBOOHR_UTC_OFFSET `{text}` is not an offset such as +01:00 or -05:00"
                ))
            })?,
            None => chrono::Utc.fix(),
        };
        Ok(Config {
            runs_table: required_env("DEPROV_RUNS_TABLE")?,
            state_machine_arn: required_env("DEPROV_STATE_MACHINE_ARN")?,
            scheduler_role_arn: required_env("DEPROV_SCHEDULER_ROLE_ARN")?,
            schedule_group: optional_env("DEPROV_SCHEDULE_GROUP")
                .unwrap_or_else(|| scheduler::DEFAULT_GROUP.to_string()),
            settings: Settings {
                webhook_secret: required_env("DEPROV_WEBHOOK_SECRET")?,
                bamboohr_secret: optional_env("DEPROV_BAMBOOHR_SECRET"),
                bamboohr_offset,
                okta_secret: optional_env("DEPROV_OKTA_SECRET"),
                // Set by the template only where the route's transport authenticates the
                // sender (IAM authorization, or the mutual-TLS domain).
                workday_trusted: optional_env("DEPROV_WORKDAY_TRUSTED").as_deref() == Some("true"),
            },
        })
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
    let reply = intake::accept(
        deps,
        Delivery {
            method: request.method(),
            path: request.uri().path(),
            query: request.uri().query(),
            headers: request.headers(),
            body: request.body(),
        },
    )
    .await;
    Ok(into_response(reply))
}

fn into_response(reply: Reply) -> Response<Body> {
    let mut response = Response::new(Body::Text(reply.body.to_string()));
    *response.status_mut() = reply.status;
    for (name, value) in reply.headers() {
        response.headers_mut().insert(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};
    use deprov_core::ids;
    use deprov_core::launch::MemoryLauncher;
    use deprov_core::signature;
    use deprov_core::testing::{ManualClock, MemorySecrets, MemoryStore};
    use lambda_http::http::{header, Method, StatusCode};
    use serde_json::Value;

    const SECRET: &str = "deprov/webhook";

    type TestDeps = Deps<MemoryStore, MemorySecrets, MemoryLauncher, MemoryLauncher, ManualClock>;

    fn deps(key: &str, now: DateTime<Utc>) -> TestDeps {
        Deps {
            runs: MemoryStore::default(),
            secrets: MemorySecrets::default().with(SECRET, "key", key),
            starter: MemoryLauncher::default(),
            scheduler: MemoryLauncher::default(),
            clock: ManualClock::at(now),
            settings: Settings::generic(SECRET),
        }
    }

    #[tokio::test]
    async fn the_response_is_json_and_the_raw_request_body_is_what_is_verified() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 17, 0, 0).unwrap();
        let deps = deps("k-1", now);
        let body = serde_json::to_vec(&serde_json::json!({
            "event_id": "hr-1", "source": "workday", "kind": "termination",
            "termination_type": "voluntary", "person": {"id": "E1", "email": "a@example.com"},
            "effective_at": "2026-11-25T18:00:00+01:00", "requested_by": "hr"
        }))
        .unwrap();
        let mut request = Request::new(Body::Binary(body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = "https://example.com/prod/events".parse().unwrap();
        request.headers_mut().insert(
            signature::HEADER,
            signature::sign(b"k-1", now.timestamp(), &body)
                .parse()
                .unwrap(),
        );
        let response = handle(&deps, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let reply: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
        assert_eq!(reply["status"], "started");
        assert_eq!(deps.starter.started().len(), 1);
    }

    /// `events/intake.json` (an API Gateway HTTP API request, signed with the documented
    /// sample key at its own time) goes through lambda_http's decoding and is accepted.
    #[tokio::test]
    async fn the_shipped_sample_request_is_accepted() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../events/intake.json");
        let text = std::fs::read_to_string(path).unwrap();
        let request = lambda_http::request::from_str(&text).unwrap();
        let signed_at = Utc.timestamp_opt(1_764_086_400, 0).single().unwrap();
        let deps = deps(
            "deprov-sample-webhook-key",
            signed_at + chrono::Duration::seconds(10),
        );
        let response = handle(&deps, request).await.unwrap();
        let reply: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
        // The sample termination is effective a year after it was signed: scheduled.
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{reply}");
        assert_eq!(reply["status"], "scheduled");
        assert_eq!(reply["run_id"], ids::run_id("workday", "hr-2026-000123"));
        assert_eq!(deps.scheduler.scheduled().len(), 1);
    }

    #[tokio::test]
    async fn a_405_carries_allow_and_a_503_retry_after() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 17, 0, 0).unwrap();
        let deps = deps("k-1", now);
        let mut request = Request::new(Body::Empty);
        *request.method_mut() = Method::GET;
        *request.uri_mut() = "https://example.com/events".parse().unwrap();
        let response = handle(&deps, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "POST");
        let reply = into_response(Reply::unavailable("down"));
        assert_eq!(reply.headers()[header::RETRY_AFTER], "30");
    }
}
