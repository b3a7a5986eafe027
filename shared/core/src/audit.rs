//! The tamper-evident audit trail: per run, records numbered from 1, each holding the hash
//! of the one before; the run's head (last seq and hash) is kept apart from the records so
//! that cutting records off the end is caught too.

use chrono::{DateTime, SubsecRound, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::canonical;

/// The previous hash of a run's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// An event or policy was refused before anything ran.
    EventRejected,
    /// The plan, with the policy version and the accounts' pre-state.
    PlanRecorded,
    /// The planner refused the run (blast radius, no scenario).
    PlanRefused,
    /// A task finished: verified with its evidence, escalated with its error, or cancelled.
    TaskCompleted,
    /// A stage's tally.
    StageCompleted,
    /// A stage waits for its `not_before`.
    StageDeferred,
    /// A rehire or cancel stopped this run's pending stages.
    RunCancelled,
    /// The run of a rehire or cancel: which of the person's runs it stopped.
    RunsStopped,
    /// The run waits for a person's approval, and why.
    ApprovalRequested,
    /// Approved or denied, by whom, and why.
    ApprovalDecided,
    /// Nobody decided in time: nothing was changed, the run escalates.
    ApprovalTimedOut,
    /// The run's summary; escalations listed.
    RunFinished,
    /// The brake held a trigger back: nothing ran (the quarantine's record, and each held
    /// run's).
    Quarantined,
    /// Someone released a quarantine; its runs start.
    QuarantineApproved,
    /// Someone refused a quarantine; its runs never start.
    QuarantineDenied,
}

/// What a caller asks the audit log to append; the log numbers and chains it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub run_id: String,
    /// Unique within the run: appending the same key again returns the first record, so a
    /// retried or resumed step never writes twice.
    pub key: String,
    pub kind: AuditKind,
    /// The person the record is about.
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub detail: Value,
}

/// What a record says: everything but its place in the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Body {
    pub run_id: String,
    pub key: String,
    pub kind: AuditKind,
    pub at: DateTime<Utc>,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    pub detail: Value,
}

impl Body {
    /// SHA-256 of the canonical encoding.
    pub fn hash(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        hex::encode(Sha256::digest(canonical::to_vec(&value)))
    }
}

/// A record as stored: its content and its link in the run's chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditRecord {
    #[serde(flatten)]
    pub body: Body,
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
}

/// The last record of a run's chain, stored apart from the records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

/// Where and why a chain stopped proving itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("audit chain of run {run_id} is broken at seq {seq}: {reason}")]
pub struct ChainBreak {
    pub run_id: String,
    pub seq: u64,
    pub reason: String,
}

/// An entry with its time and content hash, ready to be chained. Sealing (the expensive
/// part: canonical encoding and hashing of the detail) happens before the entry reaches the
/// log's single writer, which then only links it.
#[derive(Clone, Debug, PartialEq)]
pub struct SealedEntry {
    pub body: Body,
    pub body_hash: String,
}

/// The chain link: SHA-256 over the record's position, its predecessor's hash and its
/// content hash.
pub fn link_hash(seq: u64, prev_hash: &str, body_hash: &str) -> String {
    let link = json!({"seq": seq, "prev_hash": prev_hash, "body_hash": body_hash});
    hex::encode(Sha256::digest(canonical::to_vec(&link)))
}

impl AuditEntry {
    /// Stamps the entry with its time (microseconds, which every store round-trips) and
    /// hashes its content.
    pub fn seal(self, at: DateTime<Utc>) -> SealedEntry {
        let body = Body {
            run_id: self.run_id,
            key: self.key,
            kind: self.kind,
            at: at.trunc_subsecs(6),
            subject: self.subject,
            system: self.system,
            task_id: self.task_id,
            detail: self.detail,
        };
        SealedEntry {
            body_hash: body.hash(),
            body,
        }
    }
}

