//! The people HR has told deprov about (`PERSON#<id>` in the runs store): each person as the
//! latest HR event described them, and whether they are still active. Orphan detection asks
//! it which accounts belong to nobody active.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::connector::Account;
use crate::event::{EventKind, LifecycleEvent};

/// A person as the latest HR event described them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonRecord {
    pub person_id: String,
    pub email: String,
    /// system → username, as HR gave them.
    #[serde(default)]
    pub usernames: BTreeMap<String, String>,
    /// From this time on the person is gone (their termination's effective time); absent
    /// while they are employed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_from: Option<DateTime<Utc>>,
    /// The effective time of the event this record reflects: an older event arriving late
    /// does not overwrite a newer one.
    pub as_of: DateTime<Utc>,
    /// The event this record reflects: `<source>/<event_id>` and its kind.
    pub event: String,
    pub kind: EventKind,
}

impl PersonRecord {
    /// What an HR event says about its person; `None` for events that do not come from HR
    /// (sweep findings, manual runs).
    pub fn from_event(event: &LifecycleEvent) -> Option<PersonRecord> {
        let effective = event.effective_at.with_timezone(&Utc);
        let inactive_from = match event.kind {
            EventKind::Termination | EventKind::ContractEnd => Some(effective),
            // Still employed: moving, on leave, back, or a termination called off.
            EventKind::Transfer
            | EventKind::LeaveOfAbsence
            | EventKind::Rehire
            | EventKind::Cancel => None,
            EventKind::Inactivity | EventKind::Orphan | EventKind::Manual => return None,
        };
        Some(PersonRecord {
            person_id: event.person.id.clone(),
            email: event.person.email.clone(),
            usernames: event.person.usernames.clone(),
            inactive_from,
            as_of: effective,
            event: format!("{}/{}", event.source, event.event_id),
            kind: event.kind,
        })
    }

    /// Whether the person is employed at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.inactive_from.is_none_or(|from| now < from)
    }

    /// Whether `account` on `system` is this person's: the username HR gave for the system,
    /// or the person's email as the account's email or username (case-insensitive).
    pub fn owns(&self, system: &str, account: &Account) -> bool {
        let same = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b.trim());
        self.usernames
            .get(system)
            .is_some_and(|name| same(name, &account.username))
            || same(&self.email, &account.username)
            || account
                .email
                .as_deref()
                .is_some_and(|email| same(&self.email, email))
    }
}

/// The owner an account has among `people`, for orphan detection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner<'p> {
    /// An active person owns it.
    Active(&'p PersonRecord),
    /// Only people who have left match it.
    Departed(&'p PersonRecord),
    /// Nobody known from HR matches it.
    Unknown,
}

/// Who owns `account` on `system` at `now`. An active owner wins over a departed one
/// (a rehire's account, an email reused by a newcomer).
pub fn owner<'p>(
    people: &'p [PersonRecord],
    system: &str,
    account: &Account,
    now: DateTime<Utc>,
) -> Owner<'p> {
    let mut departed = None;
    for person in people.iter().filter(|person| person.owns(system, account)) {
        if person.is_active(now) {
            return Owner::Active(person);
        }
        if departed.is_none() {
            departed = Some(person);
        }
    }
    departed.map_or(Owner::Unknown, Owner::Departed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_event;
    use chrono::Duration;

    fn account(username: &str, email: Option<&str>) -> Account {
        Account {
            system: "crm".into(),
            id: username.into(),
            username: username.into(),
            email: email.map(str::to_string),
            active: true,
            entitlements: Vec::new(),
            credentials: Vec::new(),
            last_activity: None,
        }
    }

    #[test]
    fn a_termination_marks_the_person_inactive_from_its_effective_time() {
        let event = sample_event();
        let record = PersonRecord::from_event(&event).unwrap();
        let effective = event.effective_at.with_timezone(&Utc);
        assert_eq!(record.inactive_from, Some(effective));
        assert!(record.is_active(effective - Duration::seconds(1)));
        assert!(!record.is_active(effective));
        assert_eq!(record.event, "workday/hr-1001");
        let mut rehire = event.clone();
        rehire.kind = EventKind::Rehire;
        rehire.termination_type = None;
        assert!(PersonRecord::from_event(&rehire)
            .unwrap()
            .is_active(effective));
        let mut sweep = event;
        sweep.kind = EventKind::Inactivity;
        sweep.termination_type = None;
        assert_eq!(PersonRecord::from_event(&sweep), None);
    }

    #[test]
    fn accounts_match_by_system_username_or_email() {
        let event = sample_event();
        let mut gone = PersonRecord::from_event(&event).unwrap();
        let now = gone.as_of + Duration::days(1);
        let people = vec![gone.clone()];
        assert!(matches!(
            owner(&people, "crm", &account("ADA.L", None), now),
            Owner::Departed(_)
        ));
        assert!(matches!(
            owner(&people, "wiki", &account("ada.l", None), now),
            Owner::Unknown
        ));
        assert!(matches!(
            owner(
                &people,
                "wiki",
                &account("al", Some("Ada@Example.com")),
                now
            ),
            Owner::Departed(_)
        ));
        gone.inactive_from = None;
        let back = vec![people[0].clone(), gone];
        assert!(matches!(
            owner(&back, "crm", &account("ada.l", None), now),
            Owner::Active(_)
        ));
    }
}
