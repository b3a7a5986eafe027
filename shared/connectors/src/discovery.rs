//! Discovery: looking for a person on every system in scope before planning.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use deprov_core::plan::{systems_in_scope, Discovery, PlanError};
use deprov_core::policy::{MatchBy, Policy, Retry};
use deprov_core::{Account, Connector, ConnectorError, LifecycleEvent, PersonQuery};
use tracing::Instrument;

/// Looks for the person on every system in scope, concurrently and read-only. A system that
/// cannot be searched comes back as a failed discovery, never as "no account".
pub async fn discover(
    policy: &Policy,
    connectors: &BTreeMap<String, Arc<dyn Connector>>,
    event: &LifecycleEvent,
    timeout: Duration,
) -> Result<Vec<Discovery>, PlanError> {
    let scope = systems_in_scope(event, policy)?;
    let mut searches = tokio::task::JoinSet::new();
    let mut searching: HashMap<tokio::task::Id, String> = HashMap::new();
    for system in scope {
        let connector = connectors.get(system).cloned();
        let query = person_query(policy, event, system);
        let system = system.to_string();
        let retry = policy.retry.clone();
        let search = searches.spawn(search_system(
            system.clone(),
            connector,
            query,
            retry,
            timeout,
        ));
        searching.insert(search.id(), system);
    }
    let mut discoveries = Vec::new();
    while let Some(joined) = searches.join_next_with_id().await {
        match joined {
            Ok((id, discovery)) => {
                searching.remove(&id);
                discoveries.push(discovery);
            }
            Err(stopped) => {
                if let Some(system) = searching.remove(&stopped.id()) {
                    discoveries.push(failed_search(system, &stopped));
                }
            }
        }
    }
    Ok(discoveries)
}

/// What the person is looked for by on `system`.
fn person_query(policy: &Policy, event: &LifecycleEvent, system: &str) -> PersonQuery {
    let match_by = policy
        .systems
        .get(system)
        .map(|c| c.match_by)
        .unwrap_or_default();
    PersonQuery {
        person_id: event.person.id.clone(),
        email: event.person.email.clone(),
        username: match match_by {
            MatchBy::Username => event.username_for(system).map(str::to_string),
            MatchBy::Email => None,
        },
    }
}

/// One system's search, each attempt within `timeout`, throttled and transient failures
/// retried with the policy's backoff.
async fn search_system(
    system: String,
    connector: Option<Arc<dyn Connector>>,
    query: PersonQuery,
    retry: Retry,
    timeout: Duration,
) -> Discovery {
    let Some(connector) = connector else {
        return Discovery {
            result: Err(format!("system \"{system}\" has no connector")),
            system,
            supports: Vec::new(),
        };
    };
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        let found = match tokio::time::timeout(timeout, connector.discover(&query)).await {
            Ok(found) => found,
            Err(_) => Err(ConnectorError::Transient(format!(
                "discovery timed out after {}s",
                timeout.as_secs()
            ))),
        };
        match found {
            Err(error) if error.kind().is_retryable() && attempt < retry.max_attempts => {
                let wait = retry.backoff(attempt, error.retry_after(), fastrand::f64());
                tokio::time::sleep(wait).await;
            }
            other => break other.map_err(|error| error.to_string()),
        }
    };
    Discovery {
        system,
        supports: connector.supports().to_vec(),
        result,
    }
}

/// A search that ended without an answer (the connector panicked, or the search was
/// cancelled) is a failed discovery: the system is unreachable, never "no account".
fn failed_search(system: String, stopped: &tokio::task::JoinError) -> Discovery {
    let why = if stopped.is_panic() {
        "the connector panicked while searching"
    } else {
        "the search was cancelled before it answered"
    };
    tracing::error!(system = %system, "discovery failed: {why}");
    Discovery {
        system,
        supports: Vec::new(),
        result: Err(why.to_string()),
    }
}

/// One system's accounts (`Connector::list_accounts`), retrying throttled and transient
/// failures with the policy's backoff, all within `timeout`.
pub async fn list_accounts(
    connector: &dyn Connector,
    retry: &Retry,
    timeout: Duration,
) -> Result<Vec<Account>, ConnectorError> {
    let attempts = async {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match connector.list_accounts().await {
                Err(error) if error.kind().is_retryable() && attempt < retry.max_attempts => {
                    tracing::warn!(attempt, error = %error, "listing accounts again");
                    let wait = retry.backoff(attempt, error.retry_after(), fastrand::f64());
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    };
    tokio::time::timeout(timeout, attempts)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectorError::Transient(format!(
                "listing accounts took longer than {}s",
                timeout.as_secs()
            )))
        })
}

