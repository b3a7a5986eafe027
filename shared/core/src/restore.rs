//! Undoing a run. A rehire or a cancel first stops the person's pending stages (nothing
//! more is destroyed); then what the stopped runs already did is put back from the
//! pre-state their plans captured: accounts that were active are enabled again, removed
//! entitlements are granted again. What cannot come back (ended sessions, deleted keys,
//! handed-over data, a deleted account) is named in the plan's `skipped`, so the audit
//! trail says what a person must still do by hand.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::connector::Account;
use crate::event::LifecycleEvent;
use crate::ids;
use crate::plan::{AccountRef, Action, Plan, Skipped, Stage, StageKind, Target, Task};
use crate::policy::Policy;
use crate::ports::{RunRecord, RunStatus};
use crate::task::{TaskOutcome, TaskStatus};

/// The scenario name restore plans carry.
pub const SCENARIO: &str = "restore";

/// A run a rehire or cancel stopped: its plan (with the pre-state) and what its tasks came
/// to before it stopped.
#[derive(Clone, Debug)]
pub struct StoppedRun {
    pub plan: Plan,
    pub outcomes: Vec<TaskOutcome>,
}

/// The plan of a rehire's or cancel's run: the restore of what `stopped` runs did, or,
/// when the policy turns restoring off for this kind of event, a plan that only says so.
/// `can_restore(system)` says whether the system's connector has the restore stage.
pub fn restore_plan(
    event: &LifecycleEvent,
    policy: &Policy,
    stopped: &[StoppedRun],
    can_restore: impl Fn(&str) -> bool,
) -> Plan {
    let mut plan = undo(event, &policy.version, stopped, can_restore);
    if !policy.restore.applies_to(event.kind) {
        let systems: BTreeSet<String> = plan.tasks().map(|task| task.system.clone()).collect();
        plan.stages.clear();
        plan.skipped
            .extend(systems.into_iter().map(|system| Skipped {
                system,
                account: None,
                stage: Some(StageKind::Restore),
                reason: format!(
                    "not restored: the policy sets [restore] on_{} = false",
                    event.kind.as_str()
                ),
            }));
    }
    plan
}

/// The restore of what `stopped` runs did, as the run of `event`. The plan has at most one
/// stage, `restore`, not before the event's effective time (a rehire dated Monday
/// re-enables on Monday).
fn undo(
    event: &LifecycleEvent,
    policy_version: &str,
    stopped: &[StoppedRun],
    can_restore: impl Fn(&str) -> bool,
) -> Plan {
    let run_id = ids::run_id(&event.source, &event.event_id);
    let mut tasks: BTreeMap<String, Task> = BTreeMap::new();
    let mut accounts: BTreeMap<(String, String), Account> = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut deleted: BTreeSet<(String, String)> = BTreeSet::new();
    let mut unable: BTreeSet<String> = BTreeSet::new();

    let mut runs: Vec<&StoppedRun> = stopped.iter().collect();
    runs.sort_by(|a, b| a.plan.run_id.cmp(&b.plan.run_id));
    for run in runs {
        let attempted: HashMap<&str, &TaskOutcome> = run
            .outcomes
            .iter()
            .filter(|outcome| outcome.status != TaskStatus::Cancelled)
            .map(|outcome| (outcome.task.task_id.as_str(), outcome))
            .collect();
        for done in run.plan.tasks() {
            if !attempted.contains_key(done.task_id.as_str()) {
                continue;
            }
            let skip = |reason: String| Skipped {
                system: done.system.clone(),
                account: Some(done.account.username.clone()),
                stage: Some(StageKind::Restore),
                reason,
            };
            let pre_state = run
                .plan
                .accounts
                .iter()
                .find(|account| account.system == done.system && account.id == done.account.id);
            let (action, target) = match done.action {
                Action::Disable => match pre_state {
                    Some(account) if account.active => (Action::Enable, None),
                    _ => {
                        skipped.push(skip(format!(
                            "was already disabled before run {}; left disabled",
                            run.plan.run_id
                        )));
                        continue;
                    }
                },
                Action::RemoveEntitlement => {
                    let Some(target) = done.target.clone() else {
                        continue;
                    };
                    let held = pre_state.is_some_and(|account| {
                        account
                            .entitlements
                            .iter()
                            .any(|entitlement| entitlement.id == target.id)
                    });
                    if !held {
                        continue;
                    }
                    (Action::RestoreEntitlement, Some(target))
                }
                Action::RevokeSessions => {
                    skipped.push(skip(
                        "ended sessions are not restored: the person signs in again".into(),
                    ));
                    continue;
                }
                Action::RemoveCredential => {
                    let what = done
                        .target
                        .as_ref()
                        .map(|t| format!("{} \"{}\"", t.kind, t.name))
                        .unwrap_or_else(|| "a credential".into());
                    skipped.push(skip(format!(
                        "{what} was removed and cannot be restored: issue a new one"
                    )));
                    continue;
                }
                Action::TransferData => {
                    let to = done
                        .target
                        .as_ref()
                        .map_or("the manager", |t| t.name.as_str());
                    skipped.push(skip(format!(
                        "data handed over to {to} stays there: move it back by hand if needed"
                    )));
                    continue;
                }
                Action::Delete => {
                    deleted.insert((done.system.clone(), done.account.id.clone()));
                    skipped.push(skip(
                        "the account was deleted: it must be created again".into(),
                    ));
                    continue;
                }
                Action::Enable | Action::RestoreEntitlement => continue,
            };
            if !can_restore(&done.system) {
                if unable.insert(format!("{}\u{0}{}", done.system, done.account.id)) {
                    skipped.push(skip(format!(
                        "the {} connector cannot restore: re-enable the account and its entitlements by hand",
                        done.system
                    )));
                }
                continue;
            }
            let task = restore_task(&run_id, event, done, action, target);
            tasks.entry(task.task_id.clone()).or_insert(task);
            if let Some(account) = pre_state {
                accounts
                    .entry((account.system.clone(), account.id.clone()))
                    .or_insert_with(|| account.clone());
            }
        }
    }

    // A deleted account has nothing left to enable.
    let tasks: Vec<Task> = tasks
        .into_values()
        .filter(|task| !deleted.contains(&(task.system.clone(), task.account.id.clone())))
        .collect();
    let mut ordered: Vec<Task> = tasks
        .iter()
        .filter(|task| task.action == Action::Enable)
        .cloned()
        .collect();
    ordered.extend(
        tasks
            .into_iter()
            .filter(|task| task.action == Action::RestoreEntitlement),
    );
    let accounts: Vec<Account> = accounts
        .into_values()
        .filter(|account| {
            ordered
                .iter()
                .any(|task| task.system == account.system && task.account.id == account.id)
        })
        .collect();
    let stages = if ordered.is_empty() {
        Vec::new()
    } else {
        vec![Stage {
            stage: StageKind::Restore,
            not_before: event.effective_at,
            tasks: ordered,
        }]
    };
    Plan {
        run_id,
        event: event.clone(),
        scenario: SCENARIO.to_string(),
        policy_version: policy_version.to_string(),
        accounts,
        stages,
        skipped,
        unreachable: Vec::new(),
        stops: stopped.iter().map(|run| run.plan.run_id.clone()).collect(),
        // Putting back what a person had is never held for approval.
        approval: Vec::new(),
    }
}

