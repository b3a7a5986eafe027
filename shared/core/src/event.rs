//! `LifecycleEvent`: what an HR system (or an operator, or a sweep) tells deprov about a
//! person. Parsing checks the whole document and reports every problem with its JSON path.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::validation::{is_identifier, Invalid, Problem};

/// Largest event document accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
const MAX_ID: usize = 128;
const MAX_TEXT: usize = 1024;
const MAX_ROLES: usize = 64;
const MAX_USERNAMES: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Termination,
    ContractEnd,
    Transfer,
    LeaveOfAbsence,
    Rehire,
    Cancel,
    Inactivity,
    Orphan,
    Manual,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Termination,
        EventKind::ContractEnd,
        EventKind::Transfer,
        EventKind::LeaveOfAbsence,
        EventKind::Rehire,
        EventKind::Cancel,
        EventKind::Inactivity,
        EventKind::Orphan,
        EventKind::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Termination => "termination",
            EventKind::ContractEnd => "contract_end",
            EventKind::Transfer => "transfer",
            EventKind::LeaveOfAbsence => "leave_of_absence",
            EventKind::Rehire => "rehire",
            EventKind::Cancel => "cancel",
            EventKind::Inactivity => "inactivity",
            EventKind::Orphan => "orphan",
            EventKind::Manual => "manual",
        }
    }

    /// Rehire and cancel stop earlier runs instead of revoking anything.
    pub fn stops_pending_runs(self) -> bool {
        matches!(self, EventKind::Rehire | EventKind::Cancel)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TerminationType {
    Voluntary,
    Involuntary,
}

impl TerminationType {
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationType::Voluntary => "voluntary",
            TerminationType::Involuntary => "involuntary",
        }
    }
}

/// The person as the source describes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// Stable HR id of the person (employee number, worker id).
    #[schemars(regex(pattern = r"^[A-Za-z0-9._:@-]{1,128}$"))]
    pub id: String,
    /// Primary work email.
    #[schemars(length(min = 3, max = 320))]
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
    /// Account name per system, where it differs from the email (system name → username).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usernames: BTreeMap<String, String>,
    /// Current roles (role names of the policy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Who receives the person's data in the hand-over stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_email: Option<String>,
}

/// The roles of a mover, before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub from_roles: Vec<String>,
    pub to_roles: Vec<String>,
}

/// A lifecycle event. `deny_unknown_fields` everywhere: a misspelt field is an error, not a
/// silently ignored instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "deprov lifecycle event")]
pub struct LifecycleEvent {
    /// The source's id of this event; with `source` it identifies the run.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._:@-]{1,128}$"))]
    pub event_id: String,
    /// Which system sent it (`workday`, `bamboohr`, `console`, `sweep`, …).
    #[schemars(regex(pattern = r"^[A-Za-z0-9._:@-]{1,64}$"))]
    pub source: String,
    pub kind: EventKind,
    /// Required for `termination`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_type: Option<TerminationType>,
    pub person: Person,
    /// RFC 3339 with an offset; may be in the future.
    pub effective_at: DateTime<FixedOffset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// Who asked: a person's id or a system's name.
    #[schemars(length(min = 1, max = 128))]
    pub requested_by: String,
    /// Required for `transfer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    /// Limit the run to these systems (policy system names); all systems when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub systems: Vec<String>,
}

impl LifecycleEvent {
    /// Parses and validates an event document, reporting every problem at once.
    pub fn parse(bytes: &[u8]) -> Result<LifecycleEvent, Invalid> {
        let invalid = |problems| Invalid {
            what: "lifecycle event".into(),
            problems,
        };
        if bytes.len() > MAX_EVENT_BYTES {
            return Err(invalid(vec![Problem {
                path: "$".into(),
                line: None,
                message: format!(
                    "document is {} bytes; the limit is {MAX_EVENT_BYTES}",
                    bytes.len()
                ),
            }]));
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|err| invalid(vec![Problem::not_json(&err)]))?;
        let problems = validate(&value);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        serde_json::from_value(value).map_err(|err| {
            invalid(vec![Problem {
                path: "$".into(),
                line: None,
                message: err.to_string(),
            }])
        })
    }

