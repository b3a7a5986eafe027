//! The connector conformance suite: the promises every connector keeps, checked the same
//! way for each. A connector's test implements [`ConformanceTarget`] for its real server (or
//! its vendor-faithful mock) and calls [`check_all`].
//!
//! - apply twice = one change, and verify proves it after apply;
//! - an account already gone is success, not an error;
//! - a throttling storm and 5xx-then-success end verified, nothing dropped (through the
//!   engine's retries);
//! - a refused credential is a permanent failure whose message names the secret to fix;
//! - no secret value appears in an error, a log line or the audit trail.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use deprov_core::event::{EventKind, Person, TerminationType};
use deprov_core::plan::{build_plan, Discovery, StageKind, Task};
use deprov_core::policy::{Policy, SystemConfig};
use deprov_core::ports::{AuditLog, RunStatus, SecretSource, SystemClock};
use deprov_core::{
    Account, Applied, Connector, ErrorKind, LifecycleEvent, PersonQuery, TaskStatus,
};
use deprov_local::{Engine, EngineOptions, SqliteStore};

/// One connector's test target.
#[async_trait]
pub trait ConformanceTarget: Send + Sync {
    /// The policy's system name and entry (kind, secret, connection) for this target.
    fn system(&self) -> (String, SystemConfig);
    /// The secret source with working credentials.
    fn secrets(&self) -> Arc<dyn SecretSource>;
    /// Every secret value in play (working and wrong), none of which may ever be shown.
    fn secret_values(&self) -> Vec<String>;
    /// A secret source whose credential the target refuses.
    fn wrong_secrets(&self) -> Arc<dyn SecretSource>;
    /// Creates a person with one account holding at least one entitlement; `tag` makes the
    /// names unique. Returns how to find them.
    async fn seed_person(&self, tag: &str) -> PersonQuery;
    /// Removes the account behind the connector's back.
    async fn remove_account(&self, account: &Account);
    /// Makes the next `n` requests answer 429 with a Retry-After; false if the target
    /// cannot (a real server), which skips that check.
    fn throttle_next(&self, _n: u32) -> bool {
        false
    }
    /// Makes the next `n` requests fail with a 5xx; false if the target cannot.
    fn fail_next(&self, _n: u32) -> bool {
        false
    }
    /// The stages to exercise, in kill order (a subset of the connector's).
    fn stages(&self) -> Vec<StageKind>;
}

/// Runs every conformance check against `target`.
pub async fn check_all(target: &dyn ConformanceTarget) {
    apply_twice_is_one_change_and_verified(target).await;
    an_account_already_gone_is_success(target).await;
    refused_credentials_name_the_secret_and_never_show_it(target).await;
    if target.throttle_next(0) {
        a_storm_ends_verified(target, "throttle", |t| t.throttle_next(6)).await;
    }
    if target.fail_next(0) {
        a_storm_ends_verified(target, "fail", |t| t.fail_next(2)).await;
    }
}

fn connector(target: &dyn ConformanceTarget, secrets: Arc<dyn SecretSource>) -> Arc<dyn Connector> {
    let (name, config) = target.system();
    deprov_connectors::build(&name, &config, secrets)
        .unwrap_or_else(|err| panic!("building {name}: {err}"))
}

fn policy(target: &dyn ConformanceTarget) -> Policy {
    let (name, config) = target.system();
    let stages: Vec<&str> = target.stages().iter().map(|s| s.as_str()).collect();
    let text = format!(
        "version = \"conformance\"\n[scenarios.termination]\nstages = {stages:?}\n[retry]\nmax_attempts = 8\nbase_delay = \"10ms\"\nmax_delay = \"2s\"\n"
    );
    let mut policy = Policy::parse(&format!("{text}[systems.placeholder]\nkind = \"x\"\n"))
        .unwrap_or_else(|err| panic!("{err}"));
    policy.systems.clear();
    policy.systems.insert(name, config);
    policy
}

fn event(query: &PersonQuery, system: &str, tag: &str) -> LifecycleEvent {
    LifecycleEvent {
        event_id: format!("conformance-{tag}-{}", Utc::now().timestamp_micros()),
        source: "conformance".into(),
        kind: EventKind::Termination,
        termination_type: Some(TerminationType::Involuntary),
        person: Person {
            id: query.person_id.clone(),
            email: query.email.clone(),
            display_name: None,
            usernames: query
                .username
                .iter()
                .map(|username| (system.to_string(), username.clone()))
                .collect(),
            roles: Vec::new(),
            manager_email: Some("manager@example.com".into()),
        },
        effective_at: Utc::now().fixed_offset(),
        reason: None,
        requested_by: "conformance".into(),
        transfer: None,
        systems: Vec::new(),
    }
}

/// Discovers the seeded person and plans their termination.
async fn plan_for(
    target: &dyn ConformanceTarget,
    connector: &Arc<dyn Connector>,
    query: &PersonQuery,
    tag: &str,
) -> (Vec<Task>, Vec<Account>) {
    let (name, _) = target.system();
    let accounts = connector
        .discover(query)
        .await
        .unwrap_or_else(|err| panic!("{name}: discover: {err}"));
    assert_eq!(
        accounts.len(),
        1,
        "{name}: the seeded person has exactly one account: {accounts:?}"
    );
    assert!(
        !accounts[0].entitlements.is_empty() || !target.stages().contains(&StageKind::Entitlements),
        "{name}: the seeded account holds an entitlement: {accounts:?}"
    );
    let plan = build_plan(
        &event(query, &name, tag),
        &policy(target),
        &[Discovery {
            system: name.clone(),
            supports: connector.supports().to_vec(),
            result: Ok(accounts.clone()),
        }],
    )
    .unwrap_or_else(|err| panic!("{name}: plan: {err}"));
    (plan.tasks().cloned().collect(), accounts)
}

