//! The daily sweep: every policy system's accounts (listed concurrently, a few at a time)
//! → the inactive ones, by core's rules → one run per finding, started under its run id, so
//! a sweep repeated the same day or the next starts nothing twice.
//!
//! What it could not do — a system whose accounts could not be listed, a run that did not
//! start — is in the summary, and makes the function fail *after* starting the runs it
//! could: the Errors alarm sees it, and Lambda's retry of the invocation starts only what
//! is missing. When the brake trips (core's `brake::check`: a system's `max_accounts` or
//! `max_percent`, or `max_runs_per_sweep`), nothing starts: the runs are held in a
//! quarantine in the runs table (`QUARANTINE#<id>`, the same id when retried) and the
//! function fails with the alert, which the Errors alarm sends to the alarm topic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Utc};
use deprov_aws::FunctionError;
use deprov_core::brake::Trigger;
use deprov_core::connector::ConnectorFactory;
use deprov_core::launch::{RunStart, RunStarter};
use deprov_core::ports::{PolicySource, RunStore};
use deprov_core::quarantine::Quarantine;
use deprov_core::sweep::FindingKind;
use deprov_core::{ids, ErrorKind, EventKind};
use lambda_runtime::LambdaEvent;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

pub struct Deps<P, L, S> {
    pub policies: P,
    pub starter: L,
    /// The runs table: people known from HR events (orphans) and quarantines.
    pub store: S,
    pub connectors: Box<ConnectorFactory>,
    /// How long listing one system's accounts may take, retries included.
    pub listing_timeout: Duration,
    /// Systems listed at once.
    pub listings_at_once: usize,
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub policy_version: String,
    /// Systems whose accounts were listed and judged.
    pub systems_swept: Vec<String>,
    /// Systems not looked at, and why (their connector cannot list accounts, …).
    pub systems_skipped: Vec<SkippedSystem>,
    pub accounts_seen: usize,
    /// Inactive accounts found, one run each.
    pub findings: usize,
    /// Orphan accounts found (runs only with `[sweep] orphans = "act"`).
    pub orphans: usize,
    /// Runs started by this sweep.
    pub started: usize,
    /// Findings whose run exists already (started by an earlier sweep, running or done).
    pub already_running: usize,
    /// The quarantine holding this sweep's runs, when the brake tripped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantine_id: Option<String>,
    pub failed: Vec<Failure>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedSystem {
    pub system: String,
    pub reason: String,
}

/// A system that could not be listed, or a run that could not be started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub error: String,
    #[serde(skip)]
    retryable: bool,
}

pub async fn handle<P: PolicySource, L: RunStarter, S: RunStore>(
    deps: &Deps<P, L, S>,
    event: LambdaEvent<EventBridgeEvent<Value>>,
) -> Result<Summary, FunctionError> {
    let invocation = event.payload.id.unwrap_or_default();
    let span = tracing::info_span!("sweep", invocation = %invocation);
    sweep(deps, Utc::now()).instrument(span).await
}

