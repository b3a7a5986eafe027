//! A quarantine: what the brake held back. Nothing of it executes until someone approves it
//! (`deprov approve`), and a denial ends it. Stored as `QUARANTINE#<id>` in the runs store;
//! its creation and its decision are audited (`journal`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::brake::{Breach, Exposure, Trigger};
use crate::flow::RunInput;
use crate::ids;
use crate::journal;
use crate::ports::{AuditLog, Decided, RunStore, StoreError};
use crate::validation::is_identifier;

/// Where a quarantine stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineStatus {
    /// Waiting for a decision; nothing ran.
    Pending,
    /// Released: its runs were started.
    Approved,
    /// Refused: none of its runs will start.
    Denied,
}

impl QuarantineStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineStatus::Pending => "pending",
            QuarantineStatus::Approved => "approved",
            QuarantineStatus::Denied => "denied",
        }
    }
}

/// Who released or refused a quarantine, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

impl Decision {
    /// A decision as an operator gives it; every problem says what to fix.
    pub fn new(by: &str, reason: &str, at: DateTime<Utc>) -> Result<Decision, String> {
        let by = by.trim();
        let reason = reason.trim();
        let mut problems = Vec::new();
        if !is_identifier(by, 128) && !crate::event::looks_like_email(by) {
            problems
                .push("--by must name who decides: an email or 1-128 letters, digits or . _ : @ -");
        }
        if reason.is_empty() || reason.len() > 1000 {
            problems.push("--reason must say why, in 1 to 1000 characters; auditors ask");
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Decision {
            by: by.to_string(),
            reason: reason.to_string(),
            at,
        })
    }
}

/// What the brake held back, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    pub quarantine_id: String,
    pub trigger: Trigger,
    pub created_at: DateTime<Utc>,
    pub policy_version: String,
    /// The limits exceeded.
    pub breaches: Vec<Breach>,
    /// What it would have acted on, per system.
    pub exposures: Vec<Exposure>,
    /// The runs it holds, started only on approval.
    pub runs: Vec<RunInput>,
    pub status: QuarantineStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

impl Quarantine {
    /// A pending quarantine. Its id derives from the trigger and the runs it holds, so the
    /// same sweep held again (tomorrow's, finding the same accounts) is the same quarantine.
    pub fn new(
        trigger: Trigger,
        policy_version: &str,
        breaches: Vec<Breach>,
        exposures: Vec<Exposure>,
        runs: Vec<RunInput>,
        now: DateTime<Utc>,
    ) -> Quarantine {
        let mut run_ids: Vec<String> = runs
            .iter()
            .map(|input| ids::run_id(&input.event.source, &input.event.event_id))
            .collect();
        run_ids.sort();
        let digest =
            ids::sha256_hex(format!("{}\0{}", trigger.as_str(), run_ids.join("\0")).as_bytes());
        Quarantine {
            quarantine_id: format!("q-{}", &digest[..24]),
            trigger,
            created_at: now,
            policy_version: policy_version.to_string(),
            breaches,
            exposures,
            runs,
            status: QuarantineStatus::Pending,
            decision: None,
        }
    }

    /// The run ids it holds, in its order.
    pub fn run_ids(&self) -> Vec<String> {
        self.runs
            .iter()
            .map(|input| ids::run_id(&input.event.source, &input.event.event_id))
            .collect()
    }

    /// Accounts it would act on, all systems together.
    pub fn accounts(&self) -> usize {
        self.exposures.iter().map(|e| e.accounts).sum()
    }

    /// One line for an alert: the id, what is held and why.
    pub fn alert(&self) -> String {
        let why: Vec<&str> = self.breaches.iter().map(|b| b.message.as_str()).collect();
        format!(
            "QUARANTINED {}: {} run(s) held, nothing executed: {}. Release with `deprov approve {} --by <who> --reason <why>` or drop with `deprov deny {} --by <who> --reason <why>`",
            self.quarantine_id,
            self.runs.len(),
            why.join("; "),
            self.quarantine_id,
            self.quarantine_id
        )
    }
}

