//! BambooHR webhooks.
//!
//! Proof: BambooHR signs each post with the webhook's private key —
//! `X-BambooHR-Signature` is the hex SHA-256 HMAC of the raw body followed by the
//! `X-BambooHR-Timestamp` value (unix seconds). The timestamp must be within
//! [`TOLERANCE_SECS`] of our clock, and `(source, event_id)` dedupe makes a replay inside
//! that window harmless.
//!
//! Payload: `{"employees": [{"id": …, "changedFields": […], "fields": {…}}]}`; field names
//! are BambooHR's English names by default (`Employment Status`, `Termination Date`,
//! `Work Email`) or the API names when the webhook posts them under those (`terminationDate`,
//! `workEmail`). An employee whose employment status is `Terminated` becomes a
//! `termination` effective at the end of the termination date (midnight after it, at
//! `Settings::bamboohr_offset`; a full RFC 3339 time is used as given). Any other change
//! is acknowledged as ignored. The event id derives from the employee and the event's
//! content, so a re-post of the same termination is a duplicate and a corrected date is a
//! new event that moves the pending schedule.

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, TimeZone, Utc};
use http::StatusCode;
use ring::hmac;
use serde_json::{json, Map, Value};

use super::{checked_event, header_text, not_configured, source_keys, truncated};
use super::{Delivery, Deps, Mapped, Reply, Route};
use crate::ids;
use crate::ports::SecretSource;
use crate::signature::TOLERANCE_SECS;
use crate::validation::{Invalid, Problem};

pub const SIGNATURE_HEADER: &str = "X-BambooHR-Signature";
pub const TIMESTAMP_HEADER: &str = "X-BambooHR-Timestamp";
/// The `source` of the events this route makes.
pub const SOURCE: &str = "bamboohr";

const STATUS_FIELDS: [&str; 3] = [
    "Employment Status",
    "employmentHistoryStatus",
    "employmentStatus",
];
const DATE_FIELDS: [&str; 4] = [
    "Termination Date",
    "terminationDate",
    "Employment Status: Date",
    "employmentStatusDate",
];
const EMAIL_FIELDS: [&str; 2] = ["Work Email", "workEmail"];
const TYPE_FIELDS: [&str; 2] = ["Termination Type", "terminationType"];
const REASON_FIELDS: [&str; 2] = ["Termination Reason", "terminationReason"];
const FIRST_NAME_FIELDS: [&str; 2] = ["First Name", "firstName"];
const LAST_NAME_FIELDS: [&str; 2] = ["Last Name", "lastName"];

/// The signature BambooHR sends for `body` at `timestamp`: for tests and sample requests.
pub fn sign(key: &[u8], timestamp: &str, body: &[u8]) -> String {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        &signed_payload(body, timestamp),
    );
    hex::encode(tag.as_ref())
}

fn signed_payload(body: &[u8], timestamp: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(body.len() + timestamp.len());
    payload.extend_from_slice(body);
    payload.extend_from_slice(timestamp.as_bytes());
    payload
}

fn unauthorized(message: impl std::fmt::Display) -> Reply {
    tracing::warn!(reason = %message, "BambooHR signature refused");
    Reply::error(StatusCode::UNAUTHORIZED, message)
}

pub(crate) async fn receive<R, S: SecretSource, X, Y, C>(
    deps: &Deps<R, S, X, Y, C>,
    delivery: Delivery<'_>,
    now: DateTime<Utc>,
) -> Result<Mapped, Reply> {
    let Some(secret) = &deps.settings.bamboohr_secret else {
        return Err(not_configured(
            Route::BambooHr,
            "store the webhook's private key in a secret and name it in DEPROV_BAMBOOHR_SECRET (deprov serve --bamboohr-secret)",
        ));
    };
    let keys = source_keys(&deps.secrets, secret).await?;
    verify(delivery, &keys, now)?;
    map(delivery.body, deps.settings.bamboohr_offset)
}