async fn sweep<P: PolicySource, L: RunStarter, S: RunStore>(
    deps: &Deps<P, L, S>,
    now: DateTime<Utc>,
) -> Result<Summary, FunctionError> {
    let policy = Arc::new(deps.policies.active().await?);
    let mut summary = Summary {
        policy_version: policy.version.clone(),
        ..Summary::default()
    };
    if !policy
        .scenarios
        .contains_key(EventKind::Inactivity.as_str())
    {
        for system in policy.systems.keys() {
            summary.systems_skipped.push(SkippedSystem {
                system: system.clone(),
                reason: "the policy has no [scenarios.inactivity], so every inactivity run \
                         would be refused; add one to act on inactive accounts"
                    .into(),
            });
        }
        tracing::info!("no inactivity scenario; nothing to sweep");
        return Ok(summary);
    }

    let mut connectors = BTreeMap::new();
    for (system, config) in &policy.systems {
        match (deps.connectors)(system, config) {
            Ok(connector) => {
                connectors.insert(system.clone(), connector);
            }
            Err(error) => summary.failed.push(Failure {
                system: Some(system.clone()),
                run_id: None,
                error: format!("building the connector of \"{system}\": {error}"),
                retryable: error.kind().is_retryable(),
            }),
        }
    }
    let listings = deprov_connectors::list_all(
        &connectors,
        &policy.retry,
        deps.listing_timeout,
        deps.listings_at_once,
    )
    .await;
    let people = deps.store.people().await?;
    let report = deprov_core::sweep::sweep(&policy, &listings, &people, now);
    for system in &report.systems {
        match (&system.skipped, system.failed) {
            (None, _) => {
                tracing::info!(system = %system.system, accounts = system.accounts, inactive = system.inactive, orphans = system.orphans, exempted = system.exempted, "system swept");
                summary.accounts_seen += system.accounts;
                summary.systems_swept.push(system.system.clone());
            }
            (Some(reason), false) => {
                tracing::info!(system = %system.system, reason = %reason, "system skipped");
                summary.systems_skipped.push(SkippedSystem {
                    system: system.system.clone(),
                    reason: reason.clone(),
                });
            }
            (Some(reason), true) => {
                tracing::error!(system = %system.system, error = %reason, "listing accounts failed");
                let error = listings
                    .get(&system.system)
                    .and_then(|listing| listing.as_ref().err());
                summary.failed.push(Failure {
                    system: Some(system.system.clone()),
                    run_id: None,
                    error: format!(
                        "listing the accounts of \"{}\": {}",
                        system.system,
                        error.map_or_else(|| reason.clone(), ToString::to_string)
                    ),
                    retryable: error.is_some_and(|error| error.kind().is_retryable()),
                });
            }
        }
    }
    summary.findings = report.count(FindingKind::Inactive);
    summary.orphans = report.count(FindingKind::Orphan);
    for finding in report.findings.iter().filter(|f| !f.acts) {
        tracing::info!(system = %finding.system, account = %finding.username, kind = finding.kind.as_str(), reason = %finding.reason, "reported, not acted on");
    }

    if !report.brake.is_clear() {
        let held = Quarantine::new(
            Trigger::Sweep,
            &policy.version,
            report.brake.breaches().to_vec(),
            report.exposures(),
            report.run_inputs(),
            now,
        );
        let stored = deps.store.put_quarantine(&held).await?;
        summary.quarantine_id = Some(stored.quarantine_id.clone());
        let alert = stored.alert();
        // The alert: this function's Errors alarm (SweepErrorsAlarm) notifies the alarm topic.
        tracing::error!(quarantine_id = %stored.quarantine_id, summary = %render(&summary), "{alert}");
        return Err(FunctionError::new(ErrorKind::Permanent, alert));
    }

    for input in report.run_inputs() {
        let run_id = ids::run_id(&input.event.source, &input.event.event_id);
        let system = input.event.systems.first().cloned();
        match deps.starter.start_run(&run_id, &input).await {
            Ok(RunStart::Started) => {
                tracing::info!(run_id = %run_id, system = system.as_deref().unwrap_or(""), "run started");
                summary.started += 1;
            }
            Ok(RunStart::AlreadyExists) => summary.already_running += 1,
            Err(error) => {
                tracing::error!(run_id = %run_id, error = %error, "run not started");
                summary.failed.push(Failure {
                    system,
                    run_id: Some(run_id),
                    error: error.to_string(),
                    retryable: true,
                });
            }
        }
    }

    tracing::info!(summary = %render(&summary), "sweep finished");
    if summary.failed.is_empty() {
        return Ok(summary);
    }
    let kind = if summary.failed.iter().any(|failure| failure.retryable) {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    };
    let problems: Vec<String> = summary
        .failed
        .iter()
        .map(|failure| match &failure.run_id {
            Some(run_id) => format!("run {run_id}: {}", failure.error),
            None => failure.error.clone(),
        })
        .collect();
    Err(FunctionError::new(
        kind,
        format!(
            "the sweep started {} run(s) ({} already existed) but not all of its work: {}",
            summary.started,
            summary.already_running,
            problems.join("; ")
        ),
    ))
}

