//! BuildPlan: a run input (from intake, a schedule, a sweep or the console) → discovery on
//! every system in scope → the plan, stored once in the runs table → the state the stages
//! work from.
//!
//! A rehire or cancel plans differently: the person's open runs are stopped (their
//! executions ended, their pending tasks recorded as cancelled) and the plan restores
//! what those runs did, from the pre-state their plans captured. The plan, naming the runs
//! it stops, is stored *before* they are stopped, so a retried BuildPlan stops the same
//! runs and restores the same things.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use deprov_aws::FunctionError;
use deprov_core::connector::ConnectorFactory;
use deprov_core::flow::{planned_run, PlannedRun, Refusal, RunInput, Verdict};
use deprov_core::launch::RunStopper;
use deprov_core::plan::{build_plan, StageKind};
use deprov_core::ports::{PolicySource, RunRecord, RunStatus, RunStore};
use deprov_core::restore::{self, StoppedRun};
use deprov_core::{ids, worker, ErrorKind, LifecycleEvent, Plan, Policy};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tracing::Instrument;

pub struct Deps<S, P, X> {
    pub store: S,
    pub policies: P,
    /// Ends the executions of runs a rehire or cancel stops.
    pub stopper: X,
    pub connectors: Box<ConnectorFactory>,
    /// Connector kind → the URL of its task queue.
    pub queue_urls: BTreeMap<String, String>,
    pub discovery_timeout: Duration,
}

pub async fn handle<S: RunStore, P: PolicySource, X: RunStopper>(
    deps: &Deps<S, P, X>,
    event: LambdaEvent<Value>,
) -> Result<PlannedRun, FunctionError> {
    let input = RunInput::parse(&event.payload)
        .map_err(|invalid| FunctionError::invalid_input(invalid.to_string()))?;
    let run_id = ids::run_id(&input.event.source, &input.event.event_id);
    let span = tracing::info_span!("build_plan", run_id = %run_id, person = %input.event.person.id);
    build(deps, input, run_id).instrument(span).await
}

async fn build<S: RunStore, P: PolicySource, X: RunStopper>(
    deps: &Deps<S, P, X>,
    input: RunInput,
    run_id: String,
) -> Result<PlannedRun, FunctionError> {
    let event = &input.event;
    // The same run planned again (a retried BuildPlan, a second start of the same event):
    // the stored plan is the plan.
    if let Some(run) = deps.store.get_run(&run_id).await? {
        let policy = deps.policies.version(&run.plan.policy_version).await?;
        tracing::info!("plan exists; reusing it");
        if run.status != RunStatus::DryRun {
            stop_runs(deps, event, &run.plan.stops).await?;
        }
        return state(deps, &policy, &run.plan, run.status == RunStatus::DryRun);
    }
    deps.store
        .claim_event(&event.source, &event.event_id, &run_id)
        .await?;
    let policy = deps.policies.active().await?;
    let connectors = policy
        .systems
        .iter()
        .map(|(name, config)| {
            (deps.connectors)(name, config).map(|connector| (name.clone(), connector))
        })
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map_err(|err| FunctionError::new(ErrorKind::Permanent, err.to_string()))?;
    if event.kind.stops_pending_runs() {
        let mut open = Vec::new();
        for run in deps.store.open_runs_for(&event.person.id).await? {
            if run.run_id != run_id {
                open.push(StoppedRun {
                    outcomes: deps.store.task_outcomes(&run.run_id).await?,
                    plan: run.plan,
                });
            }
        }
        let plan = restore::restore_plan(event, &policy, &open, |system| {
            connectors
                .get(system)
                .is_some_and(|connector| connector.supports().contains(&StageKind::Restore))
        });
        store_plan(deps, &input, &plan).await?;
        if !input.dry_run {
            stop_runs(deps, event, &plan.stops).await?;
        }
        return state(deps, &policy, &plan, input.dry_run);
    }
    let discoveries =
        deprov_connectors::discover(&policy, &connectors, event, deps.discovery_timeout).await;
    // Approvals are decided with `deprov approve` against the local store; the state
    // machine has no approval step yet, so a run that needs one is refused here rather
    // than run unapproved.
    let needs_approval = |plan: &Plan| {
        (!plan.approval.is_empty() && !input.dry_run).then(|| {
            format!(
                "this run needs approval ({}), which the AWS deployment cannot collect yet; run it with the local engine (`deprov run`, then `deprov approve`)",
                plan.approval.join("; ")
            )
        })
    };
    let planned = discoveries
        .and_then(|found| build_plan(event, &policy, &found))
        .map_err(|refusal| refusal.to_string())
        .and_then(|plan| match needs_approval(&plan) {
            Some(reason) => Err(reason),
            None => Ok(plan),
        });
    let plan = match planned {
        Ok(plan) => plan,
        Err(refusal) => {
            tracing::warn!(reason = %refusal, "plan refused");
            return Ok(PlannedRun {
                run_id: run_id.clone(),
                person_id: event.person.id.clone(),
                verdict: Verdict::Refused,
                task_count: 0,
                stages: Vec::new(),
                refusal: Some(Refusal {
                    event: event.clone(),
                    reason: refusal,
                    policy_version: policy.version.clone(),
                }),
            });
        }
    };
    store_plan(deps, &input, &plan).await?;
    state(deps, &policy, &plan, input.dry_run)
}

