//! The orchestrator against the SQLite store and the in-memory directory: stage order,
//! retries, escalations, delays, duplicates, rehire, and recovery after a crash.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Duration as Days, TimeZone, Utc};
use deprov_connectors::memory::{Fault, MemoryConnector, MemoryDirectory};
use deprov_core::audit::verify_chain;
use deprov_core::plan::Action;
use deprov_core::ports::{AuditLog, Clock, RunStatus, RunStore};
use deprov_core::testing::{sample_event, sample_policy, ManualClock};
use deprov_core::{AuditKind, Connector, ConnectorError, LifecycleEvent, Policy, TaskStatus};
use deprov_local::{Engine, EngineOptions, SqliteStore};

struct Rig {
    engine: Engine,
    store: Arc<SqliteStore>,
    crm: Arc<MemoryDirectory>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn fast_policy() -> Policy {
    let mut policy = sample_policy();
    policy.retry.base_delay.0 = std::time::Duration::from_millis(5);
    policy.retry.max_delay.0 = std::time::Duration::from_millis(50);
    policy
}

fn rig_with(
    policy: Policy,
    dir: tempfile::TempDir,
    crm: Arc<MemoryDirectory>,
    clock: Arc<ManualClock>,
) -> Rig {
    let store = Arc::new(SqliteStore::open(&dir.path().join("deprov.db")).unwrap());
    let wiki = MemoryDirectory::new();
    let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
    connectors.insert(
        "crm".into(),
        Arc::new(MemoryConnector::new(Arc::clone(&crm))),
    );
    connectors.insert("wiki".into(), Arc::new(MemoryConnector::new(wiki)));
    let engine = Engine::start(
        policy,
        connectors,
        store.clone(),
        store.clone(),
        clock.clone(),
        EngineOptions::default(),
        None,
    );
    Rig {
        engine,
        store,
        crm,
        clock,
        _dir: dir,
    }
}

fn rig(policy: Policy) -> Rig {
    let crm = MemoryDirectory::new();
    crm.add_account("crm", "42", "ada.l", "ada@example.com", &["eng", "ops"]);
    crm.add_account("crm", "43", "svc-backup", "backup@example.com", &["ops"]);
    let clock = Arc::new(ManualClock::at(
        Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap(),
    ));
    rig_with(policy, tempfile::tempdir().unwrap(), crm, clock)
}

async fn chain_ok(store: &SqliteStore, run_id: &str) -> usize {
    let records = store.records(run_id).await.unwrap();
    let head = store.head(run_id).await.unwrap();
    verify_chain(run_id, &records, head.as_ref()).unwrap();
    records.len()
}

#[tokio::test]
async fn a_termination_runs_due_stages_and_waits_for_the_delayed_delete() {
    let rig = rig(fast_policy());
    let event = sample_event();
    let report = rig.engine.submit(&event).await.unwrap();
    assert_eq!(report.status, RunStatus::Waiting);
    // sessions + disable + 2 groups verified; delete waits 30 days.
    assert_eq!(report.count(TaskStatus::Verified), 4);
    let account = rig.crm.account("42").unwrap();
    assert!(!account.active && account.entitlements.is_empty());
    // The exempt service account is untouched.
    assert!(rig.crm.account("43").unwrap().active);
    assert!(report.wake_at.is_some());

    // Nothing is due yet.
    assert!(rig.engine.resume_due().await.unwrap().is_empty());
    rig.clock.advance(Days::days(31));
    let reports = rig.engine.resume_due().await.unwrap();
    assert_eq!(reports[0].status, RunStatus::Completed);
    assert!(rig.crm.account("42").is_none(), "deleted after the delay");
    assert!(chain_ok(&rig.store, &report.run_id).await >= 9);
}

#[tokio::test]
async fn throttling_is_retried_and_refusals_and_lies_are_escalated() {
    let rig = rig(fast_policy());
    let throttled = ConnectorError::Throttled {
        retry_after: Some(std::time::Duration::from_millis(20)),
        message: "429".into(),
    };
    rig.crm.inject(
        "ada.l",
        Action::RevokeSessions,
        Fault::Apply(throttled.clone()),
    );
    rig.crm.inject(
        "ada.l",
        Action::RevokeSessions,
        Fault::Apply(ConnectorError::Transient("503".into())),
    );
    rig.crm.inject(
        "ada.l",
        Action::Disable,
        Fault::Apply(ConnectorError::Permanent("HTTP 400: immutable user".into())),
    );
    rig.crm
        .inject("ada.l", Action::RemoveEntitlement, Fault::Unverified);
    let mut event = sample_event();
    event.effective_at = (rig.clock.now() - Days::days(40)).fixed_offset();
    let report = rig.engine.submit(&event).await.unwrap();
    assert_eq!(report.status, RunStatus::Escalated);
    let by_action = |action: Action| {
        report
            .outcomes
            .iter()
            .filter(|o| o.task.action == action)
            .collect::<Vec<_>>()
    };
    let sessions = by_action(Action::RevokeSessions);
    assert_eq!(
        (sessions[0].status, sessions[0].attempts),
        (TaskStatus::Verified, 3)
    );
    assert_eq!(by_action(Action::Disable)[0].status, TaskStatus::Escalated);
    assert_eq!(
        by_action(Action::RemoveEntitlement)
            .iter()
            .filter(|o| o.status == TaskStatus::Escalated)
            .count(),
        1
    );
    let records = rig.store.records(&report.run_id).await.unwrap();
    let summary = records.last().unwrap();
    assert_eq!(summary.body.detail["status"], "escalated");
    assert_eq!(
        summary.body.detail["escalations"].as_array().unwrap().len(),
        2
    );
}

#[tokio::test]
async fn retries_give_up_after_max_attempts() {
    let mut policy = fast_policy();
    policy.retry.max_attempts = 2;
    let rig = rig(policy);
    for _ in 0..5 {
        rig.crm.inject(
            "ada.l",
            Action::Disable,
            Fault::Apply(ConnectorError::Transient("503".into())),
        );
    }
    let mut event = sample_event();
    event.systems = vec!["crm".into()];
    let report = rig.engine.submit(&event).await.unwrap();
    let disable = report
        .outcomes
        .iter()
        .find(|o| o.task.action == Action::Disable)
        .unwrap();
    assert_eq!(disable.status, TaskStatus::Escalated);
    assert!(disable
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("gave up after 2 attempts"));
}

#[tokio::test]
async fn a_duplicate_delivery_starts_nothing_new() {
    let rig = rig(fast_policy());
    let event = sample_event();
    let first = rig.engine.submit(&event).await.unwrap();
    let changes = rig.crm.changes();
    let records = rig.store.records(&first.run_id).await.unwrap().len();
    let second = rig.engine.submit(&event).await.unwrap();
    assert!(second.duplicate);
    assert_eq!(second.run_id, first.run_id);
    assert_eq!(rig.crm.changes(), changes);
    assert_eq!(
        rig.store.records(&first.run_id).await.unwrap().len(),
        records
    );
}

fn rehire_event(event_id: &str) -> LifecycleEvent {
    let mut rehire: serde_json::Value = serde_json::to_value(sample_event()).unwrap();
    rehire["event_id"] = event_id.into();
    rehire["kind"] = "rehire".into();
    rehire.as_object_mut().unwrap().remove("termination_type");
    LifecycleEvent::parse(rehire.to_string().as_bytes()).unwrap()
}

fn group_names(account: &deprov_core::Account) -> Vec<String> {
    let mut names: Vec<String> = account
        .entitlements
        .iter()
        .map(|e| e.name.clone())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_rehire_before_the_delete_stage_cancels_it_and_restores_the_pre_state() {
    let rig = rig(fast_policy());
    let before = rig.crm.account("42").unwrap();
    let report = rig.engine.submit(&sample_event()).await.unwrap();
    assert_eq!(report.status, RunStatus::Waiting);
    let revoked = rig.crm.account("42").unwrap();
    assert!(!revoked.active && revoked.entitlements.is_empty());

    let stop = rig.engine.submit(&rehire_event("hr-1002")).await.unwrap();
    assert_eq!(stop.stopped_runs, vec![report.run_id.clone()]);
    assert_eq!(stop.status, RunStatus::Completed);
    let restored = rig.crm.account("42").unwrap();
    assert!(restored.active, "enabled again");
    assert_eq!(group_names(&restored), group_names(&before));
    let restore_tasks: Vec<Action> = stop.outcomes.iter().map(|o| o.task.action).collect();
    assert_eq!(
        restore_tasks,
        [
            Action::Enable,
            Action::RestoreEntitlement,
            Action::RestoreEntitlement
        ]
    );
    assert!(stop
        .outcomes
        .iter()
        .all(|o| o.status == TaskStatus::Verified && o.evidence.is_some()));
    // The plan names what cannot come back.
    let plan = stop.plan.as_ref().unwrap();
    assert!(plan
        .skipped
        .iter()
        .any(|s| s.reason.contains("sessions are not restored")));
    // The same rehire delivered again changes nothing.
    let changes = rig.crm.changes();
    let again = rig.engine.submit(&rehire_event("hr-1002")).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(rig.crm.changes(), changes);

    rig.clock.advance(Days::days(31));
    assert!(rig.engine.resume_due().await.unwrap().is_empty());
    assert!(rig.crm.account("42").is_some(), "never deleted");
    let run = rig.store.get_run(&report.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    let cancelled = rig
        .store
        .task_outcomes(&report.run_id)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| o.status == TaskStatus::Cancelled)
        .count();
    assert_eq!(cancelled, 1, "the pending delete of ada's account");
    chain_ok(&rig.store, &report.run_id).await;
    // The rehire's own trail tells the story: the runs it stopped, the restore plan, each
    // restore task with its evidence, the stage, the summary.
    chain_ok(&rig.store, &stop.run_id).await;
    let kinds: Vec<AuditKind> = rig
        .store
        .records(&stop.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.body.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            AuditKind::RunsStopped,
            AuditKind::PlanRecorded,
            AuditKind::TaskCompleted,
            AuditKind::TaskCompleted,
            AuditKind::TaskCompleted,
            AuditKind::StageCompleted,
            AuditKind::RunFinished,
        ]
    );
}

#[tokio::test]
async fn a_policy_without_restore_only_stops_and_says_so() {
    let mut policy = fast_policy();
    policy.restore.on_rehire = false;
    let rig = rig(policy);
    rig.engine.submit(&sample_event()).await.unwrap();
    let stop = rig.engine.submit(&rehire_event("hr-1003")).await.unwrap();
    assert_eq!(stop.stopped_runs.len(), 1);
    assert!(stop.outcomes.is_empty());
    assert!(!rig.crm.account("42").unwrap().active, "left disabled");
    assert!(stop
        .plan
        .unwrap()
        .skipped
        .iter()
        .any(|s| s.reason.contains("on_rehire = false")));
}

#[tokio::test]
async fn a_crash_between_apply_and_record_never_applies_twice() {
    let dir = tempfile::tempdir().unwrap();
    let crm = MemoryDirectory::new();
    crm.add_account("crm", "42", "ada.l", "ada@example.com", &["eng"]);
    let clock = Arc::new(ManualClock::at(
        Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap(),
    ));
    let mut event = sample_event();
    event.systems = vec!["crm".into()];
    let path = dir.path().to_path_buf();
    let rig = rig_with(fast_policy(), dir, Arc::clone(&crm), Arc::clone(&clock));
    let plan = rig.engine.plan(&event).await.unwrap();
    // Simulate a worker that started the disable task and applied it, then died.
    let disable = plan
        .tasks()
        .find(|t| t.action == Action::Disable)
        .unwrap()
        .clone();
    rig.store.start_task(&disable).await.unwrap();
    MemoryConnector::new(Arc::clone(&crm))
        .apply(&disable)
        .await
        .unwrap();
    let changes_before = crm.changes();
    let report = rig.engine.submit(&event).await.unwrap();
    let outcome = report
        .outcomes
        .iter()
        .find(|o| o.task.task_id == disable.task_id)
        .unwrap();
    assert_eq!(outcome.status, TaskStatus::Verified);
    assert_eq!(outcome.attempts, 2);
    // sessions and the group changed; the disable was proven by reading back, not re-applied.
    assert_eq!(crm.changes(), changes_before + 2);
    assert!(path.join("deprov.db").exists());
}

fn approval_policy() -> Policy {
    let mut policy = fast_policy();
    policy.systems.get_mut("crm").unwrap().approval = true;
    policy
}

#[tokio::test]
async fn a_run_held_for_approval_changes_nothing_until_approved() {
    let rig = rig(approval_policy());
    let held = rig.engine.submit(&sample_event()).await.unwrap();
    assert_eq!(held.status, RunStatus::AwaitingApproval);
    assert!(held.outcomes.is_empty());
    assert!(held.plan.as_ref().unwrap().approval[0].contains("crm"));
    assert_eq!(rig.crm.changes(), 0);
    // Resuming before the deadline does nothing either.
    rig.clock.advance(Days::hours(1));
    assert!(rig.engine.resume_due().await.unwrap().is_empty());
    assert_eq!(rig.crm.changes(), 0);

    // A decision needs a name and a reason.
    assert!(rig
        .engine
        .decide(&held.run_id, true, "", "ok")
        .await
        .is_err());
    let approved = rig
        .engine
        .decide(&held.run_id, true, "it-lead@example.com", "ticket IT-42")
        .await
        .unwrap();
    assert_eq!(
        approved.status,
        RunStatus::Waiting,
        "the delete stays delayed"
    );
    assert!(!rig.crm.account("42").unwrap().active);
    // A second decision is refused: the run is no longer awaiting one.
    assert!(rig
        .engine
        .decide(&held.run_id, false, "someone", "too late")
        .await
        .is_err());
    chain_ok(&rig.store, &held.run_id).await;
    let kinds: Vec<AuditKind> = rig
        .store
        .records(&held.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.body.kind)
        .collect();
    assert_eq!(
        &kinds[..3],
        [
            AuditKind::PlanRecorded,
            AuditKind::ApprovalRequested,
            AuditKind::ApprovalDecided
        ]
    );
}

#[tokio::test]
async fn a_denied_run_is_cancelled_and_an_unanswered_one_escalates_at_the_deadline() {
    let rig = rig(approval_policy());
    let denied = rig.engine.submit(&sample_event()).await.unwrap();
    let report = rig
        .engine
        .decide(&denied.run_id, false, "ciso@example.com", "wrong person")
        .await
        .unwrap();
    assert_eq!(report.status, RunStatus::Cancelled);
    assert!(report
        .outcomes
        .iter()
        .all(|o| o.status == TaskStatus::Cancelled));
    assert_eq!(rig.crm.changes(), 0);
    chain_ok(&rig.store, &denied.run_id).await;

    let mut other = sample_event();
    other.event_id = "hr-unanswered".into();
    let held = rig.engine.submit(&other).await.unwrap();
    rig.clock.advance(Days::hours(73));
    let reports = rig.engine.resume_due().await.unwrap();
    let timed_out = reports.iter().find(|r| r.run_id == held.run_id).unwrap();
    assert_eq!(timed_out.status, RunStatus::Escalated);
    assert_eq!(rig.crm.changes(), 0, "nothing changed without approval");
    let kinds: Vec<AuditKind> = rig
        .store
        .records(&held.run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.body.kind)
        .collect();
    assert!(kinds.contains(&AuditKind::ApprovalTimedOut));
    assert_eq!(kinds.last(), Some(&AuditKind::RunFinished));
    chain_ok(&rig.store, &held.run_id).await;
}

/// The demo connector, declaring batches and counting the calls it gets.
struct Batching {
    inner: MemoryConnector,
    discover_calls: std::sync::Mutex<Vec<usize>>,
    apply_calls: std::sync::Mutex<Vec<usize>>,
}

#[async_trait::async_trait]
impl Connector for Batching {
    fn supports(&self) -> &[deprov_core::plan::StageKind] {
        self.inner.supports()
    }
    fn max_batch(&self) -> usize {
        8
    }
    async fn discover(
        &self,
        person: &deprov_core::PersonQuery,
    ) -> Result<Vec<deprov_core::Account>, ConnectorError> {
        self.inner.discover(person).await
    }
    async fn discover_batch(
        &self,
        people: &[deprov_core::PersonQuery],
    ) -> Vec<Result<Vec<deprov_core::Account>, ConnectorError>> {
        self.discover_calls.lock().unwrap().push(people.len());
        let mut found = Vec::new();
        for person in people {
            found.push(self.inner.discover(person).await);
        }
        found
    }
    async fn apply(
        &self,
        task: &deprov_core::plan::Task,
    ) -> Result<deprov_core::Applied, ConnectorError> {
        self.inner.apply(task).await
    }
    async fn apply_batch(
        &self,
        tasks: &[deprov_core::plan::Task],
    ) -> Vec<Result<deprov_core::Applied, ConnectorError>> {
        self.apply_calls.lock().unwrap().push(tasks.len());
        let mut applied = Vec::new();
        for task in tasks {
            applied.push(self.inner.apply(task).await);
        }
        applied
    }
    async fn verify(
        &self,
        task: &deprov_core::plan::Task,
    ) -> Result<deprov_core::Evidence, ConnectorError> {
        self.inner.verify(task).await
    }
}

fn termination_of(index: usize) -> LifecycleEvent {
    let mut event: serde_json::Value = serde_json::to_value(sample_event()).unwrap();
    event["event_id"] = format!("bulk-{index}").into();
    event["person"]["id"] = format!("E{index:04}").into();
    event["person"]["email"] = format!("p{index}@example.com").into();
    event["person"]["usernames"]["crm"] = format!("p{index}").into();
    LifecycleEvent::parse(event.to_string().as_bytes()).unwrap()
}

#[tokio::test]
async fn many_events_at_once_run_together_and_answer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("deprov.db")).unwrap());
    let crm = MemoryDirectory::new();
    for index in 0..40 {
        crm.add_account(
            "crm",
            &format!("u{index}"),
            &format!("p{index}"),
            &format!("p{index}@example.com"),
            &["eng"],
        );
    }
    let batching = Arc::new(Batching {
        inner: MemoryConnector::new(Arc::clone(&crm)),
        discover_calls: std::sync::Mutex::new(Vec::new()),
        apply_calls: std::sync::Mutex::new(Vec::new()),
    });
    let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
    connectors.insert("crm".into(), batching.clone());
    connectors.insert(
        "wiki".into(),
        Arc::new(MemoryConnector::new(MemoryDirectory::new())),
    );
    let clock = Arc::new(ManualClock::at(
        Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap(),
    ));
    let engine = Engine::start(
        fast_policy(),
        connectors,
        store.clone(),
        store.clone(),
        clock,
        EngineOptions::default(),
        None,
    );

    // 30 terminations, a redelivery of the third, one naming a system the policy does not
    // have, a rehire of person 5, then a termination after it.
    let mut events: Vec<LifecycleEvent> = (0..30).map(termination_of).collect();
    events.push(termination_of(2));
    let mut unknown: serde_json::Value = serde_json::to_value(termination_of(31)).unwrap();
    unknown["systems"] = serde_json::json!(["payroll"]);
    events.push(LifecycleEvent::parse(unknown.to_string().as_bytes()).unwrap());
    let mut rehire: serde_json::Value = serde_json::to_value(termination_of(5)).unwrap();
    rehire["event_id"] = "bulk-rehire-5".into();
    rehire["kind"] = "rehire".into();
    rehire.as_object_mut().unwrap().remove("termination_type");
    events.push(LifecycleEvent::parse(rehire.to_string().as_bytes()).unwrap());
    events.push(termination_of(32));

    let reports = engine.submit_many(&events).await.unwrap();
    assert_eq!(reports.len(), events.len());
    for (index, report) in reports.iter().take(30).enumerate() {
        assert_eq!(
            report.run_id,
            deprov_core::ids::run_id("workday", &format!("bulk-{index}"))
        );
        // sessions, disable and the group verified; the delete waits 30 days.
        assert_eq!(report.status, RunStatus::Waiting, "run of person {index}");
        assert_eq!(report.count(TaskStatus::Verified), 3);
        assert!(!report.duplicate);
        chain_ok(&store, &report.run_id).await;
    }
    for index in (0..30).filter(|index| *index != 5) {
        let account = crm.account(&format!("u{index}")).unwrap();
        assert!(!account.active && account.entitlements.is_empty());
    }
    // The redelivery answers with the run the first delivery started.
    assert!(reports[30].duplicate);
    assert_eq!(reports[30].run_id, reports[2].run_id);
    // The unknown system is refused, in the trail, and changes nothing.
    assert_eq!(reports[31].status, RunStatus::Refused);
    assert!(reports[31].refused.as_ref().unwrap().contains("payroll"));
    assert_eq!(chain_ok(&store, &reports[31].run_id).await, 1);
    assert!(crm.account("u31").unwrap().active);
    // The rehire came after person 5's termination: it stopped that run and restored.
    assert_eq!(reports[32].stopped_runs, vec![reports[5].run_id.clone()]);
    assert_eq!(reports[32].status, RunStatus::Completed);
    assert!(crm.account("u5").unwrap().active);
    assert_eq!(
        store.run_status(&reports[5].run_id).await.unwrap(),
        Some(RunStatus::Cancelled)
    );
    // The termination after the rehire ran too.
    assert_eq!(reports[33].status, RunStatus::Waiting);
    assert!(!crm.account("u32").unwrap().active);

    // The batching system was asked for many people and tasks per call.
    let discover_calls = batching.discover_calls.lock().unwrap().clone();
    let apply_calls = batching.apply_calls.lock().unwrap().clone();
    assert!(discover_calls.iter().all(|n| (1..=8).contains(n)));
    assert!(discover_calls.iter().any(|n| *n > 1), "{discover_calls:?}");
    assert!(apply_calls.iter().all(|n| (1..=8).contains(n)));
    assert!(apply_calls.iter().any(|n| *n > 1), "{apply_calls:?}");
    assert!(apply_calls.len() < 3 * 32, "{apply_calls:?}");
}