/// Every connector's accounts, `at_once` systems at a time, by system name.
pub async fn list_all(
    connectors: &BTreeMap<String, Arc<dyn Connector>>,
    retry: &Retry,
    timeout: Duration,
    at_once: usize,
) -> BTreeMap<String, Result<Vec<Account>, ConnectorError>> {
    let permits = Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
    let mut listings = tokio::task::JoinSet::new();
    for (system, connector) in connectors {
        let (permits, retry, connector) = (permits.clone(), retry.clone(), connector.clone());
        let name = system.clone();
        let span = tracing::info_span!("list_accounts", system = %system);
        listings.spawn(
            async move {
                let _permit = permits.acquire_owned().await.ok();
                (
                    name,
                    list_accounts(connector.as_ref(), &retry, timeout).await,
                )
            }
            .instrument(span),
        );
    }
    let mut listed: BTreeMap<String, Result<Vec<Account>, ConnectorError>> = connectors
        .keys()
        .map(|system| {
            let lost = ConnectorError::Transient("the listing task stopped unexpectedly".into());
            (system.clone(), Err(lost))
        })
        .collect();
    while let Some(joined) = listings.join_next().await {
        if let Ok((system, result)) = joined {
            listed.insert(system, result);
        }
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use deprov_core::plan::{build_plan, StageKind, Task};
    use deprov_core::testing::{sample_event, sample_policy};
    use deprov_core::{Applied, Evidence};

    /// A connector whose searches fail the way `failure` says.
    struct Failing {
        failure: &'static str,
    }

    #[async_trait]
    impl Connector for Failing {
        fn supports(&self) -> &[StageKind] {
            &[StageKind::Disable]
        }

        async fn discover(&self, _person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
            match self.failure {
                "panic" => panic!("the connector's parser panicked"),
                "hang" => std::future::pending().await,
                _ => Err(ConnectorError::Permanent("403 Forbidden".into())),
            }
        }

        async fn apply(&self, _task: &Task) -> Result<Applied, ConnectorError> {
            Err(ConnectorError::Permanent("not used".into()))
        }

        async fn verify(&self, _task: &Task) -> Result<Evidence, ConnectorError> {
            Err(ConnectorError::Permanent("not used".into()))
        }
    }

    async fn discover_with(failure: &'static str) -> Vec<Discovery> {
        let mut connectors: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
        connectors.insert("crm".into(), Arc::new(Failing { failure }));
        connectors.insert("wiki".into(), Arc::new(Failing { failure }));
        let mut policy = sample_policy();
        policy.retry.max_attempts = 2;
        let found = discover(
            &policy,
            &connectors,
            &sample_event(),
            Duration::from_millis(50),
        )
        .await;
        found.unwrap_or_else(|refused| panic!("discovery was refused: {refused}"))
    }

    /// Every way a search can fail leaves every system in scope unreachable in the plan:
    /// never silently dropped, never read as "no account".
    #[tokio::test]
    async fn a_connector_that_panics_hangs_or_errors_makes_its_system_unreachable() {
        for (failure, says) in [
            ("panic", "panicked"),
            ("hang", "timed out"),
            ("error", "403 Forbidden"),
        ] {
            let discoveries = discover_with(failure).await;
            assert_eq!(discoveries.len(), 2, "{failure}: one discovery per system");
            let plan = build_plan(&sample_event(), &sample_policy(), &discoveries)
                .unwrap_or_else(|refused| panic!("{failure}: plan refused: {refused}"));
            let mut unreachable: Vec<&str> =
                plan.unreachable.iter().map(|u| u.system.as_str()).collect();
            unreachable.sort_unstable();
            assert_eq!(unreachable, ["crm", "wiki"], "{failure}");
            assert!(
                plan.unreachable.iter().all(|u| u.error.contains(says)),
                "{failure}: {:?}",
                plan.unreachable
            );
            assert_eq!(plan.task_count(), 0);
        }
    }
}