async fn store_plan<S: RunStore, P, X>(
    deps: &Deps<S, P, X>,
    input: &RunInput,
    plan: &Plan,
) -> Result<(), FunctionError> {
    let now = Utc::now();
    deps.store
        .put_run(&RunRecord {
            run_id: plan.run_id.clone(),
            person_id: input.event.person.id.clone(),
            status: if input.dry_run {
                RunStatus::DryRun
            } else {
                RunStatus::Running
            },
            plan: plan.clone(),
            next_stage: 0,
            wake_at: None,
            created_at: now,
            updated_at: now,
        })
        .await?;
    tracing::info!(
        tasks = plan.task_count(),
        stages = plan.stages.len(),
        stops = plan.stops.len(),
        "plan built"
    );
    Ok(())
}

/// Ends the executions of `run_ids` and records their pending tasks as cancelled, so
/// nothing more is done to the person's accounts; the audit function writes the
/// cancellations into their trails when it records this run's plan. Safe to repeat: a
/// run already cancelled is only stopped again, which is a no-op.
async fn stop_runs<S: RunStore, P, X: RunStopper>(
    deps: &Deps<S, P, X>,
    event: &LifecycleEvent,
    run_ids: &[String],
) -> Result<(), FunctionError> {
    let why = restore::cancel_reason(event);
    for run_id in run_ids {
        let Some(mut run) = deps.store.get_run(run_id).await? else {
            continue;
        };
        deps.stopper
            .stop_run(run_id, &why)
            .await
            .map_err(|err| FunctionError::new(ErrorKind::Transient, err.to_string()))?;
        if run.status == RunStatus::Cancelled {
            continue;
        }
        for task in restore::cancellable_tasks(&run) {
            deps.store
                .complete_task(&worker::cancelled(task, &why))
                .await?;
        }
        run.status = RunStatus::Cancelled;
        run.wake_at = None;
        run.updated_at = Utc::now();
        deps.store.put_run(&run).await?;
        tracing::info!(stopped = %run_id, "run stopped");
    }
    Ok(())
}