/// Stores a quarantine and audits it; when it was stored before, returns the stored one
/// (and completes its audit records, should an earlier attempt have stopped between).
pub async fn hold(
    store: &dyn RunStore,
    audit: &dyn AuditLog,
    quarantine: &Quarantine,
) -> Result<Quarantine, StoreError> {
    let stored = store.put_quarantine(quarantine).await?;
    audit.append_batch(journal::quarantined(&stored)).await?;
    Ok(stored)
}

/// Approves or denies a pending quarantine and audits the decision. A quarantine decided
/// before keeps its first decision (whose audit records are completed if missing).
pub async fn decide(
    store: &dyn RunStore,
    audit: &dyn AuditLog,
    id: &str,
    status: QuarantineStatus,
    decision: &Decision,
) -> Result<Decided, StoreError> {
    let decided = store.decide_quarantine(id, status, decision).await?;
    if let Decided::Now(quarantine) | Decided::Before(quarantine) = &decided {
        audit
            .append_batch(journal::quarantine_decided(quarantine))
            .await?;
    }
    Ok(decided)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_event;

    #[test]
    fn the_same_runs_held_again_are_the_same_quarantine() {
        let now = Utc::now();
        let first = sample_event();
        let mut second = sample_event();
        second.event_id = "hr-1002".into();
        let input = |event| RunInput {
            event,
            dry_run: false,
        };
        let one = Quarantine::new(
            Trigger::Sweep,
            "v1",
            Vec::new(),
            Vec::new(),
            vec![input(first.clone()), input(second.clone())],
            now,
        );
        let again = Quarantine::new(
            Trigger::Sweep,
            "v1",
            Vec::new(),
            Vec::new(),
            vec![input(second), input(first.clone())],
            now + chrono::Duration::days(1),
        );
        assert_eq!(one.quarantine_id, again.quarantine_id);
        let fewer = Quarantine::new(
            Trigger::Sweep,
            "v1",
            Vec::new(),
            Vec::new(),
            vec![input(first)],
            now,
        );
        assert_ne!(one.quarantine_id, fewer.quarantine_id);
        assert!(one
            .alert()
            .contains(&format!("deprov approve {}", one.quarantine_id)));
    }

    #[tokio::test]
    async fn holding_and_deciding_are_stored_and_audited_once() {
        use crate::audit::AuditKind;
        use crate::testing::MemoryStore;
        let store = MemoryStore::default();
        let event = sample_event();
        let run_id = ids::run_id(&event.source, &event.event_id);
        let quarantine = Quarantine::new(
            Trigger::Sweep,
            "v1",
            Vec::new(),
            Vec::new(),
            vec![RunInput {
                event,
                dry_run: false,
            }],
            Utc::now(),
        );
        let id = quarantine.quarantine_id.clone();
        hold(&store, &store, &quarantine).await.unwrap();
        hold(&store, &store, &quarantine).await.unwrap();
        let decision = Decision::new("grace", "the list is right", Utc::now()).unwrap();
        let approved = decide(&store, &store, &id, QuarantineStatus::Approved, &decision)
            .await
            .unwrap();
        assert!(matches!(approved, Decided::Now(_)));
        let denied = decide(&store, &store, &id, QuarantineStatus::Denied, &decision)
            .await
            .unwrap();
        assert!(matches!(denied, Decided::Before(q) if q.status == QuarantineStatus::Approved));
        let expected = [AuditKind::Quarantined, AuditKind::QuarantineApproved];
        for run in [&id, &run_id] {
            let records = store.records(run).await.unwrap();
            let kinds: Vec<AuditKind> = records.iter().map(|r| r.body.kind).collect();
            assert_eq!(kinds, expected, "{run}");
        }
    }

    #[test]
    fn a_decision_needs_who_and_why() {
        let now = Utc::now();
        assert!(Decision::new("grace@example.com", "checked the list", now).is_ok());
        let err = Decision::new(" ", "", now).unwrap_err();
        assert!(err.contains("--by must name who decides"), "{err}");
        assert!(err.contains("--reason must say why"), "{err}");
    }
}