async fn apply_twice_is_one_change_and_verified(target: &dyn ConformanceTarget) {
    let connector = connector(target, target.secrets());
    let query = target.seed_person("twice").await;
    let (tasks, _) = plan_for(target, &connector, &query, "twice").await;
    assert!(!tasks.is_empty());
    for task in &tasks {
        let what = format!("{} {} {:?}", task.system, task.action.as_str(), task.target);
        let first = connector
            .apply(task)
            .await
            .unwrap_or_else(|err| panic!("{what}: apply: {err}"));
        assert_eq!(
            first,
            Applied::Changed,
            "{what}: the first apply changes the target"
        );
        let evidence = connector
            .verify(task)
            .await
            .unwrap_or_else(|err| panic!("{what}: verify: {err}"));
        assert!(
            evidence.verified,
            "{what}: verify after apply: {}",
            evidence.observed
        );
        let second = connector
            .apply(task)
            .await
            .unwrap_or_else(|err| panic!("{what}: second apply: {err}"));
        assert_eq!(
            second,
            Applied::AlreadyDone,
            "{what}: apply twice = one change"
        );
        assert!(
            connector
                .verify(task)
                .await
                .map(|e| e.verified)
                .unwrap_or(false),
            "{what}: still verified"
        );
    }
}

async fn an_account_already_gone_is_success(target: &dyn ConformanceTarget) {
    let connector = connector(target, target.secrets());
    let query = target.seed_person("gone").await;
    let (tasks, accounts) = plan_for(target, &connector, &query, "gone").await;
    target.remove_account(&accounts[0]).await;
    for task in &tasks {
        let what = format!(
            "{} {} on a removed account",
            task.system,
            task.action.as_str()
        );
        let applied = connector
            .apply(task)
            .await
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        assert_eq!(applied, Applied::AlreadyDone, "{what}");
        let evidence = connector
            .verify(task)
            .await
            .unwrap_or_else(|err| panic!("{what}: verify: {err}"));
        assert!(evidence.verified, "{what}: {}", evidence.observed);
    }
}

/// Log lines written while the guard lives, at every level.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

fn assert_no_secret(target: &dyn ConformanceTarget, place: &str, text: &str) {
    for value in target.secret_values() {
        assert!(
            value.len() < 4 || !text.contains(&value),
            "a secret value appears in {place}: {text}"
        );
    }
}

async fn refused_credentials_name_the_secret_and_never_show_it(target: &dyn ConformanceTarget) {
    let (name, config) = target.system();
    let secret_name = config.secret.clone().unwrap_or_default();
    let query = target.seed_person("auth").await;
    let refused = connector(target, target.wrong_secrets());
    let err = refused
        .discover(&query)
        .await
        .expect_err("a wrong credential must be refused");
    assert_eq!(
        err.kind(),
        ErrorKind::Permanent,
        "{name}: a refused credential is permanent: {err}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&secret_name),
        "{name}: the error names the secret \"{secret_name}\": {message}"
    );
    assert_no_secret(target, "an error", &message);

    // A whole run with the wrong credential, then a good one: neither the logs nor the audit
    // trail show a secret.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("conformance.db")).unwrap_or_else(|err| panic!("{err}")),
    );
    for (secrets, tag) in [
        (target.wrong_secrets(), "auth-run"),
        (target.secrets(), "good-run"),
    ] {
        let connectors = BTreeMap::from([(name.clone(), connector(target, secrets))]);
        let engine = Engine::start(
            policy(target),
            connectors,
            store.clone(),
            store.clone(),
            Arc::new(SystemClock),
            EngineOptions::default(),
            None,
        );
        let report = engine
            .submit(&event(&query, &name, tag))
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        engine.shutdown();
        if tag == "auth-run" {
            assert_eq!(
                report.status,
                RunStatus::Escalated,
                "{name}: an unreachable system escalates the run"
            );
        }
        let records = store.records(&report.run_id).await.unwrap_or_default();
        assert!(!records.is_empty());
        assert_no_secret(
            target,
            "the audit trail",
            &serde_json::to_string(&records).unwrap_or_default(),
        );
    }
    assert_no_secret(target, "the logs", &logs.text());
}

async fn a_storm_ends_verified(
    target: &dyn ConformanceTarget,
    tag: &str,
    storm: impl Fn(&dyn ConformanceTarget) -> bool,
) {
    let (name, _) = target.system();
    let query = target.seed_person(tag).await;
    let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("storm.db")).unwrap_or_else(|err| panic!("{err}")),
    );
    let connectors = BTreeMap::from([(name.clone(), connector(target, target.secrets()))]);
    let engine = Engine::start(
        policy(target),
        connectors,
        store.clone(),
        store.clone(),
        Arc::new(SystemClock),
        EngineOptions::default(),
        None,
    );
    storm(target);
    let report = engine
        .submit(&event(&query, &name, tag))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    engine.shutdown();
    assert_eq!(
        report.status,
        RunStatus::Completed,
        "{name} {tag} storm: {:?}",
        report.outcomes
    );
    assert!(report
        .outcomes
        .iter()
        .all(|o| o.status == TaskStatus::Verified));
    assert!(
        !report.outcomes.is_empty(),
        "{name} {tag} storm: nothing ran"
    );
}