fn state<S, P, X>(
    deps: &Deps<S, P, X>,
    policy: &Policy,
    plan: &deprov_core::Plan,
    dry_run: bool,
) -> Result<PlannedRun, FunctionError> {
    let queue_url = |system: &str| {
        let kind = &policy.systems.get(system)?.kind;
        deps.queue_urls.get(kind).cloned()
    };
    planned_run(plan, dry_run, Utc::now(), queue_url).map_err(|message| {
        FunctionError::new(
            ErrorKind::Permanent,
            format!("{message}; add the kind's queue to DEPROV_QUEUE_URLS (the template does)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use deprov_connectors::memory::{MemoryConnector, MemoryDirectory};
    use deprov_core::launch::{MemoryLauncher, RunStarter};
    use deprov_core::policy::SystemConfig;
    use deprov_core::task::{TaskOutcome, TaskStatus};
    use deprov_core::testing::{sample_event, sample_policy, MemoryPolicies, MemoryStore};
    use deprov_core::Connector;
    use lambda_runtime::Context;
    use serde_json::json;
    use std::sync::Arc;

    fn deps(directory: Arc<MemoryDirectory>) -> Deps<MemoryStore, MemoryPolicies, MemoryLauncher> {
        let policy = sample_policy();
        let mut queue_urls = BTreeMap::new();
        for system in policy.systems.values() {
            queue_urls.insert(system.kind.clone(), format!("http://queue/{}", system.kind));
        }
        Deps {
            store: MemoryStore::default(),
            policies: MemoryPolicies::new(policy),
            stopper: MemoryLauncher::default(),
            connectors: Box::new(move |_system: &str, _config: &SystemConfig| {
                Ok(Arc::new(MemoryConnector::new(directory.clone())) as Arc<dyn Connector>)
            }),
            queue_urls,
            discovery_timeout: Duration::from_secs(5),
        }
    }

    fn invoke(payload: Value) -> LambdaEvent<Value> {
        LambdaEvent::new(payload, Context::default())
    }

    #[tokio::test]
    async fn a_termination_becomes_stages_of_tasks_on_each_systems_queue() {
        let directory = MemoryDirectory::new();
        directory.add_account("crm", "42", "ada.l", "ada@example.com", &["eng"]);
        let deps = deps(directory);
        let input = json!({"event": sample_event()});
        let planned = handle(&deps, invoke(input.clone())).await.unwrap();
        assert_eq!(planned.verdict, Verdict::Planned);
        assert!(planned.task_count > 0);
        assert!(planned
            .stages
            .iter()
            .flat_map(|stage| &stage.tasks)
            .all(|item| item.queue_url.starts_with("http://queue/")));
        let run = deps.store.get_run(&planned.run_id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Running);
        // Planned again (a retried state): the same plan, not a second one.
        let again = handle(&deps, invoke(input)).await.unwrap();
        assert_eq!(again.stages, planned.stages);
    }

    #[tokio::test]
    async fn a_bare_event_pasted_in_the_console_is_accepted() {
        let deps = deps(MemoryDirectory::new());
        let planned = handle(&deps, invoke(serde_json::to_value(sample_event()).unwrap()))
            .await
            .unwrap();
        assert_eq!(
            planned.run_id,
            ids::run_id(&sample_event().source, &sample_event().event_id)
        );
    }

    #[tokio::test]
    async fn invalid_input_fails_with_every_problem_and_its_path() {
        let deps = deps(MemoryDirectory::new());
        let mut event = serde_json::to_value(sample_event()).unwrap();
        event["person"]["email"] = json!("not-an-email");
        event["kind"] = json!("fired");
        let err = handle(&deps, invoke(json!({"event": event, "dry_run": "yes"})))
            .await
            .unwrap_err();
        assert_eq!(err.error_type, "Deprov.InvalidInput");
        assert!(err.message.contains("$.dry_run"), "{}", err.message);
        let err = handle(&deps, invoke(json!({"event": event})))
            .await
            .unwrap_err();
        assert!(err.message.contains("$.event.kind"), "{}", err.message);
        assert!(
            err.message.contains("$.event.person.email"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_dry_run_is_stored_as_such() {
        let directory = MemoryDirectory::new();
        directory.add_account("crm", "42", "ada.l", "ada@example.com", &[]);
        let deps = deps(directory);
        let planned = handle(
            &deps,
            invoke(json!({"event": sample_event(), "dry_run": true})),
        )
        .await
        .unwrap();
        assert_eq!(planned.verdict, Verdict::DryRun);
        let run = deps.store.get_run(&planned.run_id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::DryRun);
    }

    #[tokio::test]
    async fn a_rehire_stops_the_open_run_and_plans_the_restore_of_what_it_did() {
        let directory = MemoryDirectory::new();
        directory.add_account("crm", "42", "ada.l", "ada@example.com", &["eng"]);
        let deps = deps(directory);
        let termination = json!({"event": sample_event()});
        let planned = handle(&deps, invoke(termination.clone())).await.unwrap();
        let input = RunInput::parse(&termination).unwrap();
        deps.stopper
            .start_run(&planned.run_id, &input)
            .await
            .unwrap();
        // Every stage but the delayed delete ran; the run now waits for it.
        let mut run = deps.store.get_run(&planned.run_id).await.unwrap().unwrap();
        let delete = run.plan.stages.len() - 1;
        assert_eq!(run.plan.stages[delete].stage, StageKind::Delete);
        for task in run.plan.stages[..delete].iter().flat_map(|s| &s.tasks) {
            deps.store
                .complete_task(&TaskOutcome {
                    task: task.clone(),
                    status: TaskStatus::Verified,
                    change: Some(deprov_core::Applied::Changed),
                    evidence: None,
                    error: None,
                    attempts: 1,
                    finished_at: Utc::now(),
                })
                .await
                .unwrap();
        }
        run.status = RunStatus::Waiting;
        run.next_stage = delete;
        deps.store.put_run(&run).await.unwrap();

        let mut rehire = serde_json::to_value(sample_event()).unwrap();
        rehire["event_id"] = json!("hr-rehire-1");
        rehire["kind"] = json!("rehire");
        rehire.as_object_mut().unwrap().remove("termination_type");
        let rehire = json!({"event": rehire});
        let restore = handle(&deps, invoke(rehire.clone())).await.unwrap();
        assert_eq!(restore.verdict, Verdict::Planned);
        assert_eq!(restore.stages.len(), 1);
        assert_eq!(restore.stages[0].stage, StageKind::Restore);
        assert!(restore.stages[0]
            .tasks
            .iter()
            .all(|item| item.task.run_id == restore.run_id && item.queue_url.ends_with("/memory")));

        // The termination's execution is stopped, its run cancelled, its pending tasks
        // recorded as cancelled.
        assert!(deps.stopper.stopped().contains_key(&planned.run_id));
        let stopped = deps.store.get_run(&planned.run_id).await.unwrap().unwrap();
        assert_eq!(stopped.status, RunStatus::Cancelled);
        let outcomes = deps.store.task_outcomes(&planned.run_id).await.unwrap();
        let pending = stopped.plan.stages[delete].tasks.len();
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| o.status == TaskStatus::Cancelled)
                .count(),
            pending
        );
        let stored = deps.store.get_run(&restore.run_id).await.unwrap().unwrap();
        assert_eq!(stored.plan.stops, vec![planned.run_id.clone()]);

        // A retried BuildPlan stops the same run and plans the same restore.
        let again = handle(&deps, invoke(rehire)).await.unwrap();
        assert_eq!(again.stages, restore.stages);
    }

    #[tokio::test]
    async fn a_run_that_needs_approval_is_refused_not_run_unapproved() {
        let directory = MemoryDirectory::new();
        directory.add_account("crm", "42", "ada.l", "ada@example.com", &["eng"]);
        let mut deps = deps(directory);
        let mut policy = sample_policy();
        policy.systems.get_mut("crm").unwrap().approval = true;
        deps.policies = MemoryPolicies::new(policy);
        let planned = handle(&deps, invoke(json!({"event": sample_event()})))
            .await
            .unwrap();
        assert_eq!(planned.verdict, Verdict::Refused);
        assert!(planned.stages.is_empty());
        let reason = planned.refusal.unwrap().reason;
        assert!(reason.contains("needs approval"), "{reason}");
        assert!(deps.store.get_run(&planned.run_id).await.unwrap().is_none());
    }
}