impl SealedEntry {
    /// Links the entry after `head` (`None` for a run's first record).
    pub fn link(self, head: Option<&ChainHead>) -> AuditRecord {
        let seq = head.map_or(1, |head| head.seq + 1);
        let prev_hash = head.map_or_else(|| GENESIS.to_string(), |head| head.hash.clone());
        AuditRecord {
            hash: link_hash(seq, &prev_hash, &self.body_hash),
            body: self.body,
            seq,
            prev_hash,
        }
    }
}

impl AuditRecord {
    /// Seals and chains `entry` after `head` (`None` for a run's first record).
    pub fn chain(entry: AuditEntry, head: Option<&ChainHead>, at: DateTime<Utc>) -> AuditRecord {
        entry.seal(at).link(head)
    }

    /// The hash the record should carry, recomputed from its content and position.
    pub fn compute_hash(&self) -> String {
        link_hash(self.seq, &self.prev_hash, &self.body.hash())
    }

    pub fn head(&self) -> ChainHead {
        ChainHead {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// Checks a run's records in stored order against each other and against the stored head.
/// Any modified, deleted, inserted or reordered record breaks it; the error names the first
/// seq that does not hold.
pub fn verify_chain(
    run_id: &str,
    records: &[AuditRecord],
    head: Option<&ChainHead>,
) -> Result<Option<ChainHead>, ChainBreak> {
    let broken = |seq: u64, reason: String| ChainBreak {
        run_id: run_id.to_string(),
        seq,
        reason,
    };
    let mut previous: Option<&AuditRecord> = None;
    for (index, record) in records.iter().enumerate() {
        let expected = index as u64 + 1;
        if record.seq != expected {
            return Err(broken(
                expected,
                format!("expected seq {expected} here, found seq {} (a record was deleted, inserted or moved)", record.seq),
            ));
        }
        if record.body.run_id != run_id {
            return Err(broken(
                expected,
                format!("record belongs to run {}", record.body.run_id),
            ));
        }
        let expected_prev = previous.map_or(GENESIS, |previous| previous.hash.as_str());
        if record.prev_hash != expected_prev {
            return Err(broken(
                expected,
                "prev_hash does not match the previous record's hash".into(),
            ));
        }
        if record.compute_hash() != record.hash {
            return Err(broken(
                expected,
                "contents do not match the record's hash (modified)".into(),
            ));
        }
        previous = Some(record);
    }
    let last = previous.map(AuditRecord::head);
    match (head, &last) {
        (None, _) => Ok(last),
        (Some(head), Some(last)) if head == last => Ok(Some(last.clone())),
        (Some(head), last) => {
            let last_seq = last.as_ref().map_or(0, |last| last.seq);
            let (seq, reason) = match last_seq.cmp(&head.seq) {
                std::cmp::Ordering::Less => (last_seq + 1, "records were cut off the end"),
                std::cmp::Ordering::Greater => (head.seq + 1, "records were added past the end"),
                std::cmp::Ordering::Equal => (head.seq, "the records were rewritten"),
            };
            Err(broken(
                seq,
                format!("the run's stored head is seq {} but the records end at seq {last_seq}: {reason}", head.seq),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(index: usize, detail: &str) -> AuditEntry {
        AuditEntry {
            run_id: "r-1".into(),
            key: format!("k{index}"),
            kind: AuditKind::TaskCompleted,
            subject: "E1".into(),
            system: Some("crm".into()),
            task_id: Some(format!("t-{index}")),
            detail: json!({"note": detail, "n": index}),
        }
    }

    fn build(details: &[String]) -> Vec<AuditRecord> {
        let mut records: Vec<AuditRecord> = Vec::new();
        let start = DateTime::<Utc>::from_timestamp(1_790_000_000, 123_456_789).unwrap_or_default();
        for (index, detail) in details.iter().enumerate() {
            let head = records.last().map(AuditRecord::head);
            records.push(AuditRecord::chain(
                entry(index, detail),
                head.as_ref(),
                start + chrono::Duration::milliseconds(index as i64),
            ));
        }
        records
    }

    #[test]
    fn an_intact_chain_verifies_and_survives_json() {
        let records = build(&["a".into(), "b".into(), "c".into()]);
        let json = serde_json::to_string(&records).unwrap_or_default();
        let back: Vec<AuditRecord> = serde_json::from_str(&json).unwrap_or_default();
        let head = records.last().map(AuditRecord::head);
        assert_eq!(verify_chain("r-1", &back, head.as_ref()), Ok(head.clone()));
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Modify(usize, String),
        Delete(usize),
        InsertForged(usize),
        Swap(usize, usize),
        Truncate(usize),
        RehashFrom(usize, String),
    }

    fn mutation(len: usize) -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (0..len, "[a-z]{1,8}").prop_map(|(i, s)| Mutation::Modify(i, s)),
            (0..len).prop_map(Mutation::Delete),
            (0..=len).prop_map(Mutation::InsertForged),
            (0..len, 0..len)
                .prop_filter("distinct", |(a, b)| a != b)
                .prop_map(|(a, b)| Mutation::Swap(a.min(b), a.max(b))),
            (0..len).prop_map(Mutation::Truncate),
            (0..len, "[a-z]{1,8}").prop_map(|(i, s)| Mutation::RehashFrom(i, s)),
        ]
    }

    proptest! {
        #[test]
        fn every_tampering_is_detected_and_located(
            (details, mutation) in proptest::collection::vec("[a-z]{0,6}", 2..24)
                .prop_flat_map(|details| { let len = details.len(); (Just(details), mutation(len)) })
        ) {
            let original = build(&details);
            let head = original.last().map(AuditRecord::head);
            let mut records = original.clone();
            // The earliest seq the mutation touches: the break must be reported there.
            let first_touched = match &mutation {
                Mutation::Modify(i, text) => {
                    let before = records[*i].body.detail.clone();
                    records[*i].body.detail = json!({"note": format!("{text}!"), "was": before});
                    *i as u64 + 1
                }
                Mutation::Delete(i) => { records.remove(*i); *i as u64 + 1 }
                Mutation::InsertForged(i) => {
                    let prev = if *i == 0 { None } else { Some(records[*i - 1].head()) };
                    let forged = AuditRecord::chain(entry(99, "forged"), prev.as_ref(), Utc::now());
                    records.insert(*i, forged);
                    *i as u64 + 1
                }
                Mutation::Swap(a, b) => { records.swap(*a, *b); *a as u64 + 1 }
                Mutation::Truncate(n) => { records.truncate(*n); *n as u64 + 1 }
                Mutation::RehashFrom(i, text) => {
                    // A forger who rewrites a record and re-hashes everything after it.
                    records[*i].body.detail = json!({"note": text.clone(), "forged": true});
                    for j in *i..records.len() {
                        if j > 0 { records[j].prev_hash = records[j - 1].hash.clone(); }
                        records[j].hash = records[j].compute_hash();
                    }
                    *i as u64 + 1
                }
            };
            let result = verify_chain("r-1", &records, head.as_ref());
            let broken = result.expect_err("tampering went unnoticed");
            match mutation {
                // Inserting a correctly chained record shifts what follows: the break is at
                // the inserted seq or the one after it, or at the head.
                Mutation::InsertForged(_) => prop_assert!(broken.seq >= first_touched && broken.seq <= first_touched + 1, "{broken}"),
                // Only the stored head catches a re-hashed tail; it names the first seq past the
                // records it still vouches for, which is never later than the last record.
                Mutation::RehashFrom(..) => prop_assert!(broken.seq <= details.len() as u64, "{broken}"),
                _ => prop_assert_eq!(broken.seq, first_touched, "{}", broken),
            }
        }
    }
}
