//! The policy document (TOML): which systems exist, what each scenario does on each of
//! them, when, for which roles, who is exempt, and the limits that bound a run.
//!
//! `Policy::parse` reports every problem with the TOML key and its line.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::event::{EventKind, LifecycleEvent, TerminationType};
use crate::plan::StageKind;
use crate::validation::{glob_matches, is_identifier, Invalid, Problem};

/// A duration written as `30d`, `12h`, `200ms` in the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct HumanDuration(pub Duration);

impl From<HumanDuration> for String {
    fn from(value: HumanDuration) -> String {
        crate::duration::format(value.0)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::duration::parse(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// How a connector finds the person's account on a system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchBy {
    /// `person.usernames[system]` when given, else the email.
    #[default]
    Username,
    /// Always the email.
    Email,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// Connector kind: `scim`, `memory`, …
    pub kind: String,
    /// Name of the secret holding the credentials, resolved by the secret source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Connector-specific settings (base URL, dialect, …).
    #[serde(default)]
    pub connection: BTreeMap<String, serde_json::Value>,
    /// Tasks in flight on this system at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Requests per second the connector may start; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<f64>,
    #[serde(default)]
    pub match_by: MatchBy,
    /// This system's inactivity threshold for the sweep; `[sweep] inactive_after` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_after: Option<HumanDuration>,
    /// A run that would change this system waits for a person's approval first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
    /// This system's brake: `[limits] max_accounts` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_accounts: Option<u32>,
    /// This system's brake: `[limits] max_percent` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent: Option<f64>,
}

fn default_concurrency() -> u32 {
    4
}

/// What one scenario does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The stages to run, on every system unless overridden. Always executed in kill order.
    pub stages: Vec<StageKind>,
    /// How long after the effective time a stage may start (`delete = "30d"`).
    #[serde(default)]
    pub delays: BTreeMap<StageKind, HumanDuration>,
    /// Per-system stage lists; an empty list leaves that system alone.
    #[serde(default)]
    pub overrides: BTreeMap<String, Override>,
    /// Every run of this scenario waits for a person's approval first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub stages: Vec<StageKind>,
}

/// An account deprov must never touch: service and break-glass accounts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exemption {
    /// Limit to one system; every system when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Glob on the account's username or email (`svc-*`, `breakglass@*`).
    pub account: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// A run that would touch more accounts than this is refused.
    #[serde(default = "default_max_accounts")]
    pub max_accounts_per_run: u32,
    /// A run with more tasks than this is refused.
    #[serde(default = "default_max_tasks")]
    pub max_tasks_per_run: u32,
    /// The brake: a sweep, an intake burst or a run that would act on more accounts than
    /// this on one system is quarantined until someone approves it.
    #[serde(default = "default_brake_accounts")]
    pub max_accounts: u32,
    /// The brake, relative: more than this percentage of a system's listed accounts
    /// (acting on a single account never counts as a percentage).
    #[serde(default = "default_brake_percent")]
    pub max_percent: f64,
}

fn default_max_accounts() -> u32 {
    50
}
fn default_max_tasks() -> u32 {
    1000
}
fn default_brake_accounts() -> u32 {
    50
}
fn default_brake_percent() -> f64 {
    10.0
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_accounts_per_run: default_max_accounts(),
            max_tasks_per_run: default_max_tasks(),
            max_accounts: default_brake_accounts(),
            max_percent: default_brake_percent(),
        }
    }
}

/// What the sweep does with orphans: active accounts that match no active person known
/// from HR events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanMode {
    /// Not looked for.
    Off,
    /// Listed by the sweep, never acted on.
    #[default]
    Report,
    /// One `orphan` run per orphan (needs `[scenarios.orphan]`).
    Act,
}

impl OrphanMode {
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanMode::Off => "off",
            OrphanMode::Report => "report",
            OrphanMode::Act => "act",
        }
    }
}

/// The daily sweep: when an account counts as inactive, and how many runs one sweep may
/// start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// An active account whose last activity is older than this is a finding; a system's
    /// own `inactive_after` overrides it.
    #[serde(default = "default_inactive_after")]
    pub inactive_after: HumanDuration,
    /// Blast radius: a sweep that would start more runs than this starts none of them and
    /// is quarantined, since a connector bug or a wrong clock would otherwise disable
    /// everyone.
    #[serde(default = "default_max_runs_per_sweep")]
    pub max_runs_per_sweep: u32,
    /// Orphan accounts: `report` (the default), `act` or `off`.
    #[serde(default)]
    pub orphans: OrphanMode,
}