/// Checks the timestamp's freshness, then the HMAC against every accepted key (all of
/// them, constant-time each, so the time taken does not say which matched).
fn verify(delivery: Delivery<'_>, keys: &[String], now: DateTime<Utc>) -> Result<(), Reply> {
    let headers = delivery.headers;
    let signature = header_text(headers, SIGNATURE_HEADER)
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| {
            unauthorized(format!(
                "the {SIGNATURE_HEADER} header is missing; BambooHR sends it when the webhook has a private key (generate one on the webhook's page)"
            ))
        })?;
    let timestamp = header_text(headers, TIMESTAMP_HEADER)
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| unauthorized(format!("the {TIMESTAMP_HEADER} header is missing")))?;
    let seconds = timestamp
        .parse::<i64>()
        .ok()
        .filter(|_| timestamp.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            unauthorized(format!(
                "the {TIMESTAMP_HEADER} header `{}` is not a number of seconds since 1970",
                truncated(timestamp, 32)
            ))
        })?;
    let skew = now.timestamp().saturating_sub(seconds);
    if skew.unsigned_abs() > TOLERANCE_SECS.unsigned_abs() {
        let direction = if skew > 0 { "old" } else { "in the future" };
        return Err(unauthorized(format!(
            "the {TIMESTAMP_HEADER} is {} s {direction}, beyond the {TOLERANCE_SECS} s tolerance: a stale or replayed delivery; check the sender's clock",
            skew.unsigned_abs()
        )));
    }
    let tag = hex::decode(signature)
        .ok()
        .filter(|tag| tag.len() == 32)
        .ok_or_else(|| {
            unauthorized(format!(
                "the {SIGNATURE_HEADER} header is not 64 hex digits (HMAC-SHA256 of the body followed by the timestamp)"
            ))
        })?;
    let payload = signed_payload(delivery.body, timestamp);
    let mut matched = false;
    for key in keys {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
        matched |= hmac::verify(&key, &payload, &tag).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(unauthorized(format!(
            "the {SIGNATURE_HEADER} does not match the body; it must be the HMAC-SHA256 of the exact body bytes followed by the {TIMESTAMP_HEADER} value, with the webhook's private key"
        )))
    }
}

fn invalid(problems: Vec<Problem>) -> Reply {
    Reply::invalid(&Invalid {
        what: "BambooHR webhook payload".into(),
        problems,
    })
}

/// The payload's employees as lifecycle events, or every problem found.
pub fn map(body: &[u8], offset: FixedOffset) -> Result<Mapped, Reply> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| invalid(vec![Problem::not_json(&err)]))?;
    let Some(employees) = value.get("employees") else {
        return Err(invalid(vec![Problem::at(
            "$.employees",
            "is required: BambooHR posts {\"employees\": [{\"id\": …, \"fields\": {…}}]}",
        )]));
    };
    let Some(employees) = employees.as_array() else {
        return Err(invalid(vec![Problem::at(
            "$.employees",
            "must be an array",
        )]));
    };
    let mut mapped = Mapped::default();
    let mut problems = Vec::new();
    for (index, employee) in employees.iter().enumerate() {
        let at = format!("$.employees[{index}]");
        match employee_event(employee, &at, offset) {
            Ok(Some(event)) => mapped.events.push(event),
            Ok(None) => mapped.ignored.push(json!({
                "path": at,
                "reason": "the employment status is not Terminated; deprov acts on terminations only",
            })),
            Err(found) => problems.extend(found),
        }
    }
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(mapped)
}

/// The first of `names` present in `fields`, with the path it was found at.
fn field<'v>(
    fields: &'v Map<String, Value>,
    names: &[&str],
    at: &str,
) -> Option<(&'v Value, String)> {
    names.iter().find_map(|name| {
        fields
            .get(*name)
            .filter(|value| !value.is_null())
            .map(|value| (value, format!("{at}.fields[\"{name}\"]")))
    })
}

fn text_field<'v>(
    fields: &'v Map<String, Value>,
    names: &[&str],
    at: &str,
    problems: &mut Vec<Problem>,
) -> Option<(&'v str, String)> {
    let (value, path) = field(fields, names, at)?;
    match value.as_str() {
        Some(text) if !text.trim().is_empty() => Some((text.trim(), path)),
        Some(_) => None,
        None => {
            problems.push(Problem::at(path, "must be a string"));
            None
        }
    }
}