fn render(summary: &Summary) -> String {
    serde_json::to_string(summary).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use deprov_connectors::memory::{MemoryConnector, MemoryDirectory};
    use deprov_core::flow::RunInput;
    use deprov_core::launch::MemoryLauncher;
    use deprov_core::plan::{StageKind, Task};
    use deprov_core::policy::{HumanDuration, Scenario};
    use deprov_core::ports::{AuditLog, Decided};
    use deprov_core::quarantine::{Decision, QuarantineStatus};
    use deprov_core::testing::{sample_policy, MemoryPolicies, MemoryStore};
    use deprov_core::{Account, Applied, Connector, ConnectorError, Evidence, PersonQuery, Policy};
    use lambda_runtime::Context;

    /// A connector whose listing answers as scripted; it does nothing else.
    struct Scripted(Result<Vec<Account>, ConnectorError>);

    #[async_trait]
    impl Connector for Scripted {
        fn supports(&self) -> &[StageKind] {
            &[]
        }
        async fn discover(&self, _: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
            Err(ConnectorError::Unsupported("discover".into()))
        }
        async fn apply(&self, _: &Task) -> Result<Applied, ConnectorError> {
            Err(ConnectorError::Unsupported("apply".into()))
        }
        async fn verify(&self, _: &Task) -> Result<Evidence, ConnectorError> {
            Err(ConnectorError::Unsupported("verify".into()))
        }
        async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
            self.0.clone()
        }
    }

    /// `sample_policy` (systems crm and wiki) with an inactivity scenario and fast retries.
    fn policy() -> Policy {
        let mut policy = sample_policy();
        policy.scenarios.insert(
            "inactivity".into(),
            Scenario {
                stages: vec![StageKind::Disable],
                delays: BTreeMap::new(),
                overrides: BTreeMap::new(),
                approval: false,
            },
        );
        // The brake's percentage is judged in its own test.
        policy.limits.max_percent = 100.0;
        policy.retry.max_attempts = 2;
        policy.retry.base_delay = HumanDuration(Duration::from_millis(1));
        policy.retry.max_delay = HumanDuration(Duration::from_millis(1));
        policy
    }

    /// crm over `crm`; wiki answers `wiki`.
    fn deps(
        policy: Policy,
        crm: Arc<MemoryDirectory>,
        wiki: Result<Vec<Account>, ConnectorError>,
    ) -> Deps<MemoryPolicies, MemoryLauncher, MemoryStore> {
        let wiki: Arc<dyn Connector> = Arc::new(Scripted(wiki));
        Deps {
            policies: MemoryPolicies::new(policy),
            starter: MemoryLauncher::default(),
            store: MemoryStore::default(),
            connectors: Box::new(move |system, _config| match system {
                "crm" => Ok(Arc::new(MemoryConnector::new(crm.clone())) as Arc<dyn Connector>),
                "wiki" => Ok(wiki.clone()),
                other => Err(ConnectorError::InvalidConfig(format!("no system {other}"))),
            }),
            listing_timeout: Duration::from_secs(5),
            listings_at_once: 2,
        }
    }

    /// `count` crm accounts idle for 200 days, one recently used, one with no activity data.
    fn directory(count: usize) -> Arc<MemoryDirectory> {
        let directory = MemoryDirectory::new();
        let long_ago = Utc::now() - chrono::Duration::days(200);
        for n in 0..count {
            let (id, name) = (format!("{n}"), format!("user{n}"));
            directory.add_account("crm", &id, &name, &format!("{name}@example.com"), &[]);
            directory.set_last_activity(&id, Some(long_ago));
        }
        directory.add_account("crm", "active", "busy", "busy@example.com", &[]);
        directory.set_last_activity("active", Some(Utc::now()));
        directory.add_account("crm", "unknown", "quiet", "quiet@example.com", &[]);
        directory
    }

    fn unsupported() -> Result<Vec<Account>, ConnectorError> {
        Err(ConnectorError::Unsupported("list accounts".into()))
    }

    /// The scheduler's payload, as the template sends it.
    fn scheduled() -> LambdaEvent<EventBridgeEvent<Value>> {
        let payload = serde_json::from_str(include_str!("../../../events/sweep.json"))
            .unwrap_or_else(|err| panic!("events/sweep.json: {err}"));
        LambdaEvent::new(payload, Context::default())
    }

    #[tokio::test]
    async fn one_run_per_inactive_account_and_none_twice() {
        let deps = deps(policy(), directory(2), unsupported());
        let summary = handle(&deps, scheduled()).await.unwrap();
        assert_eq!(summary.systems_swept, ["crm"]);
        assert_eq!(
            summary.systems_skipped,
            [SkippedSystem {
                system: "wiki".into(),
                reason: "its connector (memory) cannot list accounts".into()
            }]
        );
        assert_eq!(
            (summary.accounts_seen, summary.findings, summary.started),
            (4, 2, 2)
        );
        assert!(summary.failed.is_empty());
        let started = deps.starter.started();
        for (run_id, input) in &started {
            assert!(!input.dry_run);
            assert_eq!(input.event.kind, EventKind::Inactivity);
            assert_eq!(input.event.systems, ["crm"]);
            assert_eq!(run_id, &ids::run_id("sweep", &input.event.event_id));
            // What the plan function will read back.
            let value = serde_json::to_value(input).unwrap();
            assert_eq!(&RunInput::parse(&value).unwrap(), input);
        }
        // Tomorrow's sweep (another effective time) finds the same runs.
        let again = handle(&deps, scheduled()).await.unwrap();
        assert_eq!((again.started, again.already_running), (0, 2));
        assert_eq!(deps.starter.started(), started);
    }

    #[tokio::test]
    async fn too_many_findings_are_quarantined_and_start_nothing() {
        let deps = deps(policy(), directory(26), Ok(Vec::new()));
        let err = handle(&deps, scheduled()).await.unwrap_err();
        assert_eq!(err.error_type, "Deprov.Permanent");
        assert!(err.message.starts_with("QUARANTINED q-"), "{}", err.message);
        assert!(
            err.message
                .contains("the sweep would start 26 runs, more than sweep.max_runs_per_sweep = 25"),
            "{}",
            err.message
        );
        assert_eq!(deps.starter.start_calls(), 0);
        let held = deps.store.quarantines().await.unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].status, QuarantineStatus::Pending);
        assert_eq!(held[0].runs.len(), 26);
        // The retried invocation holds the same quarantine, and still starts nothing.
        let again = handle(&deps, scheduled()).await.unwrap_err();
        assert_eq!(again.message, err.message);
        assert_eq!(deps.store.quarantines().await.unwrap().len(), 1);
        assert_eq!(deps.starter.start_calls(), 0);
    }

    #[tokio::test]
    async fn a_sweep_over_a_systems_percentage_is_quarantined() {
        let mut policy = policy();
        policy.limits.max_percent = 10.0;
        // 3 idle accounts of 5 listed: 60% of crm.
        let deps = deps(policy, directory(3), Ok(Vec::new()));
        let err = handle(&deps, scheduled()).await.unwrap_err();
        assert!(
            err.message.contains(
                "the sweep would act on 3 of the 5 accounts of \"crm\" (60.0%), more than limits.max_percent = 10"
            ),
            "{}",
            err.message
        );
        assert_eq!(deps.starter.start_calls(), 0);
        let held = deps.store.quarantines().await.unwrap();
        let id = &held[0].quarantine_id;
        assert!(err.message.contains(&format!("deprov approve {id}")));
        // Approved through the store port, the quarantine holds the runs to start.
        let decision = Decision::new("grace", "checked", Utc::now()).unwrap();
        let decided = deprov_core::quarantine::decide(
            &deps.store,
            &deps.store,
            id,
            QuarantineStatus::Approved,
            &decision,
        )
        .await
        .unwrap();
        let Decided::Now(approved) = decided else {
            panic!("{decided:?}")
        };
        assert_eq!(approved.runs.len(), 3);
        assert_eq!(deps.store.records(id).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn orphans_are_reported_from_the_people_hr_described() {
        let crm = directory(0);
        let deps = deps(policy(), crm, Ok(Vec::new()));
        let mut left = deprov_core::testing::sample_event();
        left.person.usernames = BTreeMap::from([("crm".to_string(), "busy".to_string())]);
        left.effective_at = (Utc::now() - chrono::Duration::days(1)).fixed_offset();
        let person = deprov_core::people::PersonRecord::from_event(&left).unwrap();
        deps.store.record_person(&person).await.unwrap();
        let summary = handle(&deps, scheduled()).await.unwrap();
        // "busy" belongs to someone who left, "quiet" to nobody known: reported, not run.
        assert_eq!(
            (summary.findings, summary.orphans, summary.started),
            (0, 2, 0)
        );
    }

    #[tokio::test]
    async fn a_failed_listing_fails_the_sweep_after_starting_the_rest() {
        let failing = Err(ConnectorError::Transient("connection reset".into()));
        let deps = deps(policy(), directory(1), failing);
        let err = handle(&deps, scheduled()).await.unwrap_err();
        assert_eq!(err.error_type, "Deprov.Transient");
        assert!(err.message.contains("started 1 run(s)"), "{}", err.message);
        assert!(
            err.message
                .contains("listing the accounts of \"wiki\": transient failure: connection reset"),
            "{}",
            err.message
        );
        assert_eq!(deps.starter.started().len(), 1);
    }

    #[tokio::test]
    async fn a_refused_credential_is_permanent_and_a_failed_start_is_reported() {
        let refused = Err(ConnectorError::Unauthorized(
            "secret \"deprov/connector/wiki\" was refused".into(),
        ));
        let deps = deps(policy(), directory(2), refused);
        deps.starter.fail_next(1);
        let err = handle(&deps, scheduled()).await.unwrap_err();
        // A start failed too: the retry may help, so the whole is transient.
        assert_eq!(err.error_type, "Deprov.Transient");
        assert!(err.message.contains("StartExecution"), "{}", err.message);
        assert_eq!(deps.starter.started().len(), 1);
        // The retried invocation starts what is missing.
        let retried = handle(&deps, scheduled()).await.unwrap_err();
        assert_eq!(retried.error_type, "Deprov.Permanent");
        assert_eq!(deps.starter.started().len(), 2);
    }

    #[tokio::test]
    async fn without_an_inactivity_scenario_nothing_is_listed() {
        let crm = directory(3);
        let deps = deps(sample_policy(), crm.clone(), Ok(Vec::new()));
        let summary = handle(&deps, scheduled()).await.unwrap();
        assert_eq!(summary.systems_skipped.len(), 2);
        assert!(summary.systems_skipped[0]
            .reason
            .contains("[scenarios.inactivity]"));
        assert_eq!(crm.calls(), 0);
        assert_eq!(deps.starter.start_calls(), 0);
    }

    #[tokio::test]
    async fn a_system_whose_connector_cannot_be_built_is_a_failure() {
        let mut policy = policy();
        let extra = policy.systems["wiki"].clone();
        policy.systems.insert("erp".into(), extra);
        let deps = deps(policy, directory(1), Ok(Vec::new()));
        let err = handle(&deps, scheduled()).await.unwrap_err();
        assert_eq!(err.error_type, "Deprov.Permanent");
        assert!(
            err.message.contains("building the connector of \"erp\""),
            "{}",
            err.message
        );
        assert_eq!(deps.starter.started().len(), 1);
    }
}
