//! Deterministic identifiers: the same inputs always give the same ids, which is what makes
//! duplicate deliveries and restarts harmless.

use sha2::{Digest, Sha256};

/// Hex SHA-256 of the parts, each followed by a NUL so `("ab","c")` and `("a","bc")` differ.
fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(hasher.finalize())
}

/// Hex SHA-256 of a document (rejection records name refused inputs by it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Run id from the event's source and id. Valid as a Step Functions execution name
/// (`[A-Za-z0-9-_]`, ≤ 80 chars), so a duplicate HR delivery cannot start a second run.
pub fn run_id(source: &str, event_id: &str) -> String {
    format!("r-{}", &digest(&[source, event_id])[..32])
}

/// Task id from the run, the system, the action and its target.
pub fn task_id(run_id: &str, system: &str, action: &str, account_id: &str, target: &str) -> String {
    format!(
        "t-{}",
        &digest(&[run_id, system, action, account_id, target])[..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_separate_their_parts() {
        assert_eq!(run_id("hr", "1"), run_id("hr", "1"));
        assert_ne!(run_id("hr", "12"), run_id("hr1", "2"));
        assert_eq!(run_id("hr", "1").len(), 34);
        assert_ne!(
            task_id("r", "a", "b", "c", ""),
            task_id("r", "a", "bc", "", "")
        );
    }
}
