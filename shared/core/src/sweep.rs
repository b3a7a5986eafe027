//! The sweep's rules: which of a system's accounts are inactive — each one an `inactivity`
//! event that starts one run — which are orphans (no active person known from HR owns
//! them), and the brake's verdict on acting on them all (`brake::check`).

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::brake::{self, Exposure, Trigger, Verdict};
use crate::connector::{Account, ConnectorError};
use crate::event::{looks_like_email, EventKind, LifecycleEvent, Person};
use crate::flow::RunInput;
use crate::ids;
use crate::people::{owner, Owner, PersonRecord};
use crate::policy::{OrphanMode, Policy};
use crate::validation::is_identifier;

/// The `source` (and `requested_by`) of the events a sweep produces.
pub const SOURCE: &str = "sweep";

/// The longest username or email an event accepts.
const MAX_NAME: usize = 320;
/// The longest person id an event accepts.
const MAX_PERSON_ID: usize = 128;

/// The inactive accounts among `accounts`, the listing of policy system `system`, as
/// `inactivity` events scoped to that system, effective `now`.
///
/// An account is a finding when it is active, its `last_activity` is older than the
/// policy's threshold for the system (`Policy::inactive_after`; exactly at the threshold is
/// not older), and no exemption covers it. Accounts without `last_activity` data are **not**
/// findings: nothing says they are dormant (accounts nobody in HR owns are orphan
/// detection's business, not this one's). An account whose username is empty or longer
/// than 320 characters cannot be named in an event and is left out.
///
/// The event id is derived from (system, account id, last activity): the same dormant
/// account found again tomorrow is the same event, hence the same run, while an account
/// used again and then dormant again is a new one. Every event passes
/// `LifecycleEvent` validation.
pub fn findings(
    policy: &Policy,
    system: &str,
    accounts: &[Account],
    now: DateTime<Utc>,
) -> Vec<LifecycleEvent> {
    let Some(cutoff) = cutoff(policy, system, now) else {
        return Vec::new();
    };
    let threshold = threshold_text(policy, system);
    accounts
        .iter()
        .filter_map(|account| match classify(policy, system, account, cutoff) {
            Class::Inactive(last) => Some(event_for(system, account, last, now, &threshold)),
            _ => None,
        })
        .collect()
}

/// The last activity before which an account on `system` is inactive; none when the
/// threshold is beyond chrono's range (nobody is found).
fn cutoff(policy: &Policy, system: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(policy.inactive_after(system))
        .ok()
        .and_then(|threshold| now.checked_sub_signed(threshold))
}

fn threshold_text(policy: &Policy, system: &str) -> String {
    let threshold = policy.inactive_after(system);
    match threshold.as_secs() {
        secs if secs % 86_400 == 0 => format!("{} days", secs / 86_400),
        _ => crate::duration::format(threshold),
    }
}

/// What the inactivity rules say about one listed account.
enum Class {
    /// Disabled already: nothing to do.
    Disabled,
    /// No usable username: cannot be named in an event.
    Unnamed,
    /// Active, and the system reports no last activity.
    NoData,
    /// Used within the threshold.
    Recent,
    /// Inactive, but an exemption covers it.
    Exempt,
    /// Inactive since this time.
    Inactive(DateTime<Utc>),
}

fn classify(policy: &Policy, system: &str, account: &Account, cutoff: DateTime<Utc>) -> Class {
    if !account.active {
        return Class::Disabled;
    }
    if account.username.trim().is_empty() || account.username.len() > MAX_NAME {
        return Class::Unnamed;
    }
    let Some(last) = account.last_activity else {
        return Class::NoData;
    };
    if last >= cutoff {
        return Class::Recent;
    }
    if is_exempt(policy, system, account) {
        return Class::Exempt;
    }
    Class::Inactive(last)
}

fn is_exempt(policy: &Policy, system: &str, account: &Account) -> bool {
    policy
        .exemption_for(system, &account.username, account.email.as_deref())
        .is_some()
}

