//! In-memory fakes of the ports and sample inputs, shared by every crate's unit tests
//! (feature `testing`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::{AuditEntry, AuditRecord, ChainHead};
use crate::event::LifecycleEvent;
use crate::people::PersonRecord;
use crate::plan::Task;
use crate::policy::Policy;
use crate::ports::{
    Clock, Decided, EventClaim, RunRecord, RunStore, Secret, SecretError, SecretSource, StoreError,
    TaskStart,
};
use crate::quarantine::{Decision, Quarantine, QuarantineStatus};
use crate::task::TaskOutcome;

/// A termination of `E1001` (ada@example.com), effective 2026-11-25 17:00 +01:00.
pub fn sample_event() -> LifecycleEvent {
    let json = r#"{
        "event_id": "hr-1001", "source": "workday", "kind": "termination",
        "termination_type": "involuntary",
        "person": {"id": "E1001", "email": "ada@example.com", "roles": ["engineer"],
                   "usernames": {"crm": "ada.l"}, "manager_email": "grace@example.com"},
        "effective_at": "2026-11-25T17:00:00+01:00", "requested_by": "hr-bot"
    }"#;
    match LifecycleEvent::parse(json.as_bytes()) {
        Ok(event) => event,
        Err(err) => panic!("sample event is invalid: {err}"),
    }
}

/// Two `memory` systems, a termination that deletes after 30 days, two roles, one exemption.
pub fn sample_policy() -> Policy {
    let text = r#"
version = "test-1"
[systems.crm]
kind = "memory"
concurrency = 4
[systems.wiki]
kind = "memory"
[scenarios.termination]
stages = ["sessions", "disable", "entitlements", "delete"]
delays = { delete = "30d" }
[scenarios.transfer]
stages = ["entitlements"]
[roles.engineer]
crm = ["eng", "ops"]
[roles.manager]
crm = ["ops", "all-staff"]
[[exemptions]]
account = "svc-*"
reason = "service accounts"
"#;
    match Policy::parse(text) {
        Ok(policy) => policy,
        Err(err) => panic!("sample policy is invalid: {err}"),
    }
}

#[derive(Default)]
struct Tables {
    events: HashMap<(String, String), String>,
    runs: BTreeMap<String, RunRecord>,
    started: HashMap<String, u32>,
    outcomes: BTreeMap<String, TaskOutcome>,
    audit: BTreeMap<String, Vec<AuditRecord>>,
    people: BTreeMap<String, PersonRecord>,
    quarantines: BTreeMap<String, Quarantine>,
}

/// `RunStore` and `AuditLog` in memory, with the same first-wins and idempotent-append
/// rules as the real stores.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    fn tables(&self) -> Result<std::sync::MutexGuard<'_, Tables>, StoreError> {
        self.tables
            .lock()
            .map_err(|_| StoreError::Backend("memory store lock poisoned".into()))
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn claim_event(
        &self,
        source: &str,
        event_id: &str,
        run_id: &str,
    ) -> Result<EventClaim, StoreError> {
        let mut tables = self.tables()?;
        let key = (source.to_string(), event_id.to_string());
        Ok(match tables.events.get(&key) {
            Some(existing) => EventClaim::Existing(existing.clone()),
            None => {
                tables.events.insert(key, run_id.to_string());
                EventClaim::New
            }
        })
    }

    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let mut tables = self.tables()?;
        let stored = tables
            .runs
            .entry(run.run_id.clone())
            .or_insert_with(|| run.clone());
        // The plan is immutable once stored; only the state moves.
        stored.status = run.status;
        stored.next_stage = run.next_stage;
        stored.wake_at = run.wake_at;
        stored.updated_at = run.updated_at;
        Ok(())
    }

    async fn run_status(
        &self,
        run_id: &str,
    ) -> Result<Option<crate::ports::RunStatus>, StoreError> {
        Ok(self.tables()?.runs.get(run_id).map(|run| run.status))
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.tables()?.runs.get(run_id).cloned())
    }

    async fn due_runs(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        Ok(self
            .tables()?
            .runs
            .values()
            .filter(|run| run.status.is_due(run.wake_at, now))
            .map(|run| run.run_id.clone())
            .collect())
    }

    async fn open_runs_for(&self, person_id: &str) -> Result<Vec<RunRecord>, StoreError> {
        Ok(self
            .tables()?
            .runs
            .values()
            .filter(|run| run.person_id == person_id && !run.status.is_finished())
            .cloned()
            .collect())
    }

    async fn start_task(&self, task: &Task) -> Result<TaskStart, StoreError> {
        let mut tables = self.tables()?;
        if let Some(outcome) = tables.outcomes.get(&task.task_id) {
            return Ok(TaskStart::Finished(Box::new(outcome.clone())));
        }
        let attempts = tables.started.entry(task.task_id.clone()).or_insert(0);
        *attempts += 1;
        Ok(if *attempts == 1 {
            TaskStart::Fresh
        } else {
            TaskStart::Interrupted {
                attempts: *attempts - 1,
            }
        })
    }

    async fn complete_task(&self, outcome: &TaskOutcome) -> Result<TaskOutcome, StoreError> {
        let mut tables = self.tables()?;
        Ok(tables
            .outcomes
            .entry(outcome.task.task_id.clone())
            .or_insert_with(|| outcome.clone())
            .clone())
    }

    async fn task_outcomes(&self, run_id: &str) -> Result<Vec<TaskOutcome>, StoreError> {
        Ok(self
            .tables()?
            .outcomes
            .values()
            .filter(|outcome| outcome.task.run_id == run_id)
            .cloned()
            .collect())
    }

    async fn record_person(&self, person: &PersonRecord) -> Result<(), StoreError> {
        let mut tables = self.tables()?;
        match tables.people.get(&person.person_id) {
            Some(stored) if stored.as_of > person.as_of => {}
            _ => {
                tables
                    .people
                    .insert(person.person_id.clone(), person.clone());
            }
        }
        Ok(())
    }

    async fn people(&self) -> Result<Vec<PersonRecord>, StoreError> {
        Ok(self.tables()?.people.values().cloned().collect())
    }

    async fn put_quarantine(&self, quarantine: &Quarantine) -> Result<Quarantine, StoreError> {
        Ok(self
            .tables()?
            .quarantines
            .entry(quarantine.quarantine_id.clone())
            .or_insert_with(|| quarantine.clone())
            .clone())
    }

    async fn get_quarantine(&self, id: &str) -> Result<Option<Quarantine>, StoreError> {
        Ok(self.tables()?.quarantines.get(id).cloned())
    }

    async fn quarantines(&self) -> Result<Vec<Quarantine>, StoreError> {
        let mut all: Vec<Quarantine> = self.tables()?.quarantines.values().cloned().collect();
        all.sort_by_key(|q| q.created_at);
        Ok(all)
    }

    async fn decide_quarantine(
        &self,
        id: &str,
        status: QuarantineStatus,
        decision: &Decision,
    ) -> Result<Decided, StoreError> {
        let mut tables = self.tables()?;
        let Some(stored) = tables.quarantines.get_mut(id) else {
            return Ok(Decided::Unknown);
        };
        if stored.status != QuarantineStatus::Pending {
            return Ok(Decided::Before(Box::new(stored.clone())));
        }
        stored.status = status;
        stored.decision = Some(decision.clone());
        Ok(Decided::Now(Box::new(stored.clone())))
    }
}

