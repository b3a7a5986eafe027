//! Okta event hooks.
//!
//! Proof: Okta sends the secret configured on the event hook in the `Authorization`
//! header (Okta event hooks carry no body signature); it is compared in constant time.
//! Setup: Okta verifies the endpoint once with a `GET` carrying
//! `X-Okta-Verification-Challenge`, answered `{"verification": "<the challenge>"}`.
//!
//! Payload: `{"data": {"events": [{"uuid", "eventType", "published", "actor", "target":
//! [{"type": "User", "id", "alternateId", "displayName"}]}]}}`. `user.lifecycle.deactivate`
//! becomes a `termination` (involuntary: the identity provider has already cut the
//! person off), `user.lifecycle.suspend` a `leave_of_absence`; the person is the Okta
//! user (id, login as email). Other event types are acknowledged as ignored. The event
//! id is Okta's `uuid`, so Okta's retry of a delivery is a duplicate.

use http::StatusCode;
use ring::hmac;
use serde_json::{json, Value};

use super::{checked_event, header_text, not_configured, source_keys, truncated};
use super::{Delivery, Deps, Mapped, Reply, Route};
use crate::ports::SecretSource;
use crate::validation::{Invalid, Problem};

pub const AUTH_HEADER: &str = "Authorization";
pub const CHALLENGE_HEADER: &str = "X-Okta-Verification-Challenge";
/// The `source` of the events this route makes.
pub const SOURCE: &str = "okta";
const MAX_CHALLENGE: usize = 512;

/// Okta's event types deprov acts on, and the lifecycle kind each becomes.
pub const HANDLED: [(&str, &str); 2] = [
    ("user.lifecycle.deactivate", "termination"),
    ("user.lifecycle.suspend", "leave_of_absence"),
];

async fn authenticate<R, S: SecretSource, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    delivery: Delivery<'_>,
) -> Result<(), Reply> {
    let Some(secret) = &deps.settings.okta_secret else {
        return Err(not_configured(
            Route::Okta,
            "store the event hook's authorization value in a secret and name it in DEPROV_OKTA_SECRET (deprov serve --okta-secret)",
        ));
    };
    let keys = source_keys(&deps.secrets, secret).await?;
    let Some(sent) = header_text(delivery.headers, AUTH_HEADER).filter(|v| !v.trim().is_empty())
    else {
        tracing::warn!("Okta hook without authorization refused");
        return Err(Reply::error(
            StatusCode::UNAUTHORIZED,
            format!("the {AUTH_HEADER} header is missing; configure the event hook's authentication field as {AUTH_HEADER} with the shared secret"),
        ));
    };
    // Equal values give equal tags; comparing tags with `hmac::verify` is constant-time
    // and does not depend on where two different values first differ.
    let probe = hmac::Key::new(hmac::HMAC_SHA256, sent.trim().as_bytes());
    let mut matched = false;
    for key in &keys {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, key.trim().as_bytes()),
            b"deprov okta event hook",
        );
        matched |= hmac::verify(&probe, b"deprov okta event hook", tag.as_ref()).is_ok();
    }
    if matched {
        Ok(())
    } else {
        tracing::warn!("Okta hook with a wrong authorization refused");
        Err(Reply::error(
            StatusCode::UNAUTHORIZED,
            format!("the {AUTH_HEADER} header does not match the event hook's secret"),
        ))
    }
}

/// The one-time verification: echo the challenge.
pub(crate) async fn verify_hook<R, S: SecretSource, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    delivery: Delivery<'_>,
) -> Reply {
    if let Err(reply) = authenticate(deps, delivery).await {
        return reply;
    }
    match header_text(delivery.headers, CHALLENGE_HEADER) {
        Some(challenge)
            if !challenge.is_empty()
                && challenge.len() <= MAX_CHALLENGE
                && challenge != "\u{fffd}" =>
        {
            Reply::new(StatusCode::OK, json!({ "verification": challenge }))
        }
        Some(_) => Reply::new(
            StatusCode::BAD_REQUEST,
            json!({
                "error": format!("the {CHALLENGE_HEADER} header must be 1 to {MAX_CHALLENGE} visible ASCII characters"),
                "problems": [{"path": CHALLENGE_HEADER, "message": "malformed"}],
            }),
        ),
        None => Reply::new(
            StatusCode::BAD_REQUEST,
            json!({
                "error": format!("GET is Okta's one-time verification and needs the {CHALLENGE_HEADER} header; events are POSTed"),
                "problems": [{"path": CHALLENGE_HEADER, "message": "is required"}],
            }),
        ),
    }
}

pub(crate) async fn receive<R, S: SecretSource, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    delivery: Delivery<'_>,
) -> Result<Mapped, Reply> {
    authenticate(deps, delivery).await?;
    map(delivery.body)
}

