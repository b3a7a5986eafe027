//! The daily sweep's rules: which of a system's accounts are inactive — each one an
//! `inactivity` event that starts one run — and the blast-radius limit on how many runs
//! one sweep may start.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::connector::Account;
use crate::event::{looks_like_email, EventKind, LifecycleEvent, Person};
use crate::ids;
use crate::policy::Policy;
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
    let threshold = policy.inactive_after(system);
    // A threshold beyond chrono's range finds nobody.
    let Some(cutoff) = chrono::Duration::from_std(threshold)
        .ok()
        .and_then(|threshold| now.checked_sub_signed(threshold))
    else {
        return Vec::new();
    };
    let threshold_text = match threshold.as_secs() {
        secs if secs % 86_400 == 0 => format!("{} days", secs / 86_400),
        _ => crate::duration::format(threshold),
    };
    accounts
        .iter()
        .filter(|account| account.active)
        .filter(|account| !account.username.trim().is_empty() && account.username.len() <= MAX_NAME)
        .filter_map(|account| {
            let last = account.last_activity.filter(|last| *last < cutoff)?;
            if policy
                .exemption_for(system, &account.username, account.email.as_deref())
                .is_some()
            {
                return None;
            }
            Some(event_for(system, account, last, now, &threshold_text))
        })
        .collect()
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

/// A sweep found more inactive accounts than `[sweep] max_runs_per_sweep` allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the sweep found {found} inactive accounts ({}), more than [sweep] max_runs_per_sweep = {limit} \
     allows, and started none of their runs: a connector reporting wrong activity times or a \
     wrong clock would otherwise disable everyone. Check those systems' last-activity data; if \
     the findings are right, raise max_runs_per_sweep in the policy for one sweep",
    render(.by_system)
)]
pub struct TooManyFindings {
    pub found: usize,
    pub limit: u32,
    /// Findings per system.
    pub by_system: BTreeMap<String, usize>,
}

fn render(by_system: &BTreeMap<String, usize>) -> String {
    by_system
        .iter()
        .map(|(system, count)| format!("{system}: {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses a sweep whose findings exceed the policy's blast radius.
pub fn check_blast_radius(
    policy: &Policy,
    findings: &[LifecycleEvent],
) -> Result<(), TooManyFindings> {
    let limit = policy.sweep.max_runs_per_sweep;
    if findings.len() <= limit as usize {
        return Ok(());
    }
    let mut by_system = BTreeMap::new();
    for event in findings {
        for system in &event.systems {
            *by_system.entry(system.clone()).or_insert(0) += 1;
        }
    }
    Err(TooManyFindings {
        found: findings.len(),
        limit,
        by_system,
    })
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

    #[test]
    fn the_blast_radius_names_the_count_and_the_systems() {
        let policy = sample_policy();
        let accounts: Vec<Account> = (0..26)
            .map(|n| {
                account(
                    &n.to_string(),
                    &format!("user{n}"),
                    Some(Duration::days(100)),
                )
            })
            .collect();
        let found = findings(&policy, "crm", &accounts, now());
        assert_eq!(found.len(), 26);
        assert!(check_blast_radius(&policy, &found[..25]).is_ok());
        let err = check_blast_radius(&policy, &found).unwrap_err();
        assert_eq!((err.found, err.limit), (26, 25));
        let message = err.to_string();
        assert!(
            message.contains("found 26 inactive accounts (crm: 26)"),
            "{message}"
        );
        assert!(message.contains("max_runs_per_sweep = 25"), "{message}");
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
