//! The sweep in one process: list every system's accounts through the connectors, judge
//! them by core's rules (inactive, orphan, exemptions, the brake), then either hold the runs
//! in a quarantine or start them through the engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deprov_core::brake::Trigger;
use deprov_core::people::PersonRecord;
use deprov_core::ports::{AuditLog, RunStore};
use deprov_core::quarantine::{self, Quarantine};
use deprov_core::sweep::{self, SweepReport};
use deprov_core::{Connector, Policy};

use crate::engine::{Engine, EngineError, RunReport};

/// Systems listed at once.
const LISTINGS_AT_ONCE: usize = 4;

/// Lists every connector's accounts and judges them against `policy` and `people` at `now`.
/// Read-only.
pub async fn find(
    policy: &Policy,
    connectors: &BTreeMap<String, Arc<dyn Connector>>,
    people: &[PersonRecord],
    now: DateTime<Utc>,
    listing_timeout: Duration,
) -> SweepReport {
    let listings =
        deprov_connectors::list_all(connectors, &policy.retry, listing_timeout, LISTINGS_AT_ONCE)
            .await;
    sweep::sweep(policy, &listings, people, now)
}

/// What acting on a sweep came to.
#[derive(Debug)]
pub enum Acted {
    /// The brake held every run; nothing executed.
    Quarantined(Box<Quarantine>),
    /// The runs, started (or resumed, when an earlier sweep started them).
    Started(Vec<RunReport>),
}

/// Acts on a sweep's findings: over the brake's limits, every run is held in one quarantine
/// (stored and audited); within them, every run is submitted to the engine.
pub async fn act(
    engine: &Engine,
    store: &dyn RunStore,
    audit: &dyn AuditLog,
    report: &SweepReport,
    now: DateTime<Utc>,
) -> Result<Acted, EngineError> {
    let runs = report.run_inputs();
    if !report.brake.is_clear() {
        let held = Quarantine::new(
            Trigger::Sweep,
            &report.policy_version,
            report.brake.breaches().to_vec(),
            report.exposures(),
            runs,
            now,
        );
        let stored = quarantine::hold(store, audit, &held).await?;
        return Ok(Acted::Quarantined(Box::new(stored)));
    }
    let events: Vec<_> = runs.into_iter().map(|input| input.event).collect();
    Ok(Acted::Started(engine.submit_many(&events).await?))
}

/// Starts the runs of an approved quarantine; runs started before resume instead.
pub async fn release(
    engine: &Engine,
    quarantine: &Quarantine,
) -> Result<Vec<RunReport>, EngineError> {
    let events: Vec<_> = quarantine
        .runs
        .iter()
        .map(|input| input.event.clone())
        .collect();
    engine.submit_many(&events).await
}