fn event_for(
    system: &str,
    account: &Account,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    threshold: &str,
) -> LifecycleEvent {
    let last_text = last.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let event_hash = ids::sha256_hex(format!("{system}\0{}\0{last_text}", account.id).as_bytes());
    LifecycleEvent {
        event_id: format!("inactive-{}", &event_hash[..32]),
        source: SOURCE.into(),
        kind: EventKind::Inactivity,
        termination_type: None,
        person: Person {
            id: person_id(system, account),
            email: email_of(account),
            display_name: None,
            usernames: BTreeMap::from([(system.to_string(), account.username.clone())]),
            roles: Vec::new(),
            manager_email: None,
        },
        effective_at: now.fixed_offset(),
        reason: Some(format!(
            "no activity since {} (threshold {threshold})",
            last.format("%Y-%m-%d")
        )),
        requested_by: SOURCE.into(),
        transfer: None,
        systems: vec![system.to_string()],
    }
}

/// The username when it is a valid person id, else a hash of (system, account id).
fn person_id(system: &str, account: &Account) -> String {
    if is_identifier(&account.username, MAX_PERSON_ID) {
        return account.username.clone();
    }
    let hash = ids::sha256_hex(format!("{system}\0{}", account.id).as_bytes());
    format!("account-{}", &hash[..32])
}

/// The account's email; else its username when that is an email; else
/// `<username>@unknown.invalid` (a reserved domain nobody receives mail at).
fn email_of(account: &Account) -> String {
    let usable = |text: &str| text.len() <= MAX_NAME && looks_like_email(text);
    if let Some(email) = account
        .email
        .as_deref()
        .map(str::trim)
        .filter(|e| usable(e))
    {
        return email.to_string();
    }
    if usable(&account.username) {
        return account.username.clone();
    }
    let local: String = account
        .username
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    format!("{local}@unknown.invalid")
}

/// Why an account is a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Unused for longer than the system's threshold.
    Inactive,
    /// Active, and no active person known from HR owns it.
    Orphan,
}

impl FindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Inactive => "inactive",
            FindingKind::Orphan => "orphan",
        }
    }
}

/// One account a sweep found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub system: String,
    pub account_id: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<DateTime<Utc>>,
    pub reason: String,
    /// Whether the sweep starts a run for it (orphans only with `[sweep] orphans = "act"`,
    /// either kind only when the policy has its scenario).
    pub acts: bool,
    /// The run it starts (or would start).
    pub run_id: String,
    pub event: LifecycleEvent,
}

/// What a sweep saw on one system.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemSweep {
    pub system: String,
    /// Accounts listed.
    pub accounts: usize,
    /// Of which active (not disabled).
    pub active: usize,
    /// The inactivity threshold applied, e.g. `90 days`.
    pub threshold: String,
    pub inactive: usize,
    pub orphans: usize,
    /// Accounts that would be findings but an exemption covers.
    pub exempted: usize,
    /// Active accounts the system reports no last activity for (never inactive findings).
    pub without_activity: usize,
    /// Why the system was not swept, if it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Not swept because listing failed (not because its connector cannot list): the
    /// sweep is incomplete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// A sweep's findings over every system, and the brake's verdict on acting on them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    pub policy_version: String,
    pub at: DateTime<Utc>,
    pub orphans: OrphanMode,
    pub systems: Vec<SystemSweep>,
    pub findings: Vec<Finding>,
    /// Things the reader must know: a missing scenario, orphans not looked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The brake on the runs the sweep would start.
    pub brake: Verdict,
}