/// Shorter inactivity thresholds would catch people on a long weekend.
pub const MIN_INACTIVE_AFTER: Duration = Duration::from_secs(86_400);

fn default_inactive_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(90 * 86_400))
}
fn default_max_runs_per_sweep() -> u32 {
    25
}

impl Default for Sweep {
    fn default() -> Self {
        Sweep {
            inactive_after: default_inactive_after(),
            max_runs_per_sweep: default_max_runs_per_sweep(),
            orphans: OrphanMode::default(),
        }
    }
}

/// Retries of throttled and transient failures: exponential backoff with full jitter,
/// never sooner than the target's Retry-After.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_base_delay")]
    pub base_delay: HumanDuration,
    #[serde(default = "default_max_delay")]
    pub max_delay: HumanDuration,
}

fn default_max_attempts() -> u32 {
    6
}
fn default_base_delay() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn default_max_delay() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: default_max_attempts(),
            base_delay: default_base_delay(),
            max_delay: default_max_delay(),
        }
    }
}

impl Retry {
    /// The delay before attempt `attempt + 1`: full jitter over an exponential ceiling
    /// (`jitter` in [0, 1)), at least `retry_after`.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let ceiling = self
            .base_delay
            .0
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay.0);
        let jittered = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(after) => jittered.max(after.min(self.max_delay.0)),
            None => jittered,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Recorded in every plan, so an auditor knows which rules applied.
    pub version: String,
    pub systems: BTreeMap<String, SystemConfig>,
    #[serde(default)]
    pub scenarios: BTreeMap<String, Scenario>,
    /// role → system → entitlement names the role grants.
    #[serde(default)]
    pub roles: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    pub exemptions: Vec<Exemption>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub sweep: Sweep,
    #[serde(default)]
    pub restore: Restore,
    #[serde(default)]
    pub approvals: Approvals,
}

/// Runs that wait for a person's approval (scenarios or systems with `approval = true`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// An approval not given within this long escalates the run; nothing is changed.
    #[serde(default = "default_approval_timeout")]
    pub timeout: HumanDuration,
}

fn default_approval_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(72 * 3600))
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            timeout: default_approval_timeout(),
        }
    }
}

/// Whether a rehire or a cancel, after stopping the person's pending stages, restores what
/// the stopped runs did (re-enable, re-grant) from the pre-state their plans captured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restore {
    #[serde(default = "restores")]
    pub on_rehire: bool,
    #[serde(default = "restores")]
    pub on_cancel: bool,
}

fn restores() -> bool {
    true
}

impl Default for Restore {
    fn default() -> Self {
        Restore {
            on_rehire: true,
            on_cancel: true,
        }
    }
}

impl Restore {
    /// Whether an event of `kind` restores (only rehire and cancel ever do).
    pub fn applies_to(&self, kind: EventKind) -> bool {
        match kind {
            EventKind::Rehire => self.on_rehire,
            EventKind::Cancel => self.on_cancel,
            _ => false,
        }
    }
}

/// Scenario names a policy may define.
pub const SCENARIO_NAMES: [&str; 9] = [
    "termination",
    "termination_voluntary",
    "termination_involuntary",
    "contract_end",
    "transfer",
    "leave_of_absence",
    "inactivity",
    "orphan",
    "manual",
];

impl Policy {
    /// Parses and validates a policy document; every problem names its key and line.
    pub fn parse(text: &str) -> Result<Policy, Invalid> {
        let invalid = |problems| Invalid {
            what: "policy".into(),
            problems,
        };
        let policy: Policy = toml_edit::de::from_str(text).map_err(|err| {
            invalid(vec![Problem {
                path: "policy".into(),
                line: err.span().map(|span| line_of_offset(text, span.start)),
                message: err.message().trim().to_string(),
            }])
        })?;
        let mut problems = policy.problems();
        if problems.is_empty() {
            return Ok(policy);
        }
        if let Ok(document) = text.parse::<toml_edit::ImDocument<String>>() {
            for problem in &mut problems {
                problem.line = line_of_key(&document, text, &problem.path);
            }
        }
        Err(invalid(problems))
    }