/// Why a rehire or cancel stopped a run, as its cancelled tasks and its trail say.
pub fn cancel_reason(event: &LifecycleEvent) -> String {
    format!(
        "cancelled by {} event {} from {}",
        event.kind.as_str(),
        event.event_id,
        event.source
    )
}

/// The tasks of `run` a rehire or cancel cancels: every stage after the one running now
/// (a running stage finishes, its tasks may be in a worker's hands), or from the next one
/// when the run waits.
pub fn cancellable_tasks(run: &RunRecord) -> impl Iterator<Item = &Task> {
    let first_pending = match run.status {
        RunStatus::Running => run.next_stage + 1,
        _ => run.next_stage,
    };
    run.plan
        .stages
        .iter()
        .skip(first_pending)
        .flat_map(|stage| stage.tasks.iter())
}

fn restore_task(
    run_id: &str,
    event: &LifecycleEvent,
    done: &Task,
    action: Action,
    target: Option<Target>,
) -> Task {
    Task {
        task_id: ids::task_id(
            run_id,
            &done.system,
            action.as_str(),
            &done.account.id,
            target.as_ref().map_or("", |t| t.id.as_str()),
        ),
        run_id: run_id.to_string(),
        system: done.system.clone(),
        action,
        account: AccountRef {
            id: done.account.id.clone(),
            username: done.account.username.clone(),
        },
        target,
        person_id: event.person.id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::Entitlement;
    use crate::event::EventKind;
    use crate::plan::{build_plan, Discovery};
    use crate::testing::{sample_event, sample_policy};
    use crate::worker;

    fn account(active: bool) -> Account {
        Account {
            system: "crm".into(),
            id: "42".into(),
            username: "ada".into(),
            email: Some("ada@example.com".into()),
            active,
            entitlements: ["eng", "ops"]
                .iter()
                .map(|g| Entitlement {
                    id: format!("g-{g}"),
                    name: (*g).into(),
                    kind: "group".into(),
                })
                .collect(),
            credentials: vec![],
            last_activity: None,
        }
    }

    fn termination(active: bool) -> Plan {
        let discovery = Discovery {
            system: "crm".into(),
            supports: vec![
                StageKind::Disable,
                StageKind::Entitlements,
                StageKind::Delete,
            ],
            result: Ok(vec![account(active)]),
        };
        build_plan(&sample_event(), &sample_policy(), &[discovery])
            .unwrap_or_else(|err| panic!("{err}"))
    }

    fn verified(task: &Task) -> TaskOutcome {
        TaskOutcome {
            task: task.clone(),
            status: TaskStatus::Verified,
            change: Some(crate::Applied::Changed),
            evidence: None,
            error: None,
            attempts: 1,
            finished_at: chrono::Utc::now(),
        }
    }

    /// The termination ran its disable and entitlement stages; the delete stage was
    /// cancelled by the rehire.
    fn stopped_before_delete(plan: &Plan) -> StoppedRun {
        let outcomes = plan
            .tasks()
            .map(|task| match task.action {
                Action::Delete => worker::cancelled(task, "cancelled by rehire"),
                _ => verified(task),
            })
            .collect();
        StoppedRun {
            plan: plan.clone(),
            outcomes,
        }
    }

    fn rehire() -> LifecycleEvent {
        let mut event = sample_event();
        event.kind = EventKind::Rehire;
        event.event_id = "hr-rehire-1".into();
        event.termination_type = None;
        event
    }

    #[test]
    fn a_rehire_before_the_delete_stage_enables_and_regrants_from_the_pre_state() {
        let plan = termination(true);
        let restore = restore_plan(
            &rehire(),
            &sample_policy(),
            &[stopped_before_delete(&plan)],
            |_| true,
        );
        assert_eq!(restore.scenario, SCENARIO);
        assert_eq!(restore.stages.len(), 1);
        let stage = &restore.stages[0];
        assert_eq!(stage.stage, StageKind::Restore);
        let actions: Vec<(Action, Option<&str>)> = stage
            .tasks
            .iter()
            .map(|t| (t.action, t.target.as_ref().map(|t| t.name.as_str())))
            .collect();
        assert_eq!(
            actions,
            [
                (Action::Enable, None),
                (Action::RestoreEntitlement, Some("eng")),
                (Action::RestoreEntitlement, Some("ops")),
            ]
        );
        assert!(stage.tasks.iter().all(|t| t.run_id == restore.run_id));
        assert_eq!(restore.accounts, vec![account(true)]);
        // Nothing was deleted, so nothing is reported as lost.
        assert!(restore.skipped.is_empty(), "{:?}", restore.skipped);
    }

    #[test]
    fn an_account_disabled_before_the_run_stays_disabled() {
        let plan = termination(false);
        let restore = restore_plan(
            &rehire(),
            &sample_policy(),
            &[stopped_before_delete(&plan)],
            |_| true,
        );
        let tasks: Vec<&Task> = restore.stages.iter().flat_map(|s| &s.tasks).collect();
        assert!(tasks.iter().all(|t| t.action == Action::RestoreEntitlement));
        assert!(restore
            .skipped
            .iter()
            .any(|s| s.reason.contains("already disabled before run")));
    }

    #[test]
    fn what_cannot_come_back_is_named_and_deleted_accounts_get_no_tasks() {
        let plan = termination(true);
        let all_done = StoppedRun {
            outcomes: plan.tasks().map(verified).collect(),
            plan: plan.clone(),
        };
        let restore = restore_plan(&rehire(), &sample_policy(), &[all_done], |_| true);
        assert!(restore.stages.is_empty());
        assert!(restore
            .skipped
            .iter()
            .any(|s| s.reason.contains("must be created again")));
    }

    #[test]
    fn tasks_never_attempted_are_not_undone_and_unable_connectors_are_named_once() {
        let plan = termination(true);
        let nothing_ran = StoppedRun {
            outcomes: plan
                .tasks()
                .map(|task| worker::cancelled(task, "cancelled"))
                .collect(),
            plan: plan.clone(),
        };
        assert!(
            restore_plan(&rehire(), &sample_policy(), &[nothing_ran], |_| true)
                .stages
                .is_empty()
        );

        let restore = restore_plan(
            &rehire(),
            &sample_policy(),
            &[stopped_before_delete(&plan)],
            |_| false,
        );
        assert!(restore.stages.is_empty());
        let unable: Vec<&Skipped> = restore
            .skipped
            .iter()
            .filter(|s| s.reason.contains("cannot restore"))
            .collect();
        assert_eq!(unable.len(), 1);
    }

    #[test]
    fn two_stopped_runs_that_did_the_same_restore_it_once() {
        let plan = termination(true);
        let mut other = plan.clone();
        other.run_id = "r-other".into();
        let restore = restore_plan(
            &rehire(),
            &sample_policy(),
            &[stopped_before_delete(&plan), stopped_before_delete(&other)],
            |_| true,
        );
        assert_eq!(restore.task_count(), 3);
    }
}
