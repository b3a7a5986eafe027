//! BuildPlan: a run input (from intake, a schedule, a sweep or the console) → discovery on
//! every system in scope → the plan, stored once in the runs table → the state the stages
//! work from.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use deprov_aws::FunctionError;
use deprov_core::connector::ConnectorFactory;
use deprov_core::flow::{planned_run, PlannedRun, Refusal, RunInput, Verdict};
use deprov_core::plan::build_plan;
use deprov_core::ports::{PolicySource, RunRecord, RunStatus, RunStore};
use deprov_core::{ids, ErrorKind, Policy};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tracing::Instrument;

pub struct Deps<S, P> {
    pub store: S,
    pub policies: P,
    pub connectors: Box<ConnectorFactory>,
    /// Connector kind → the URL of its task queue.
    pub queue_urls: BTreeMap<String, String>,
    pub discovery_timeout: Duration,
}

pub async fn handle<S: RunStore, P: PolicySource>(
    deps: &Deps<S, P>,
    event: LambdaEvent<Value>,
) -> Result<PlannedRun, FunctionError> {
    let input = RunInput::parse(&event.payload)
        .map_err(|invalid| FunctionError::invalid_input(invalid.to_string()))?;
    let run_id = ids::run_id(&input.event.source, &input.event.event_id);
    let span = tracing::info_span!("build_plan", run_id = %run_id, person = %input.event.person.id);
    build(deps, input, run_id).instrument(span).await
}

async fn build<S: RunStore, P: PolicySource>(
    deps: &Deps<S, P>,
    input: RunInput,
    run_id: String,
) -> Result<PlannedRun, FunctionError> {
    let event = &input.event;
    // The same run planned again (a retried BuildPlan, a second start of the same event):
    // the stored plan is the plan.
    if let Some(run) = deps.store.get_run(&run_id).await? {
        let policy = deps.policies.version(&run.plan.policy_version).await?;
        tracing::info!("plan exists; reusing it");
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
    let discoveries =
        deprov_connectors::discover(&policy, &connectors, event, deps.discovery_timeout).await;
    let plan = match discoveries.and_then(|found| build_plan(event, &policy, &found)) {
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
                    reason: refusal.to_string(),
                    policy_version: policy.version.clone(),
                }),
            });
        }
    };
    let now = Utc::now();
    deps.store
        .put_run(&RunRecord {
            run_id: run_id.clone(),
            person_id: event.person.id.clone(),
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
        "plan built"
    );
    state(deps, &policy, &plan, input.dry_run)
}

fn state<S, P>(
    deps: &Deps<S, P>,
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
    use deprov_core::policy::SystemConfig;
    use deprov_core::testing::{sample_event, sample_policy, MemoryPolicies, MemoryStore};
    use deprov_core::Connector;
    use lambda_runtime::Context;
    use serde_json::json;
    use std::sync::Arc;

    fn deps(directory: Arc<MemoryDirectory>) -> Deps<MemoryStore, MemoryPolicies> {
        let policy = sample_policy();
        let mut queue_urls = BTreeMap::new();
        for system in policy.systems.values() {
            queue_urls.insert(system.kind.clone(), format!("http://queue/{}", system.kind));
        }
        Deps {
            store: MemoryStore::default(),
            policies: MemoryPolicies::new(policy),
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
}
