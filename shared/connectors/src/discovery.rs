//! Discovery: looking for a person on every system in scope before planning.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deprov_core::plan::{systems_in_scope, Discovery, PlanError};
use deprov_core::policy::{MatchBy, Policy};
use deprov_core::{Connector, LifecycleEvent, PersonQuery};

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
