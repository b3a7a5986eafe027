//! What each step of a run writes to the audit trail. One definition, used by the local
//! orchestrator and by the audit function on AWS, so both trails read the same.

use serde_json::json;

use crate::audit::{AuditEntry, AuditKind};
use crate::event::LifecycleEvent;
use crate::flow::RunSummary;
use crate::plan::{Plan, StageKind};
use crate::ports::RunStatus;
use crate::quarantine::{Quarantine, QuarantineStatus};
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
        "runs:stopped".into(),
        AuditKind::RunsStopped,
        json!({"event": event, "stopped_runs": stopped}),
    )
}

/// The run waits for approval until `until`.
pub fn approval_requested(plan: &Plan, until: chrono::DateTime<chrono::Utc>) -> AuditEntry {
    run_entry(
        &plan.run_id,
        &plan.event.person.id,
        "approval:requested".into(),
        AuditKind::ApprovalRequested,
        json!({"reasons": plan.approval, "until": until, "tasks": plan.task_count()}),
    )
}

/// A person approved or denied the run. One decision per run: a second one is the first
/// one again (same key).
pub fn approval_decided(
    run_id: &str,
    subject: &str,
    approved: bool,
    by: &str,
    reason: &str,
) -> AuditEntry {
    run_entry(
        run_id,
        subject,
        "approval:decided".into(),
        AuditKind::ApprovalDecided,
        json!({"decision": if approved { "approved" } else { "denied" }, "by": by, "reason": reason}),
    )
}

/// Nobody approved the run before `until`.
pub fn approval_timed_out(
    run_id: &str,
    subject: &str,
    until: chrono::DateTime<chrono::Utc>,
) -> AuditEntry {
    run_entry(
        run_id,
        subject,
        "approval:timed_out".into(),
        AuditKind::ApprovalTimedOut,
        json!({"until": until, "reason": "no approval before the deadline; nothing was changed"}),
    )
}

/// The brake held a trigger back. One record in the quarantine's own chain (its run id is
/// the quarantine id): what would have been touched and why it was held; and one in each
/// held run's chain, so the person's history shows the run waited.
pub fn quarantined(quarantine: &Quarantine) -> Vec<AuditEntry> {
    let mut entries = vec![run_entry(
        &quarantine.quarantine_id,
        quarantine.trigger.as_str(),
        "quarantine".into(),
        AuditKind::Quarantined,
        json!({
            "quarantine_id": quarantine.quarantine_id,
            "trigger": quarantine.trigger,
            "policy_version": quarantine.policy_version,
            "breaches": quarantine.breaches,
            "exposures": quarantine.exposures,
            "runs": quarantine.run_ids(),
            "accounts": quarantine.accounts(),
        }),
    )];
    entries.extend(held_runs(
        quarantine,
        "quarantined",
        AuditKind::Quarantined,
        |_| json!({"quarantine_id": quarantine.quarantine_id, "breaches": quarantine.breaches}),
    ));
    entries
}

/// Someone approved or denied a quarantine: who, why, and the runs it releases or drops.
pub fn quarantine_decided(quarantine: &Quarantine) -> Vec<AuditEntry> {
    let (key, kind) = match quarantine.status {
        QuarantineStatus::Denied => ("quarantine:denied", AuditKind::QuarantineDenied),
        _ => ("quarantine:approved", AuditKind::QuarantineApproved),
    };
    let detail = json!({
        "quarantine_id": quarantine.quarantine_id,
        "status": quarantine.status,
        "decision": quarantine.decision,
        "runs": quarantine.run_ids(),
    });
    let mut entries = vec![run_entry(
        &quarantine.quarantine_id,
        quarantine.trigger.as_str(),
        key.into(),
        kind,
        detail.clone(),
    )];
    entries.extend(held_runs(quarantine, key, kind, |_| detail.clone()));
    entries
}

fn held_runs<'q>(
    quarantine: &'q Quarantine,
    key: &'q str,
    kind: AuditKind,
    detail: impl Fn(&LifecycleEvent) -> serde_json::Value + 'q,
) -> impl Iterator<Item = AuditEntry> + 'q {
    quarantine
        .runs
        .iter()
        .zip(quarantine.run_ids())
        .map(move |(input, run_id)| {
            let mut entry = run_entry(
                &run_id,
                &input.event.person.id,
                format!("{key}:{}", quarantine.quarantine_id),
                kind,
                detail(&input.event),
            );
            entry.system = input.event.systems.first().cloned();
            entry
        })
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