#[async_trait]
impl crate::ports::AuditLog for MemoryStore {
    async fn append(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        let mut tables = self.tables()?;
        let chain = tables.audit.entry(entry.run_id.clone()).or_default();
        if let Some(existing) = chain.iter().find(|record| record.body.key == entry.key) {
            return Ok(existing.clone());
        }
        let head = chain.last().map(AuditRecord::head);
        let record = AuditRecord::chain(entry, head.as_ref(), Utc::now());
        chain.push(record.clone());
        Ok(record)
    }

    async fn records(&self, run_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self
            .tables()?
            .audit
            .get(run_id)
            .cloned()
            .unwrap_or_default())
    }

    async fn head(&self, run_id: &str) -> Result<Option<ChainHead>, StoreError> {
        Ok(self
            .tables()?
            .audit
            .get(run_id)
            .and_then(|chain| chain.last().map(AuditRecord::head)))
    }

    async fn run_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.tables()?.audit.keys().cloned().collect())
    }

    async fn by_subject(&self, subject: &str) -> Result<Vec<AuditRecord>, StoreError> {
        Ok(self
            .tables()?
            .audit
            .values()
            .flatten()
            .filter(|record| record.body.subject == subject)
            .cloned()
            .collect())
    }
}

/// Secrets from a map.
#[derive(Default)]
pub struct MemorySecrets {
    secrets: BTreeMap<String, BTreeMap<String, String>>,
}

impl MemorySecrets {
    pub fn with(mut self, name: &str, field: &str, value: &str) -> Self {
        self.secrets
            .entry(name.to_string())
            .or_default()
            .insert(field.to_string(), value.to_string());
        self
    }
}

#[async_trait]
impl SecretSource for MemorySecrets {
    async fn secret(&self, name: &str) -> Result<Secret, SecretError> {
        self.secrets
            .get(name)
            .map(|fields| Secret::new(name, fields.clone()))
            .ok_or_else(|| SecretError::NotFound(name.to_string()))
    }
}

/// A clock the test moves.
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    pub fn at(now: DateTime<Utc>) -> Self {
        ManualClock {
            now: Mutex::new(now),
        }
    }

    pub fn advance(&self, by: chrono::Duration) {
        if let Ok(mut now) = self.now.lock() {
            *now += by;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        self.now
            .lock()
            .map(|now| *now)
            .unwrap_or_else(|_| Utc::now())
    }
}

/// A policy source holding policies in memory; the first one given is active.
#[derive(Clone)]
pub struct MemoryPolicies {
    active: Policy,
    versions: BTreeMap<String, Policy>,
}

impl MemoryPolicies {
    pub fn new(active: Policy) -> MemoryPolicies {
        let mut versions = BTreeMap::new();
        versions.insert(active.version.clone(), active.clone());
        MemoryPolicies { active, versions }
    }
}

#[async_trait]
impl crate::ports::PolicySource for MemoryPolicies {
    async fn active(&self) -> Result<Policy, StoreError> {
        Ok(self.active.clone())
    }

    async fn version(&self, version: &str) -> Result<Policy, StoreError> {
        self.versions
            .get(version)
            .cloned()
            .ok_or_else(|| StoreError::Corrupt(format!("policy version \"{version}\" is unknown")))
    }
}
