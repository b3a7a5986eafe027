//! Discovery: looking for a person on every system in scope before planning.

use std::collections::BTreeMap;
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
    for system in scope {
        let connector = connectors.get(system).cloned();
        let match_by = policy
            .systems
            .get(system)
            .map(|c| c.match_by)
            .unwrap_or_default();
        let query = PersonQuery {
            person_id: event.person.id.clone(),
            email: event.person.email.clone(),
            username: match match_by {
                MatchBy::Username => event.username_for(system).map(str::to_string),
                MatchBy::Email => None,
            },
        };
        let system = system.to_string();
        let retry = policy.retry.clone();
        searches.spawn(async move {
            let Some(connector) = connector else {
                return Discovery {
                    system: system.clone(),
                    supports: Vec::new(),
                    result: Err(format!("system \"{system}\" has no connector")),
                };
            };
            let mut attempt = 0;
            let result = loop {
                attempt += 1;
                let found = match tokio::time::timeout(timeout, connector.discover(&query)).await {
                    Ok(found) => found,
                    Err(_) => Err(deprov_core::ConnectorError::Transient(format!(
                        "discovery timed out after {}s",
                        timeout.as_secs()
                    ))),
                };
                match found {
                    Err(error) if error.kind().is_retryable() && attempt < retry.max_attempts => {
                        tokio::time::sleep(retry.backoff(
                            attempt,
                            error.retry_after(),
                            fastrand::f64(),
                        ))
                        .await;
                    }
                    other => break other.map_err(|error| error.to_string()),
                }
            };
            Discovery {
                system,
                supports: connector.supports().to_vec(),
                result,
            }
        });
    }
    let mut discoveries = Vec::new();
    while let Some(joined) = searches.join_next().await {
        if let Ok(discovery) = joined {
            discoveries.push(discovery);
        }
    }
    Ok(discoveries)
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