    /// Semantic problems serde cannot see: cross references, ranges, names.
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |path: String, message: String| {
            problems.push(Problem {
                path,
                line: None,
                message,
            })
        };
        if !is_identifier(&self.version, 64) {
            problem(
                "version".into(),
                "must be 1-64 letters, digits or . _ : @ - (e.g. \"2026-11-25.1\")".into(),
            );
        }
        if self.systems.is_empty() {
            problem("systems".into(), "define at least one system".into());
        }
        let known_systems = || self.systems.keys().cloned().collect::<Vec<_>>().join(", ");
        for (name, system) in &self.systems {
            let at = |key: &str| format!("systems.{name}.{key}");
            if !is_identifier(name, 64) {
                problem(
                    format!("systems.{name}"),
                    "system names may only contain letters, digits and . _ : @ -".into(),
                );
            }
            if system.kind.trim().is_empty() {
                problem(
                    at("kind"),
                    "must name a connector kind, e.g. \"scim\"".into(),
                );
            }
            if !(1..=256).contains(&system.concurrency) {
                problem(
                    at("concurrency"),
                    format!("is {}; use 1 to 256", system.concurrency),
                );
            }
            if let Some(rate) = system.rate_limit_per_second {
                if !(rate > 0.0 && rate <= 10_000.0) {
                    problem(
                        at("rate_limit_per_second"),
                        format!("is {rate}; use a number above 0 and at most 10000"),
                    );
                }
            }
            if let Some(after) = system.inactive_after {
                if after.0 < MIN_INACTIVE_AFTER {
                    problem(
                        at("inactive_after"),
                        format!(
                            "is {}; use at least \"1d\" (e.g. \"90d\")",
                            String::from(after)
                        ),
                    );
                }
            }
            if let Some(max) = system.max_accounts {
                if max == 0 {
                    problem(at("max_accounts"), "must be at least 1".into());
                }
            }
            if let Some(percent) = system.max_percent {
                if let Some(message) = percent_problem(percent) {
                    problem(at("max_percent"), message);
                }
            }
            if let Some(secret) = &system.secret {
                let valid = !secret.is_empty()
                    && secret.len() <= 256
                    && secret.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || matches!(b, b'/' | b'_' | b'-' | b'.' | b'+' | b'=' | b'@')
                    });
                if !valid {
                    problem(
                        at("secret"),
                        "must be a secret name of letters, digits and / _ - . + = @".into(),
                    );
                }
            }
        }
        for (name, scenario) in &self.scenarios {
            let at = |key: &str| format!("scenarios.{name}.{key}");
            if !SCENARIO_NAMES.contains(&name.as_str()) {
                problem(
                    format!("scenarios.{name}"),
                    format!(
                        "is not a scenario; use one of: {} (rehire and cancel stop runs, they need no scenario)",
                        SCENARIO_NAMES.join(", ")
                    ),
                );
            }
            if scenario.stages.is_empty() {
                problem(at("stages"), "list at least one stage".into());
            }
            check_unique_stages(&scenario.stages, &at("stages"), &mut problem);
            for stage in scenario.delays.keys() {
                if !scenario.stages.contains(stage) {
                    problem(
                        at(&format!("delays.{}", stage.as_str())),
                        format!(
                            "delays stage \"{}\", which this scenario does not run",
                            stage.as_str()
                        ),
                    );
                }
            }
            for (system, over) in &scenario.overrides {
                if !self.systems.contains_key(system) {
                    problem(
                        at(&format!("overrides.{system}")),
                        format!(
                            "names no system of this policy; systems are: {}",
                            known_systems()
                        ),
                    );
                }
                check_unique_stages(
                    &over.stages,
                    &at(&format!("overrides.{system}.stages")),
                    &mut problem,
                );
            }
        }
        for (role, grants) in &self.roles {
            for system in grants.keys() {
                if !self.systems.contains_key(system) {
                    problem(
                        format!("roles.{role}.{system}"),
                        format!(
                            "names no system of this policy; systems are: {}",
                            known_systems()
                        ),
                    );
                }
            }
        }
        for (index, exemption) in self.exemptions.iter().enumerate() {
            if let Some(system) = &exemption.system {
                if !self.systems.contains_key(system) {
                    problem(
                        format!("exemptions[{index}].system"),
                        format!(
                            "names no system of this policy; systems are: {}",
                            known_systems()
                        ),
                    );
                }
            }
            if exemption.account.trim().is_empty() {
                problem(
                    format!("exemptions[{index}].account"),
                    "must not be empty".into(),
                );
            }
            if exemption.reason.trim().is_empty() {
                problem(
                    format!("exemptions[{index}].reason"),
                    "say why this account is exempt; auditors ask".into(),
                );
            }
        }
        if self.limits.max_accounts_per_run == 0 {
            problem(
                "limits.max_accounts_per_run".into(),
                "must be at least 1".into(),
            );
        }
        if self.limits.max_tasks_per_run == 0 {
            problem(
                "limits.max_tasks_per_run".into(),
                "must be at least 1".into(),
            );
        }
        if self.limits.max_accounts == 0 {
            problem("limits.max_accounts".into(), "must be at least 1".into());
        }
        if let Some(message) = percent_problem(self.limits.max_percent) {
            problem("limits.max_percent".into(), message);
        }
        if self.sweep.orphans == OrphanMode::Act && !self.scenarios.contains_key("orphan") {
            problem(
                "sweep.orphans".into(),
                "is \"act\", but the policy has no [scenarios.orphan] to act with; add one or use \"report\"".into(),
            );
        }
        if !(1..=50).contains(&self.retry.max_attempts) {
            problem(
                "retry.max_attempts".into(),
                format!("is {}; use 1 to 50", self.retry.max_attempts),
            );
        }
        if self.sweep.inactive_after.0 < MIN_INACTIVE_AFTER {
            problem(
                "sweep.inactive_after".into(),
                format!(
                    "is {}; use at least \"1d\" (e.g. \"90d\")",
                    String::from(self.sweep.inactive_after)
                ),
            );
        }
        if !(1..=1000).contains(&self.sweep.max_runs_per_sweep) {
            problem(
                "sweep.max_runs_per_sweep".into(),
                format!("is {}; use 1 to 1000", self.sweep.max_runs_per_sweep),
            );
        }
        if self.retry.base_delay > self.retry.max_delay {
            problem(
                "retry.base_delay".into(),
                "is longer than retry.max_delay".into(),
            );
        }
        problems
    }

    /// The scenario an event runs, and its name. A termination uses
    /// `termination_<type>` when the policy defines it, else `termination`.
    pub fn scenario_for(&self, event: &LifecycleEvent) -> Option<(&str, &Scenario)> {
        let specific = match (event.kind, event.termination_type) {
            (EventKind::Termination, Some(TerminationType::Voluntary)) => {
                Some("termination_voluntary")
            }
            (EventKind::Termination, Some(TerminationType::Involuntary)) => {
                Some("termination_involuntary")
            }
            _ => None,
        };
        specific
            .and_then(|name| self.scenarios.get_key_value(name))
            .or_else(|| self.scenarios.get_key_value(event.kind.as_str()))
            .map(|(name, scenario)| (name.as_str(), scenario))
    }

    /// The exemption covering an account, if any.
    pub fn exemption_for(
        &self,
        system: &str,
        username: &str,
        email: Option<&str>,
    ) -> Option<&Exemption> {
        self.exemptions.iter().find(|exemption| {
            exemption
                .system
                .as_deref()
                .is_none_or(|only| only == system)
                && (glob_matches(&exemption.account, username)
                    || email.is_some_and(|email| glob_matches(&exemption.account, email)))
        })
    }

    /// How long an account on `system` may go without activity before the sweep finds it:
    /// the system's own `inactive_after`, else `[sweep] inactive_after`.
    pub fn inactive_after(&self, system: &str) -> Duration {
        self.systems
            .get(system)
            .and_then(|config| config.inactive_after)
            .unwrap_or(self.sweep.inactive_after)
            .0
    }

    /// The brake's limits on `system`: the most accounts one trigger may act on, and the
    /// most as a percentage of the system's listed accounts; each names the policy key it
    /// comes from.
    pub fn brake_limits(&self, system: &str) -> BrakeLimits {
        let config = self.systems.get(system);
        let (max_accounts, accounts_key) = match config.and_then(|c| c.max_accounts) {
            Some(max) => (max, format!("systems.{system}.max_accounts")),
            None => (self.limits.max_accounts, "limits.max_accounts".to_string()),
        };
        let (max_percent, percent_key) = match config.and_then(|c| c.max_percent) {
            Some(max) => (max, format!("systems.{system}.max_percent")),
            None => (self.limits.max_percent, "limits.max_percent".to_string()),
        };
        BrakeLimits {
            max_accounts,
            accounts_key,
            max_percent,
            percent_key,
        }
    }

    /// The entitlement names `roles` grant on `system`.
    pub fn entitlements_of(&self, roles: &[String], system: &str) -> Vec<String> {
        let mut names: Vec<String> = roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .filter_map(|grants| grants.get(system))
            .flatten()
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The brake's limits on one system, with the policy keys they come from.
#[derive(Clone, Debug, PartialEq)]
pub struct BrakeLimits {
    pub max_accounts: u32,
    pub accounts_key: String,
    pub max_percent: f64,
    pub percent_key: String,
}

fn percent_problem(percent: f64) -> Option<String> {
    (!(percent > 0.0 && percent <= 100.0))
        .then(|| format!("is {percent}; use a percentage above 0 and at most 100 (e.g. 10)"))
}

fn check_unique_stages(stages: &[StageKind], path: &str, problem: &mut impl FnMut(String, String)) {
    let mut seen = Vec::new();
    for stage in stages {
        if *stage == StageKind::Restore {
            problem(
                path.to_string(),
                "lists \"restore\", which no scenario runs: rehire and cancel restore, as [restore] on_rehire / on_cancel say".into(),
            );
        }
        if seen.contains(stage) {
            problem(
                path.to_string(),
                format!("lists \"{}\" twice", stage.as_str()),
            );
        }
        seen.push(*stage);
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The line of a dotted key path (`systems.crm.concurrency`, `exemptions[0].reason`).
fn line_of_key(document: &toml_edit::ImDocument<String>, text: &str, path: &str) -> Option<usize> {
    let mut container: Option<&dyn toml_edit::TableLike> = Some(document.as_table());
    let mut span = None;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((found_key, found)) = container.and_then(|table| table.get_key_value(key)) else {
            break;
        };
        span = found.span().or_else(|| found_key.span()).or(span);
        container = match index {
            Some(index) => {
                let element = found
                    .as_array_of_tables()
                    .and_then(|tables| tables.get(index));
                span = element.and_then(toml_edit::Table::span).or(span);
                element.map(|table| table as &dyn toml_edit::TableLike)
            }
            None => found.as_table_like(),
        };
    }
    span.map(|span| line_of_offset(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = r#"
version = "2026-11-25.1"

[systems.crm]
kind = "scim"
secret = "deprov/connector/crm"
concurrency = 8
connection = { base_url = "http://127.0.0.1:9000/scim/v2" }

[scenarios.termination]
stages = ["sessions", "disable", "entitlements", "delete"]
delays = { delete = "30d" }

[roles.engineer]
crm = ["engineering"]

[[exemptions]]
account = "svc-*"
reason = "service accounts"
"#;

    #[test]
    fn a_valid_policy_parses() {
        let policy = Policy::parse(SAMPLE).unwrap_or_else(|err| panic!("{err}"));
        let scenario = &policy.scenarios["termination"];
        assert_eq!(scenario.delays[&StageKind::Delete].0.as_secs(), 30 * 86_400);
        assert_eq!(policy.systems["crm"].concurrency, 8);
        assert!(policy.exemption_for("crm", "SVC-backup", None).is_some());
        assert_eq!(
            policy.entitlements_of(&["engineer".into()], "crm"),
            ["engineering"]
        );
    }

    #[test]
    fn a_misspelt_key_names_its_line() {
        let text = SAMPLE.replace("concurrency = 8", "concurency = 8");
        let err = Policy::parse(&text).unwrap_err();
        assert_eq!(err.problems[0].line, Some(7), "{err}");
        assert!(err.problems[0].message.contains("concurency"), "{err}");
    }

    #[test]
    fn semantic_problems_name_key_and_line() {
        let text = SAMPLE
            .replace("concurrency = 8", "concurrency = 0")
            .replace("crm = [\"engineering\"]", "wiki = [\"engineering\"]")
            .replace("reason = \"service accounts\"", "reason = \"\"");
        let err = Policy::parse(&text).unwrap_err();
        let rendered = err.to_string();
        assert!(
            rendered.contains("line 7, systems.crm.concurrency: is 0"),
            "{rendered}"
        );
        assert!(
            rendered.contains("line 15, roles.engineer.wiki"),
            "{rendered}"
        );
        assert!(
            rendered.contains("line 19, exemptions[0].reason"),
            "{rendered}"
        );
    }

    #[test]
    fn bad_durations_and_stages_are_reported() {
        let err = Policy::parse(&SAMPLE.replace("\"30d\"", "\"a month\"")).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
        let err = Policy::parse(&SAMPLE.replace("\"sessions\",", "\"session\",")).unwrap_err();
        assert!(err.to_string().contains("session"), "{err}");
    }

    #[test]
    fn the_sweep_has_defaults_and_per_system_thresholds() {
        let policy = Policy::parse(SAMPLE).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(policy.sweep, Sweep::default());
        assert_eq!(policy.inactive_after("crm").as_secs(), 90 * 86_400);
        let text = SAMPLE.replace(
            "concurrency = 8",
            "concurrency = 8\ninactive_after = \"30d\"",
        ) + "\n[sweep]\ninactive_after = \"60d\"\nmax_runs_per_sweep = 5\n";
        let policy = Policy::parse(&text).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(policy.inactive_after("crm").as_secs(), 30 * 86_400);
        assert_eq!(policy.inactive_after("other").as_secs(), 60 * 86_400);
        assert_eq!(policy.sweep.max_runs_per_sweep, 5);
    }

    #[test]
    fn sweep_problems_name_key_and_line() {
        let text = SAMPLE.replace(
            "concurrency = 8",
            "concurrency = 8\ninactive_after = \"2h\"",
        ) + "\n[sweep]\ninactive_after = \"1h\"\nmax_runs_per_sweep = 0\n";
        let rendered = Policy::parse(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("line 8, systems.crm.inactive_after: is 2h; use at least \"1d\""),
            "{rendered}"
        );
        assert!(
            rendered.contains("line 23, sweep.inactive_after: is 1h"),
            "{rendered}"
        );
        assert!(
            rendered.contains("line 24, sweep.max_runs_per_sweep: is 0"),
            "{rendered}"
        );
        let err = Policy::parse(&(SAMPLE.to_string() + "\n[sweep]\nmax_runs = 5\n")).unwrap_err();
        assert!(err.to_string().contains("max_runs"), "{err}");
    }

    #[test]
    fn brake_limits_default_and_a_system_may_set_its_own() {
        let policy = Policy::parse(SAMPLE).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            (policy.limits.max_accounts, policy.limits.max_percent),
            (50, 10.0)
        );
        assert_eq!(policy.sweep.orphans, OrphanMode::Report);
        let crm = policy.brake_limits("crm");
        assert_eq!(
            (crm.max_accounts, crm.accounts_key.as_str()),
            (50, "limits.max_accounts")
        );
        let text = SAMPLE.replace(
            "concurrency = 8",
            "concurrency = 8\nmax_accounts = 5\nmax_percent = 2.5",
        )
            + "\n[limits]\nmax_accounts = 20\nmax_percent = 30\n[sweep]\norphans = \"off\"\n";
        let policy = Policy::parse(&text).unwrap_or_else(|err| panic!("{err}"));
        let crm = policy.brake_limits("crm");
        assert_eq!(
            (
                crm.max_accounts,
                crm.accounts_key.as_str(),
                crm.max_percent,
                crm.percent_key.as_str()
            ),
            (
                5,
                "systems.crm.max_accounts",
                2.5,
                "systems.crm.max_percent"
            )
        );
        assert_eq!(policy.brake_limits("other").max_percent, 30.0);
        assert_eq!(policy.sweep.orphans, OrphanMode::Off);
    }

    #[test]
    fn brake_and_orphan_problems_name_key_and_line() {
        let text = SAMPLE.replace(
            "concurrency = 8",
            "concurrency = 8\nmax_accounts = 0\nmax_percent = 0",
        ) + "\n[limits]\nmax_percent = 150\n[sweep]\norphans = \"act\"\n";
        let rendered = Policy::parse(&text).unwrap_err().to_string();
        assert!(
            rendered.contains("line 8, systems.crm.max_accounts: must be at least 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                "line 9, systems.crm.max_percent: is 0; use a percentage above 0 and at most 100"
            ),
            "{rendered}"
        );
        assert!(
            rendered.contains("limits.max_percent: is 150"),
            "{rendered}"
        );
        assert!(
            rendered
                .contains("sweep.orphans: is \"act\", but the policy has no [scenarios.orphan]"),
            "{rendered}"
        );
        let err =
            Policy::parse(&(SAMPLE.to_string() + "\n[sweep]\norphans = \"yes\"\n")).unwrap_err();
        assert!(
            err.to_string().contains(
                "line 22, policy: unknown variant `yes`, expected one of `off`, `report`, `act`"
            ),
            "{err}"
        );
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let retry = Retry::default();
        assert_eq!(retry.backoff(1, None, 1.0), Duration::from_millis(200));
        assert_eq!(retry.backoff(3, None, 1.0), Duration::from_millis(800));
        assert_eq!(retry.backoff(40, None, 1.0), Duration::from_secs(60));
        assert_eq!(
            retry.backoff(1, Some(Duration::from_secs(5)), 0.0),
            Duration::from_secs(5)
        );
    }
}