impl SweepReport {
    /// The findings the sweep acts on.
    pub fn acting(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|finding| finding.acts)
    }

    /// The runs the sweep starts.
    pub fn run_inputs(&self) -> Vec<RunInput> {
        self.acting()
            .map(|finding| RunInput {
                event: finding.event.clone(),
                dry_run: false,
            })
            .collect()
    }

    /// What the runs would act on, per system, for the brake and the quarantine.
    pub fn exposures(&self) -> Vec<Exposure> {
        exposures(&self.systems, &self.findings)
    }

    pub fn count(&self, kind: FindingKind) -> usize {
        self.findings.iter().filter(|f| f.kind == kind).count()
    }
}

fn exposures(systems: &[SystemSweep], findings: &[Finding]) -> Vec<Exposure> {
    systems
        .iter()
        .filter(|system| system.skipped.is_none())
        .map(|system| Exposure {
            system: system.system.clone(),
            accounts: findings
                .iter()
                .filter(|f| f.acts && f.system == system.system)
                .count(),
            population: Some(system.accounts),
        })
        .filter(|exposure| exposure.accounts > 0)
        .collect()
}

/// Sweeps every listed system: inactive accounts (as `findings`) and, unless the policy says
/// `orphans = "off"`, orphans — active, non-exempt accounts that no person active at `now`
/// owns among `people` (the people known from HR events; see `people::owner`). Orphans are
/// looked for only when some person is known: on an installation that has not received an
/// HR event yet, every account would be one. An account that is inactive is reported as
/// inactive only.
///
/// `listings` holds each system's accounts, or why they could not be listed. The brake is
/// judged on the findings the sweep acts on.
pub fn sweep(
    policy: &Policy,
    listings: &BTreeMap<String, Result<Vec<Account>, ConnectorError>>,
    people: &[PersonRecord],
    now: DateTime<Utc>,
) -> SweepReport {
    let mut notes = Vec::new();
    let inactivity_acts = policy
        .scenarios
        .contains_key(EventKind::Inactivity.as_str());
    if !inactivity_acts {
        notes.push(
            "the policy has no [scenarios.inactivity]: inactive accounts are reported, not acted on"
                .to_string(),
        );
    }
    let orphans_act = policy.sweep.orphans == OrphanMode::Act
        && policy.scenarios.contains_key(EventKind::Orphan.as_str());
    let look_for_orphans = match policy.sweep.orphans {
        OrphanMode::Off => false,
        _ if people.is_empty() => {
            notes.push(
                "no person is known from HR events yet, so orphans were not looked for".into(),
            );
            false
        }
        _ => true,
    };
    let mut systems = Vec::new();
    let mut found = Vec::new();
    for (system, listing) in listings {
        let threshold = threshold_text(policy, system);
        let accounts = match listing {
            Ok(accounts) => accounts,
            Err(error) => {
                let (skipped, failed) = match error {
                    ConnectorError::Unsupported(what) => {
                        let kind = policy.systems.get(system).map_or("?", |c| c.kind.as_str());
                        (format!("its connector ({kind}) cannot {what}"), false)
                    }
                    other => (format!("listing its accounts failed: {other}"), true),
                };
                systems.push(SystemSweep {
                    system: system.clone(),
                    threshold,
                    skipped: Some(skipped),
                    failed,
                    ..SystemSweep::default()
                });
                continue;
            }
        };
        let mut summary = SystemSweep {
            system: system.clone(),
            accounts: accounts.len(),
            active: accounts.iter().filter(|a| a.active).count(),
            threshold: threshold.clone(),
            ..SystemSweep::default()
        };
        let cutoff = cutoff(policy, system, now);
        for account in accounts {
            let class = match cutoff {
                Some(cutoff) => classify(policy, system, account, cutoff),
                None => Class::Recent,
            };
            match class {
                Class::Disabled | Class::Unnamed => continue,
                Class::Inactive(last) => {
                    let event = event_for(system, account, last, now, &threshold);
                    summary.inactive += 1;
                    found.push(finding(
                        FindingKind::Inactive,
                        system,
                        account,
                        event,
                        inactivity_acts,
                    ));
                    continue;
                }
                Class::Exempt => {
                    summary.exempted += 1;
                    continue;
                }
                Class::NoData => summary.without_activity += 1,
                Class::Recent => {}
            }
            if !look_for_orphans {
                continue;
            }
            let departed = match owner(people, system, account, now) {
                Owner::Active(_) => continue,
                Owner::Departed(person) => Some(person),
                Owner::Unknown => None,
            };
            if is_exempt(policy, system, account) {
                summary.exempted += 1;
                continue;
            }
            summary.orphans += 1;
            let event = orphan_event(system, account, departed, now);
            found.push(finding(
                FindingKind::Orphan,
                system,
                account,
                event,
                orphans_act,
            ));
        }
        systems.push(summary);
    }
    let acting: Vec<&Finding> = found.iter().filter(|f| f.acts).collect();
    let brake = brake::check(
        policy,
        Trigger::Sweep,
        &exposures(&systems, &found),
        acting.len(),
    );
    SweepReport {
        policy_version: policy.version.clone(),
        at: now,
        orphans: policy.sweep.orphans,
        systems,
        findings: found,
        notes,
        brake,
    }
}