fn employee_event(
    employee: &Value,
    at: &str,
    offset: FixedOffset,
) -> Result<Option<crate::event::LifecycleEvent>, Vec<Problem>> {
    let mut problems = Vec::new();
    let Some(employee) = employee.as_object() else {
        return Err(vec![Problem::at(at, "must be an object")]);
    };
    let id = match employee.get("id") {
        Some(Value::String(id)) if !id.trim().is_empty() => Some(id.trim().to_string()),
        Some(Value::Number(id)) => Some(id.to_string()),
        Some(_) => {
            problems.push(Problem::at(
                format!("{at}.id"),
                "must be the employee id (a string or a number)",
            ));
            None
        }
        None => {
            problems.push(Problem::at(format!("{at}.id"), "is required"));
            None
        }
    };
    let fields = match employee.get("fields") {
        Some(Value::Object(fields)) => fields,
        Some(_) => {
            return Err(vec![Problem::at(
                format!("{at}.fields"),
                "must be an object",
            )])
        }
        None => {
            problems.push(Problem::at(
                format!("{at}.fields"),
                "is required: the fields the webhook posts",
            ));
            return Err(problems);
        }
    };
    let status = text_field(fields, &STATUS_FIELDS, at, &mut problems);
    let terminated = status.is_some_and(|(status, _)| status.eq_ignore_ascii_case("terminated"));
    if !terminated {
        return if problems.is_empty() {
            Ok(None)
        } else {
            Err(problems)
        };
    }
    let email = text_field(fields, &EMAIL_FIELDS, at, &mut problems);
    if email.is_none() && field(fields, &EMAIL_FIELDS, at).is_none() {
        problems.push(Problem::at(
            format!("{at}.fields[\"Work Email\"]"),
            "is required for a termination: add Work Email to the webhook's posted fields",
        ));
    }
    let effective_at = match text_field(fields, &DATE_FIELDS, at, &mut problems) {
        Some((date, path)) => match last_moment(date, offset) {
            Some(at) => Some(at),
            None => {
                problems.push(Problem::at(
                    path,
                    format!(
                        "`{}` is not a date (YYYY-MM-DD) or an RFC 3339 time",
                        truncated(date, 40)
                    ),
                ));
                None
            }
        },
        None => {
            if field(fields, &DATE_FIELDS, at).is_none() {
                problems.push(Problem::at(
                    format!("{at}.fields[\"Termination Date\"]"),
                    "is required when the employment status is Terminated: add Termination Date to the webhook's posted fields",
                ));
            }
            None
        }
    };
    let termination_type = match text_field(fields, &TYPE_FIELDS, at, &mut problems) {
        Some((kind, path)) => {
            let lower = kind.to_ascii_lowercase();
            if lower.contains("invol") || lower.contains("dismiss") || lower.contains("fired") {
                Some("involuntary")
            } else if lower.contains("vol")
                || lower.contains("resign")
                || lower.contains("retire")
                || lower.contains("death")
                || lower.contains("end of contract")
            {
                Some("voluntary")
            } else {
                problems.push(Problem::at(
                    path,
                    format!(
                        "`{}` is not a termination type deprov knows; use Voluntary or Involuntary",
                        truncated(kind, 40)
                    ),
                ));
                None
            }
        }
        // Not posted: the webhook was set up without it. Voluntary is the common case,
        // and the run records that it was assumed.
        None => Some("voluntary"),
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let (Some(id), Some((email, _)), Some(effective_at), Some(termination_type)) =
        (id, email, effective_at, termination_type)
    else {
        return Err(vec![Problem::at(at, "cannot be mapped")]);
    };
    let name = [&FIRST_NAME_FIELDS[..], &LAST_NAME_FIELDS[..]]
        .iter()
        .filter_map(|names| {
            field(fields, names, at)
                .and_then(|(value, _)| value.as_str())
                .map(str::trim)
                .filter(|text| !text.is_empty())
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut reason = field(fields, &REASON_FIELDS, at)
        .and_then(|(value, _)| value.as_str())
        .map(|text| truncated(text.trim(), 900))
        .unwrap_or_default();
    if field(fields, &TYPE_FIELDS, at).is_none() {
        reason = format!("{reason} (termination type not posted by BambooHR; assumed voluntary)")
            .trim()
            .to_string();
    }
    let mut event = json!({
        "source": SOURCE,
        "kind": "termination",
        "termination_type": termination_type,
        "person": {"id": id, "email": email},
        "effective_at": effective_at.to_rfc3339(),
        "requested_by": SOURCE,
    });
    if !name.is_empty() {
        event["person"]["display_name"] = json!(name);
    }
    if !reason.is_empty() {
        event["reason"] = json!(reason);
    }
    // Stable: the same employee and content give the same id; a corrected date does not.
    let digest = ids::sha256_hex(event.to_string().as_bytes());
    let safe_id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    event["event_id"] = json!(format!("bamboohr-{safe_id}-{}", &digest[..16]));
    checked_event(&event, at).map(Some)
}

/// The end of a last day: midnight after `date` at `offset`; an RFC 3339 time as given.
fn last_moment(text: &str, offset: FixedOffset) -> Option<DateTime<FixedOffset>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at);
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let midnight = (date + Duration::days(1)).and_hms_opt(0, 0, 0)?;
    offset.from_local_datetime(&midnight).single()
}