    /// The JSON Schema of the event, as published in `infra/schemas/`.
    pub fn json_schema() -> Value {
        serde_json::to_value(schemars::schema_for!(LifecycleEvent)).unwrap_or(Value::Null)
    }

    /// The username this event gives for `system`, if any.
    pub fn username_for(&self, system: &str) -> Option<&str> {
        self.person.usernames.get(system).map(String::as_str)
    }
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    fn string<'v>(
        &mut self,
        object: &'v serde_json::Map<String, Value>,
        parent: &str,
        key: &str,
        required: bool,
        max: usize,
    ) -> Option<&'v str> {
        let path = format!("{parent}.{key}");
        match object.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.problem(path, "is required");
                }
                None
            }
            Some(Value::String(text)) => {
                if text.trim().is_empty() {
                    self.problem(path, "must not be empty");
                    None
                } else if text.chars().count() > max {
                    self.problem(path, format!("is longer than {max} characters"));
                    None
                } else {
                    Some(text)
                }
            }
            Some(other) => {
                self.problem(
                    path,
                    format!("must be a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn identifier(
        &mut self,
        object: &serde_json::Map<String, Value>,
        parent: &str,
        key: &str,
        max: usize,
    ) {
        if let Some(text) = self.string(object, parent, key, true, max) {
            if !is_identifier(text, max) {
                self.problem(
                    format!("{parent}.{key}"),
                    format!("`{text}` may only contain letters, digits and . _ : @ -"),
                );
            }
        }
    }

    fn string_list(&mut self, value: Option<&Value>, path: &str, max_items: usize) -> Vec<String> {
        match value {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > max_items {
                    self.problem(path, format!("has more than {max_items} items"));
                }
                let mut out = Vec::new();
                for (index, item) in items.iter().enumerate() {
                    match item {
                        Value::String(text) if is_identifier(text, MAX_ID) => {
                            out.push(text.clone())
                        }
                        Value::String(text) => self.problem(
                            format!("{path}[{index}]"),
                            format!("`{text}` may only contain letters, digits and . _ : @ -"),
                        ),
                        other => self.problem(
                            format!("{path}[{index}]"),
                            format!("must be a string, found {}", type_name(other)),
                        ),
                    }
                }
                out
            }
            Some(other) => {
                self.problem(
                    path,
                    format!("must be an array of strings, found {}", type_name(other)),
                );
                Vec::new()
            }
        }
    }

    fn unknown_fields(
        &mut self,
        object: &serde_json::Map<String, Value>,
        path: &str,
        known: &[&str],
    ) {
        for key in object.keys() {
            if !known.contains(&key.as_str()) {
                self.problem(
                    format!("{path}.{key}"),
                    format!("unknown field; expected one of: {}", known.join(", ")),
                );
            }
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn enum_value<T: serde::de::DeserializeOwned>(
    checker: &mut Checker,
    object: &serde_json::Map<String, Value>,
    key: &str,
    allowed: &[&str],
) -> Option<T> {
    let text = checker.string(object, "$", key, false, 64)?;
    match serde_json::from_value::<T>(Value::String(text.to_owned())) {
        Ok(value) => Some(value),
        Err(_) => {
            checker.problem(
                format!("$.{key}"),
                format!("`{text}` is not one of: {}", allowed.join(", ")),
            );
            None
        }
    }
}

/// Every problem in an event document, each with its JSON path.
pub fn validate(value: &Value) -> Vec<Problem> {
    let mut checker = Checker {
        problems: Vec::new(),
    };
    let Some(root) = value.as_object() else {
        checker.problem(
            "$",
            format!("must be an object, found {}", type_name(value)),
        );
        return checker.problems;
    };
    checker.unknown_fields(
        root,
        "$",
        &[
            "event_id",
            "source",
            "kind",
            "termination_type",
            "person",
            "effective_at",
            "reason",
            "requested_by",
            "transfer",
            "systems",
        ],
    );
    checker.identifier(root, "$", "event_id", MAX_ID);
    checker.identifier(root, "$", "source", 64);
    checker.string(root, "$", "requested_by", true, MAX_ID);
    checker.string(root, "$", "reason", false, MAX_TEXT);

    let kind_names: Vec<&str> = EventKind::ALL.iter().map(|kind| kind.as_str()).collect();
    if root.get("kind").is_none() {
        checker.problem(
            "$.kind",
            format!("is required; one of: {}", kind_names.join(", ")),
        );
    }
    let kind: Option<EventKind> = enum_value(&mut checker, root, "kind", &kind_names);
    let termination_type: Option<TerminationType> = enum_value(
        &mut checker,
        root,
        "termination_type",
        &["voluntary", "involuntary"],
    );

    match (
        kind,
        root.get("termination_type")
            .filter(|value| !value.is_null()),
    ) {
        (Some(EventKind::Termination), None) if termination_type.is_none() => checker.problem(
            "$.termination_type",
            "is required for a termination: \"voluntary\" or \"involuntary\"",
        ),
        (Some(other), Some(_)) if other != EventKind::Termination => checker.problem(
            "$.termination_type",
            format!(
                "only applies to kind \"termination\", not \"{}\"",
                other.as_str()
            ),
        ),
        _ => {}
    }

    if let Some(text) = checker.string(root, "$", "effective_at", true, 64) {
        if DateTime::parse_from_rfc3339(text).is_err() {
            checker.problem(
                "$.effective_at",
                format!(
                    "`{text}` is not an RFC 3339 time with an offset, e.g. \"2026-11-30T17:00:00+01:00\""
                ),
            );
        }
    }

    match root.get("person") {
        None | Some(Value::Null) => checker.problem("$.person", "is required"),
        Some(Value::Object(person)) => {
            checker.unknown_fields(
                person,
                "$.person",
                &[
                    "id",
                    "email",
                    "display_name",
                    "usernames",
                    "roles",
                    "manager_email",
                ],
            );
            checker.identifier(person, "$.person", "id", MAX_ID);
            if let Some(email) = checker.string(person, "$.person", "email", true, 320) {
                if !looks_like_email(email) {
                    checker.problem(
                        "$.person.email",
                        format!("`{email}` is not an email address"),
                    );
                }
            }
            checker.string(person, "$.person", "display_name", false, 256);
            if let Some(manager) = checker.string(person, "$.person", "manager_email", false, 320) {
                if !looks_like_email(manager) {
                    checker.problem(
                        "$.person.manager_email",
                        format!("`{manager}` is not an email address"),
                    );
                }
            }
            checker.string_list(person.get("roles"), "$.person.roles", MAX_ROLES);
            match person.get("usernames") {
                None | Some(Value::Null) => {}
                Some(Value::Object(usernames)) => {
                    if usernames.len() > MAX_USERNAMES {
                        checker.problem(
                            "$.person.usernames",
                            format!("has more than {MAX_USERNAMES} entries"),
                        );
                    }
                    for (system, username) in usernames {
                        let path = format!("$.person.usernames.{system}");
                        if !is_identifier(system, 64) {
                            checker.problem(
                                &path,
                                "system names may only contain letters, digits and . _ : @ -",
                            );
                        }
                        match username {
                            Value::String(text) if !text.trim().is_empty() && text.len() <= 320 => {
                            }
                            Value::String(_) => {
                                checker.problem(path, "must be 1 to 320 characters")
                            }
                            other => checker.problem(
                                path,
                                format!("must be a string, found {}", type_name(other)),
                            ),
                        }
                    }
                }
                Some(other) => checker.problem(
                    "$.person.usernames",
                    format!(
                        "must be an object of system → username, found {}",
                        type_name(other)
                    ),
                ),
            }
        }
        Some(other) => checker.problem(
            "$.person",
            format!("must be an object, found {}", type_name(other)),
        ),
    }

    match (kind, root.get("transfer").filter(|value| !value.is_null())) {
        (Some(EventKind::Transfer), None) => checker.problem(
            "$.transfer",
            "is required for a transfer: {\"from_roles\": [...], \"to_roles\": [...]}",
        ),
        (Some(EventKind::Transfer), Some(Value::Object(transfer))) => {
            checker.unknown_fields(transfer, "$.transfer", &["from_roles", "to_roles"]);
            for key in ["from_roles", "to_roles"] {
                if transfer.get(key).is_none() {
                    checker.problem(format!("$.transfer.{key}"), "is required");
                }
                checker.string_list(transfer.get(key), &format!("$.transfer.{key}"), MAX_ROLES);
            }
        }
        (Some(EventKind::Transfer), Some(other)) => checker.problem(
            "$.transfer",
            format!("must be an object, found {}", type_name(other)),
        ),
        (Some(other), Some(_)) => checker.problem(
            "$.transfer",
            format!(
                "only applies to kind \"transfer\", not \"{}\"",
                other.as_str()
            ),
        ),
        _ => {}
    }
    checker.string_list(root.get("systems"), "$.systems", MAX_USERNAMES);
    checker.problems
}

pub(crate) fn looks_like_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !text.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn termination() -> Value {
        json!({
            "event_id": "hr-1001",
            "source": "workday",
            "kind": "termination",
            "termination_type": "involuntary",
            "person": {"id": "E1001", "email": "ada@example.com", "usernames": {"crm": "ada.l"}},
            "effective_at": "2026-11-25T17:00:00+01:00",
            "requested_by": "hr-bot"
        })
    }

    #[test]
    fn a_valid_termination_parses_and_keeps_its_offset() {
        let event = LifecycleEvent::parse(termination().to_string().as_bytes());
        let event = event.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(event.kind, EventKind::Termination);
        assert_eq!(event.effective_at.offset().local_minus_utc(), 3600);
        assert_eq!(event.username_for("crm"), Some("ada.l"));
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut doc = termination();
        doc["event_id"] = json!("has spaces");
        doc["person"]["email"] = json!("nope");
        doc["effective_at"] = json!("tomorrow");
        doc["termination_type"] = Value::Null;
        doc["colour"] = json!("blue");
        let err = LifecycleEvent::parse(doc.to_string().as_bytes()).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "$.event_id",
            "$.person.email",
            "$.effective_at",
            "$.termination_type",
            "$.colour",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
    }

    #[test]
    fn wrong_types_and_misplaced_fields_are_problems_not_panics() {
        for doc in [
            json!([]),
            json!({"kind": 3, "person": "x", "transfer": 1}),
            json!({"kind": "transfer", "transfer": {"from_roles": [1]}}),
            json!({"kind": "rehire", "termination_type": "voluntary"}),
        ] {
            let err = LifecycleEvent::parse(doc.to_string().as_bytes()).unwrap_err();
            assert!(!err.problems.is_empty());
        }
        let err = LifecycleEvent::parse(b"{not json").unwrap_err();
        assert_eq!(err.problems[0].line, Some(1));
        let huge = vec![b' '; MAX_EVENT_BYTES + 1];
        assert!(LifecycleEvent::parse(&huge)
            .unwrap_err()
            .to_string()
            .contains("limit"));
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;

    /// The published schema is generated from these serde types; a change to one without
    /// the other fails here. Regenerate with `deprov schema > infra/schemas/lifecycle-event.schema.json`.
    #[test]
    fn the_published_json_schema_matches_the_serde_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/schemas/lifecycle-event.schema.json"
        );
        let published: Value = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| panic!("cannot read {path}"));
        assert_eq!(
            published,
            LifecycleEvent::json_schema(),
            "infra/schemas/lifecycle-event.schema.json is stale: run `deprov schema > infra/schemas/lifecycle-event.schema.json`"
        );
    }

    /// Every example event shipped with the project parses, and names only schema fields.
    #[test]
    fn shipped_example_events_are_valid() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/events");
        let entries = std::fs::read_dir(dir).unwrap_or_else(|err| panic!("{dir}: {err}"));
        let mut checked = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if let Err(err) = LifecycleEvent::parse(&bytes) {
                    panic!("{}: {err}", path.display());
                }
                checked += 1;
            }
        }
        assert!(checked >= 3, "expected example events in {dir}");
    }
}