fn finding(
    kind: FindingKind,
    system: &str,
    account: &Account,
    event: LifecycleEvent,
    acts: bool,
) -> Finding {
    Finding {
        kind,
        system: system.to_string(),
        account_id: account.id.clone(),
        username: account.username.clone(),
        email: account.email.clone(),
        last_activity: account.last_activity,
        reason: event.reason.clone().unwrap_or_default(),
        acts,
        run_id: ids::run_id(&event.source, &event.event_id),
        event,
    }
}

/// An `orphan` event for `account` on `system`; about the departed person when one matches.
/// Its id derives from (system, account id): the same orphan found again is the same run.
fn orphan_event(
    system: &str,
    account: &Account,
    departed: Option<&PersonRecord>,
    now: DateTime<Utc>,
) -> LifecycleEvent {
    let event_hash = ids::sha256_hex(format!("orphan\0{system}\0{}", account.id).as_bytes());
    let (id, email, reason) = match departed {
        Some(person) => (
            person.person_id.clone(),
            person.email.clone(),
            format!(
                "still active, but its owner {} left on {} (per HR event {})",
                person.person_id,
                person
                    .inactive_from
                    .map(|at| at.format("%Y-%m-%d").to_string())
                    .unwrap_or_default(),
                person.event
            ),
        ),
        None => (
            person_id(system, account),
            email_of(account),
            "matches no active person known from HR events".to_string(),
        ),
    };
    LifecycleEvent {
        event_id: format!("orphan-{}", &event_hash[..32]),
        source: SOURCE.into(),
        kind: EventKind::Orphan,
        termination_type: None,
        person: Person {
            id,
            email,
            display_name: None,
            usernames: BTreeMap::from([(system.to_string(), account.username.clone())]),
            roles: Vec::new(),
            manager_email: None,
        },
        effective_at: now.fixed_offset(),
        reason: Some(reason),
        requested_by: SOURCE.into(),
        transfer: None,
        systems: vec![system.to_string()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_policy;
    use chrono::{Duration, TimeZone};
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 3, 0, 0)
            .single()
            .unwrap_or_else(|| panic!("valid time"))
    }

    fn account(id: &str, username: &str, idle: Option<Duration>) -> Account {
        Account {
            system: "crm".into(),
            id: id.into(),
            username: username.into(),
            email: Some(format!("{username}@example.com")),
            active: true,
            entitlements: Vec::new(),
            credentials: Vec::new(),
            last_activity: idle.map(|idle| now() - idle),
        }
    }

    fn round_trip(event: &LifecycleEvent) -> LifecycleEvent {
        let bytes = serde_json::to_vec(event).unwrap_or_else(|err| panic!("{err}"));
        LifecycleEvent::parse(&bytes).unwrap_or_else(|err| panic!("{err}"))
    }

    #[test]
    fn older_than_the_threshold_is_a_finding_exactly_at_it_is_not() {
        let policy = sample_policy();
        let accounts = [
            account("1", "at", Some(Duration::days(90))),
            account("2", "past", Some(Duration::days(90) + Duration::seconds(1))),
            account("3", "recent", Some(Duration::days(3))),
            account("4", "unknown", None),
        ];
        let found = findings(&policy, "crm", &accounts, now());
        assert_eq!(found.len(), 1);
        let event = &found[0];
        assert_eq!(event.kind, EventKind::Inactivity);
        assert_eq!(event.source, "sweep");
        assert_eq!(event.requested_by, "sweep");
        assert_eq!(event.person.id, "past");
        assert_eq!(event.person.email, "past@example.com");
        assert_eq!(event.username_for("crm"), Some("past"));
        assert_eq!(event.systems, ["crm"]);
        assert_eq!(event.effective_at, now().fixed_offset());
        assert_eq!(
            event.reason.as_deref(),
            Some("no activity since 2026-08-28 (threshold 90 days)")
        );
        assert_eq!(&round_trip(event), event);
    }

    #[test]
    fn a_systems_own_threshold_wins() {
        let mut policy = sample_policy();
        if let Some(crm) = policy.systems.get_mut("crm") {
            crm.inactive_after = Some(crate::policy::HumanDuration(
                std::time::Duration::from_secs(30 * 86_400),
            ));
        }
        let accounts = [account("1", "ada", Some(Duration::days(45)))];
        assert_eq!(findings(&policy, "crm", &accounts, now()).len(), 1);
        assert!(findings(&policy, "wiki", &accounts, now()).is_empty());
    }

    #[test]
    fn exempt_and_disabled_accounts_are_not_findings() {
        let policy = sample_policy();
        let long = Some(Duration::days(400));
        let mut disabled = account("1", "gone", long);
        disabled.active = false;
        let service = account("2", "svc-backup", long);
        let mut by_email = account("3", "robot", long);
        by_email.email = Some("svc-robot@example.com".into());
        let accounts = [disabled, service, by_email, account("4", "ada", long)];
        let found = findings(&policy, "crm", &accounts, now());
        let people: Vec<&str> = found.iter().map(|e| e.person.id.as_str()).collect();
        assert_eq!(people, ["ada"]);
    }

    #[test]
    fn ids_are_stable_across_sweeps_and_new_after_reactivation() {
        let policy = sample_policy();
        let dormant = account("1", "ada", Some(Duration::days(120)));
        let today = findings(&policy, "crm", std::slice::from_ref(&dormant), now());
        let tomorrow = findings(
            &policy,
            "crm",
            std::slice::from_ref(&dormant),
            now() + Duration::days(1),
        );
        assert_eq!(today[0].event_id, tomorrow[0].event_id);
        assert_eq!(
            ids::run_id(SOURCE, &today[0].event_id),
            ids::run_id(SOURCE, &tomorrow[0].event_id)
        );
        // Used again 10 days later, then dormant again: a new event.
        let mut again = dormant.clone();
        again.last_activity = dormant.last_activity.map(|at| at + Duration::days(10));
        let later = findings(&policy, "crm", &[again], now() + Duration::days(200));
        assert_ne!(later[0].event_id, today[0].event_id);
        // The same account id on another system is another account.
        let wiki = findings(&policy, "wiki", &[dormant], now());
        assert_ne!(wiki[0].event_id, today[0].event_id);
    }

    #[test]
    fn odd_usernames_and_emails_still_make_valid_events() {
        let policy = sample_policy();
        let long = Some(Duration::days(400));
        let mut spaced = account("1", "Ada Lovelace", long);
        spaced.email = None;
        let mut email_name = account("2", "bob@example.org", long);
        email_name.email = Some("not an email".into());
        let mut blank = account("3", "  ", long);
        blank.email = None;
        let found = findings(&policy, "crm", &[spaced, email_name, blank], now());
        assert_eq!(found.len(), 2);
        assert!(found[0].person.id.starts_with("account-"));
        assert_eq!(found[0].person.email, "Ada-Lovelace@unknown.invalid");
        assert_eq!(found[0].username_for("crm"), Some("Ada Lovelace"));
        assert_eq!(found[1].person.id, "bob@example.org");
        assert_eq!(found[1].person.email, "bob@example.org");
        for event in &found {
            assert_eq!(&round_trip(event), event);
        }
    }

    /// `sample_policy` with an inactivity scenario and room for 100 runs per sweep.
    fn acting_policy() -> Policy {
        let mut policy = sample_policy();
        policy.scenarios.insert(
            "inactivity".into(),
            crate::policy::Scenario {
                stages: vec![crate::plan::StageKind::Disable],
                delays: BTreeMap::new(),
                overrides: BTreeMap::new(),
                approval: false,
            },
        );
        policy.sweep.max_runs_per_sweep = 100;
        policy
    }

    fn listing(accounts: Vec<Account>) -> BTreeMap<String, Result<Vec<Account>, ConnectorError>> {
        BTreeMap::from([("crm".to_string(), Ok(accounts))])
    }

    #[test]
    fn a_thousand_accounts_forty_inactive_exemptions_respected() {
        let mut policy = acting_policy();
        policy.limits.max_percent = 5.0;
        let mut accounts: Vec<Account> = (0..1000)
            .map(|n| {
                account(
                    &n.to_string(),
                    &format!("user{n}"),
                    Some(Duration::days(n % 30)),
                )
            })
            .collect();
        for n in 0..40 {
            accounts[n * 20].last_activity = Some(now() - Duration::days(91 + n as i64));
        }
        for n in 0..5 {
            accounts[n * 20 + 1].username = format!("svc-batch{n}");
            accounts[n * 20 + 1].last_activity = Some(now() - Duration::days(365));
        }
        let report = sweep(&policy, &listing(accounts), &[], now());
        assert_eq!(report.count(FindingKind::Inactive), 40);
        assert_eq!(report.count(FindingKind::Orphan), 0);
        let names: Vec<String> = (0..40).map(|n| format!("user{}", n * 20)).collect();
        let mut found: Vec<String> = report.findings.iter().map(|f| f.username.clone()).collect();
        found.sort_by_key(|name| name[4..].parse::<usize>().unwrap_or(0));
        assert_eq!(found, names);
        let crm = &report.systems[0];
        assert_eq!((crm.accounts, crm.inactive, crm.exempted), (1000, 40, 5));
        assert_eq!(crm.threshold, "90 days");
        assert!(report.brake.is_clear(), "{:?}", report.brake);
        assert_eq!(report.run_inputs().len(), 40);
        assert_eq!(
            report.notes,
            ["no person is known from HR events yet, so orphans were not looked for"]
        );
    }

    #[test]
    fn a_sweep_over_sixty_percent_of_a_system_is_quarantined() {
        let policy = acting_policy();
        let accounts: Vec<Account> = (0..50)
            .map(|n| {
                let idle = if n < 30 { 200 } else { 1 };
                account(
                    &n.to_string(),
                    &format!("user{n}"),
                    Some(Duration::days(idle)),
                )
            })
            .collect();
        let report = sweep(&policy, &listing(accounts), &[], now());
        assert_eq!(report.count(FindingKind::Inactive), 30);
        let breaches = report.brake.breaches();
        assert_eq!(breaches.len(), 1, "{breaches:#?}");
        assert_eq!(breaches[0].limit, "limits.max_percent");
        assert_eq!(breaches[0].would, 60.0);
        assert_eq!(
            report.exposures(),
            [Exposure {
                system: "crm".into(),
                accounts: 30,
                population: Some(50)
            }]
        );
    }

    #[test]
    fn orphans_are_reported_not_acted_on_by_default() {
        let mut policy = acting_policy();
        policy
            .scenarios
            .insert("orphan".into(), policy.scenarios["inactivity"].clone());
        let mut left = crate::testing::sample_event();
        left.effective_at = (now() - Duration::days(10)).fixed_offset();
        let mut staying = crate::testing::sample_event();
        staying.kind = EventKind::Transfer;
        staying.termination_type = None;
        staying.person.id = "E2".into();
        staying.person.email = "bob@example.com".into();
        staying.person.usernames = BTreeMap::from([("crm".to_string(), "bobby".to_string())]);
        let people: Vec<PersonRecord> = [left, staying]
            .iter()
            .filter_map(PersonRecord::from_event)
            .collect();
        let recent = Some(Duration::days(1));
        let accounts = vec![
            account("1", "ada.l", recent),
            account("2", "bobby", recent),
            account("3", "stranger", None),
            account("4", "svc-build", recent),
            account("5", "dormant", Some(Duration::days(300))),
        ];
        let report = sweep(&policy, &listing(accounts.clone()), &people, now());
        let orphans: Vec<(&str, &str, bool)> = report
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::Orphan)
            .map(|f| (f.username.as_str(), f.event.person.id.as_str(), f.acts))
            .collect();
        assert_eq!(
            orphans,
            [("ada.l", "E1001", false), ("stranger", "stranger", false)]
        );
        assert!(report.findings[0]
            .reason
            .starts_with("still active, but its owner E1001 left on"));
        assert_eq!(report.count(FindingKind::Inactive), 1);
        assert_eq!(report.systems[0].exempted, 1);
        assert_eq!(report.run_inputs().len(), 1);
        for finding in &report.findings {
            assert_eq!(&round_trip(&finding.event), &finding.event);
        }
        // Opted in: orphans start runs too; off: they are not looked for.
        policy.sweep.orphans = OrphanMode::Act;
        let acting = sweep(&policy, &listing(accounts.clone()), &people, now());
        assert_eq!(acting.run_inputs().len(), 3);
        policy.sweep.orphans = OrphanMode::Off;
        let off = sweep(&policy, &listing(accounts), &people, now());
        assert_eq!(off.count(FindingKind::Orphan), 0);
    }

    #[test]
    fn an_unlisted_system_is_reported_and_without_a_scenario_nothing_acts() {
        let policy = sample_policy();
        let mut listings = listing(vec![account("1", "ada", Some(Duration::days(100)))]);
        listings.insert(
            "wiki".into(),
            Err(ConnectorError::Unsupported("list accounts".into())),
        );
        listings.insert("erp".into(), Err(ConnectorError::Transient("reset".into())));
        let report = sweep(&policy, &listings, &[], now());
        assert_eq!(report.count(FindingKind::Inactive), 1);
        assert!(report.run_inputs().is_empty());
        assert!(report.brake.is_clear());
        let skipped: Vec<(&str, Option<&str>, bool)> = report
            .systems
            .iter()
            .map(|s| (s.system.as_str(), s.skipped.as_deref(), s.failed))
            .collect();
        assert_eq!(
            skipped,
            [
                ("crm", None, false),
                (
                    "erp",
                    Some("listing its accounts failed: transient failure: reset"),
                    true
                ),
                (
                    "wiki",
                    Some("its connector (memory) cannot list accounts"),
                    false
                )
            ]
        );
        assert!(report.notes[0].contains("[scenarios.inactivity]"));
    }

    proptest! {
        #[test]
        fn every_finding_is_a_valid_event(
            username in "\\PC{1,400}",
            email in proptest::option::of("\\PC{0,40}"),
            id in "\\PC{1,80}",
        ) {
            let policy = sample_policy();
            let mut subject = account(&id, &username, Some(Duration::days(365)));
            subject.email = email;
            for event in findings(&policy, "crm", &[subject], now()) {
                prop_assert_eq!(&round_trip(&event), &event);
            }
        }
    }
}