fn invalid(problems: Vec<Problem>) -> Reply {
    Reply::invalid(&Invalid {
        what: "Okta event hook payload".into(),
        problems,
    })
}

/// The hook's events as lifecycle events, or every problem found.
pub fn map(body: &[u8]) -> Result<Mapped, Reply> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| invalid(vec![Problem::not_json(&err)]))?;
    let Some(events) = value.pointer("/data/events") else {
        return Err(invalid(vec![Problem::at(
            "$.data.events",
            "is required: Okta posts {\"data\": {\"events\": […]}}",
        )]));
    };
    let Some(events) = events.as_array() else {
        return Err(invalid(vec![Problem::at(
            "$.data.events",
            "must be an array",
        )]));
    };
    let mut mapped = Mapped::default();
    let mut problems = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let at = format!("$.data.events[{index}]");
        match hook_event(event, &at) {
            Ok(Ok(event)) => mapped.events.push(event),
            Ok(Err(ignored)) => mapped.ignored.push(ignored),
            Err(found) => problems.extend(found),
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(mapped)
}

fn text<'v>(value: &'v Value, key: &str, at: &str, problems: &mut Vec<Problem>) -> Option<&'v str> {
    match value.get(key) {
        Some(Value::String(text)) if !text.trim().is_empty() => Some(text.trim()),
        Some(_) => {
            problems.push(Problem::at(
                format!("{at}.{key}"),
                "must be a non-empty string",
            ));
            None
        }
        None => {
            problems.push(Problem::at(format!("{at}.{key}"), "is required"));
            None
        }
    }
}

/// One Okta event: a lifecycle event, an acknowledgement of an ignored type, or problems.
fn hook_event(
    event: &Value,
    at: &str,
) -> Result<Result<crate::event::LifecycleEvent, Value>, Vec<Problem>> {
    if !event.is_object() {
        return Err(vec![Problem::at(at, "must be an object")]);
    }
    let mut problems = Vec::new();
    let Some(event_type) = text(event, "eventType", at, &mut problems) else {
        return Err(problems);
    };
    let Some((_, kind)) = HANDLED.iter().find(|(name, _)| *name == event_type) else {
        return Ok(Err(json!({
            "path": at,
            "event_type": truncated(event_type, 128),
            "reason": format!(
                "deprov acts on {} only",
                HANDLED.map(|(name, _)| name).join(" and ")
            ),
        })));
    };
    let uuid = text(event, "uuid", at, &mut problems);
    let published = text(event, "published", at, &mut problems);
    let user = match event.get("target") {
        Some(Value::Array(targets)) => {
            let user = targets
                .iter()
                .position(|target| target.get("type").and_then(Value::as_str) == Some("User"));
            if user.is_none() {
                problems.push(Problem::at(
                    format!("{at}.target"),
                    "has no entry of type User: the deactivated or suspended user",
                ));
            }
            user.map(|index| (&targets[index], format!("{at}.target[{index}]")))
        }
        Some(_) => {
            problems.push(Problem::at(format!("{at}.target"), "must be an array"));
            None
        }
        None => {
            problems.push(Problem::at(format!("{at}.target"), "is required"));
            None
        }
    };
    let person = user.and_then(|(user, path)| {
        let id = text(user, "id", &path, &mut problems);
        let login = text(user, "alternateId", &path, &mut problems);
        Some((id?, login?, user.get("displayName").and_then(Value::as_str)))
    });
    if let Some(published) = published {
        if chrono::DateTime::parse_from_rfc3339(published).is_err() {
            problems.push(Problem::at(
                format!("{at}.published"),
                "must be an RFC 3339 time",
            ));
        }
    }
    let requested_by = event
        .pointer("/actor/alternateId")
        .and_then(Value::as_str)
        .filter(|actor| !actor.trim().is_empty())
        .map(|actor| truncated(actor.trim(), 120))
        .unwrap_or_else(|| SOURCE.to_string());
    let (Some(uuid), Some(published), Some((id, login, display_name))) = (uuid, published, person)
    else {
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut mapped = json!({
        "event_id": uuid,
        "source": SOURCE,
        "kind": kind,
        "person": {"id": id, "email": login},
        "effective_at": published,
        "requested_by": requested_by,
        "reason": format!("Okta {event_type}"),
    });
    if *kind == "termination" {
        mapped["termination_type"] = json!("involuntary");
    }
    if let Some(name) = display_name.map(str::trim).filter(|name| !name.is_empty()) {
        mapped["person"]["display_name"] = json!(truncated(name, 200));
    }
    checked_event(&mapped, at).map(Ok)
}
