//! Loading what a command needs: policy, event, secrets, connectors, the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deprov_core::audit::{AuditEntry, AuditKind};
use deprov_core::ports::{AuditLog, SecretSource};
use deprov_core::validation::Invalid;
use deprov_core::{Connector, LifecycleEvent, Policy};
use deprov_local::{LocalSecrets, SqliteStore};
use serde_json::json;

use crate::failure::Failure;

/// The database path: `--db`, else `$DEPROV_DB`, else `deprov.db` here.
pub fn db_path(db: Option<PathBuf>) -> PathBuf {
    db.unwrap_or_else(|| PathBuf::from("deprov.db"))
}

pub fn open_store(path: &Path) -> Result<Arc<SqliteStore>, Failure> {
    SqliteStore::open(path)
        .map(Arc::new)
        .map_err(Failure::failed)
}

pub fn read(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    let bytes = std::fs::read(path).map_err(|err| {
        Failure::invalid(format!("cannot read {what} file {}: {err}", path.display()))
    })?;
    if bytes.len() > 4 * 1024 * 1024 {
        return Err(Failure::invalid(format!(
            "{what} file {} is larger than 4 MiB",
            path.display()
        )));
    }
    Ok(bytes)
}

pub fn parse_policy(path: &Path, bytes: &[u8]) -> Result<Policy, Invalid> {
    let text = String::from_utf8_lossy(bytes);
    Policy::parse(&text).map_err(|mut invalid| {
        invalid.what = format!("policy {}", path.display());
        invalid
    })
}

pub fn parse_event(path: &Path, bytes: &[u8]) -> Result<LifecycleEvent, Invalid> {
    LifecycleEvent::parse(bytes).map_err(|mut invalid| {
        invalid.what = format!("event {}", path.display());
        invalid
    })
}

/// The events of an `--events` file, each with where it is (for messages): a JSON array of
/// events, or JSON Lines (one event per line; blank lines skipped).
pub fn split_events(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let text = String::from_utf8_lossy(bytes);
    if text.trim_start().starts_with('[') {
        let items: Vec<serde_json::Value> = serde_json::from_slice(bytes).map_err(|err| {
            Failure::invalid(format!(
                "{} starts like a JSON array of events but is not one: {err}",
                path.display()
            ))
        })?;
        return Ok(items
            .iter()
            .enumerate()
            .map(|(index, item)| {
                (
                    format!("event [{index}] of {}", path.display()),
                    item.to_string().into_bytes(),
                )
            })
            .collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            (
                format!("event on line {} of {}", index + 1, path.display()),
                line.as_bytes().to_vec(),
            )
        })
        .collect())
}

/// Writes the one record a refused input leaves behind: what was refused and why, keyed by
/// the document's hash (the document itself is not stored).
pub async fn record_rejection(
    store: &SqliteStore,
    path: &Path,
    bytes: &[u8],
    invalid: &Invalid,
) -> Result<(), Failure> {
    let digest = deprov_core::ids::sha256_hex(bytes);
    let subject = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|doc| {
            doc.pointer("/person/id")
                .and_then(|id| id.as_str())
                .map(str::to_string)
        })
        .filter(|id| deprov_core::validation::is_identifier(id, 128))
        .unwrap_or_else(|| "unknown".to_string());
    store
        .append(AuditEntry {
            run_id: format!("x-{}", &digest[..32]),
            key: "rejected".into(),
            kind: AuditKind::EventRejected,
            subject,
            system: None,
            task_id: None,
            detail: json!({"file": path.display().to_string(), "sha256": digest, "what": invalid.what, "problems": invalid.problems}),
        })
        .await?;
    Ok(())
}

pub fn secrets(path: Option<&Path>) -> Result<Arc<dyn SecretSource>, Failure> {
    LocalSecrets::load(path)
        .map(|secrets| Arc::new(secrets) as Arc<dyn SecretSource>)
        .map_err(Failure::invalid)
}

/// One connector per policy system.
pub fn connectors(
    policy: &Policy,
    secrets: Arc<dyn SecretSource>,
) -> Result<BTreeMap<String, Arc<dyn Connector>>, Failure> {
    let mut connectors = BTreeMap::new();
    for (name, config) in &policy.systems {
        let connector = deprov_connectors::build(name, config, Arc::clone(&secrets))
            .map_err(|err| Failure::invalid(format!("system \"{name}\": {err}")))?;
        connectors.insert(name.clone(), connector);
    }
    Ok(connectors)
}
