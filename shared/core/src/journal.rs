//! What each step of a run writes to the audit trail. One definition, used by the local
//! orchestrator and by the audit function on AWS, so both trails read the same.

use serde_json::json;

use crate::audit::{AuditEntry, AuditKind};
use crate::event::LifecycleEvent;
use crate::flow::RunSummary;
use crate::plan::{Plan, StageKind};
use crate::ports::RunStatus;
use crate::task::{StageRecord, TaskOutcome, TaskStatus};

fn run_entry(
    run_id: &str,
    subject: &str,
    key: String,
    kind: AuditKind,
    detail: serde_json::Value,
) -> AuditEntry {
    AuditEntry {
        run_id: run_id.to_string(),
        key,
        kind,
        subject: subject.to_string(),
        system: None,
        task_id: None,
        detail,
    }
}

/// The plan, with the policy version and the accounts' pre-state.
pub fn plan_recorded(plan: &Plan) -> AuditEntry {
    run_entry(
        &plan.run_id,
        &plan.event.person.id,
        "plan".into(),
        AuditKind::PlanRecorded,
        serde_json::to_value(plan).unwrap_or_default(),
    )
}

/// The planner refused the run; nothing ran.
pub fn plan_refused(
    run_id: &str,
    event: &LifecycleEvent,
    reason: &str,
    policy_version: &str,
) -> AuditEntry {
    run_entry(
        run_id,
        &event.person.id,
        "plan:refused".into(),
        AuditKind::PlanRefused,
        json!({"event": event, "reason": reason, "policy_version": policy_version}),
    )
}

/// A stage waits for its `not_before`.
pub fn stage_deferred(
    run_id: &str,
    subject: &str,
    stage: StageKind,
    not_before: chrono::DateTime<chrono::FixedOffset>,
    tasks: usize,
) -> AuditEntry {
    run_entry(
        run_id,
        subject,
        format!("stage:{}:deferred", stage.as_str()),
        AuditKind::StageDeferred,
        json!({"stage": stage, "not_before": not_before, "tasks": tasks}),
    )
}

/// A stage's tally.
pub fn stage_completed(record: &StageRecord, subject: &str) -> AuditEntry {
    run_entry(
        &record.run_id,
        subject,
        format!("stage:{}", record.stage.as_str()),
        AuditKind::StageCompleted,
        serde_json::to_value(record).unwrap_or_default(),
    )
}

/// The run's summary: completed only if every task verified and every system was
/// reachable; everything else is listed as an escalation.
pub fn run_finished(plan: &Plan, outcomes: &[TaskOutcome]) -> (RunSummary, AuditEntry) {
    let escalations: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status != TaskStatus::Verified)
        .map(|o| json!({"task_id": o.task.task_id, "system": o.task.system, "action": o.task.action, "account": o.task.account.username, "status": o.status, "error": o.error}))
        .collect();
    // A task of the plan without any outcome is unverified work too.
    let missing: Vec<_> = plan
        .tasks()
        .filter(|task| !outcomes.iter().any(|o| o.task.task_id == task.task_id))
        .map(|task| json!({"task_id": task.task_id, "system": task.system, "action": task.action, "account": task.account.username, "status": "missing", "error": null}))
        .collect();
    let escalations: Vec<_> = escalations.into_iter().chain(missing).collect();
    let status = if escalations.is_empty() && plan.unreachable.is_empty() {
        RunStatus::Completed
    } else {
        RunStatus::Escalated
    };
    let verified = outcomes
        .iter()
        .filter(|o| o.status == TaskStatus::Verified)
        .count();
    let entry = run_entry(
        &plan.run_id,
        &plan.event.person.id,
        "run:finished".into(),
        AuditKind::RunFinished,
        json!({"status": status, "tasks": plan.task_count(), "verified": verified, "escalations": escalations, "unreachable": plan.unreachable}),
    );
    let summary = RunSummary {
        run_id: plan.run_id.clone(),
        status,
        tasks: plan.task_count(),
        verified,
        escalations,
    };
    (summary, entry)
}

/// A rehire or cancel stopped this run's pending stages.
pub fn run_cancelled(
    run_id: &str,
    subject: &str,
    by_run: &str,
    event: &LifecycleEvent,
    reason: &str,
) -> AuditEntry {
    run_entry(
        run_id,
        subject,
        "run:cancelled".into(),
        AuditKind::RunCancelled,
        json!({"by_run": by_run, "event": event, "reason": reason}),
    )
}

/// The run of a rehire or cancel event: which runs it stopped.
pub fn runs_stopped(run_id: &str, event: &LifecycleEvent, stopped: &[String]) -> AuditEntry {
    run_entry(
        run_id,
        &event.person.id,
        "run:finished".into(),
        AuditKind::RunFinished,
        json!({"event": event, "stopped_runs": stopped}),
    )
}

/// A future-dated run's schedule was removed before it started: moved to a newer date by
/// another run, or cancelled by a rehire or cancel. The run never ran; this is its trail.
pub fn schedule_removed(
    run_id: &str,
    subject: &str,
    start_at: chrono::DateTime<chrono::FixedOffset>,
    reason: &str,
) -> AuditEntry {
    run_entry(
        run_id,
        subject,
        "schedule:removed".into(),
        AuditKind::RunCancelled,
        json!({"schedule": "removed", "start_at": start_at, "reason": reason}),
    )
}
