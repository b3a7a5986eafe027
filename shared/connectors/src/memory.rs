//! An in-memory directory behind the `Connector` trait: zero latency, for benchmarks of
//! the orchestrator and for tests that script failures (throttling, outages, refusals,
//! read-backs that disagree). It keeps the same rules as a real system: idempotent applies,
//! verification by reading its own state back.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::{
    Account, Applied, Connector, ConnectorError, Entitlement, Evidence, PersonQuery,
};
use serde_json::json;

#[derive(Clone, Debug)]
struct Entry {
    account: Account,
    sessions: u32,
    data_transferred_to: Option<String>,
    deleted: bool,
}

/// A failure to inject before the next call of one action.
#[derive(Clone, Debug)]
pub enum Fault {
    /// `apply` fails with this error.
    Apply(ConnectorError),
    /// `verify` reads back a state that does not prove the change.
    Unverified,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    by_name: HashMap<String, String>,
    faults: HashMap<(String, Action), VecDeque<Fault>>,
}

/// The system's data: shared by every connector built over it and by the test.
#[derive(Default)]
pub struct MemoryDirectory {
    state: Mutex<State>,
    changes: AtomicU64,
    calls: AtomicU64,
}

impl MemoryDirectory {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, ConnectorError> {
        self.state
            .lock()
            .map_err(|_| ConnectorError::Transient("memory directory lock poisoned".into()))
    }

    /// Adds an active account with live sessions and the given groups.
    pub fn add_account(
        &self,
        system: &str,
        id: &str,
        username: &str,
        email: &str,
        groups: &[&str],
    ) {
        let account = Account {
            system: system.to_string(),
            id: id.to_string(),
            username: username.to_string(),
            email: Some(email.to_string()),
            active: true,
            entitlements: groups
                .iter()
                .map(|group| Entitlement {
                    id: format!("grp-{group}"),
                    name: (*group).to_string(),
                    kind: "group".into(),
                })
                .collect(),
            credentials: Vec::new(),
            last_activity: None,
        };
        if let Ok(mut state) = self.state() {
            state
                .by_name
                .insert(username.to_lowercase(), id.to_string());
            state.by_name.insert(email.to_lowercase(), id.to_string());
            state.entries.insert(
                id.to_string(),
                Entry {
                    account,
                    sessions: 2,
                    data_transferred_to: None,
                    deleted: false,
                },
            );
        }
    }

    /// Sets when the account `id` was last used, as `list_accounts` reports it.
    pub fn set_last_activity(&self, id: &str, at: Option<chrono::DateTime<chrono::Utc>>) {
        if let Ok(mut state) = self.state() {
            if let Some(entry) = state.entries.get_mut(id) {
                entry.account.last_activity = at;
            }
        }
    }

    /// Queues a fault for the next call of `action` on the account `username`.
    pub fn inject(&self, username: &str, action: Action, fault: Fault) {
        if let Ok(mut state) = self.state() {
            state
                .faults
                .entry((username.to_string(), action))
                .or_default()
                .push_back(fault);
        }
    }

    /// How many applies changed something (idempotent re-applies do not count).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// How many connector calls reached the directory.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The account as it is now, if it still exists.
    pub fn account(&self, id: &str) -> Option<Account> {
        let state = self.state().ok()?;
        state
            .entries
            .get(id)
            .filter(|entry| !entry.deleted)
            .map(|entry| entry.account.clone())
    }

    /// Takes the next fault queued for this call, if it is meant for `apply` (`for_apply`)
    /// or for `verify`.
    fn take_fault(
        state: &mut State,
        username: &str,
        action: Action,
        for_apply: bool,
    ) -> Option<Fault> {
        let queue = state.faults.get_mut(&(username.to_string(), action))?;
        let matches = match queue.front()? {
            Fault::Apply(_) => for_apply,
            Fault::Unverified => !for_apply,
        };
        if matches {
            queue.pop_front()
        } else {
            None
        }
    }
}

/// One system over a [`MemoryDirectory`].
pub struct MemoryConnector {
    directory: Arc<MemoryDirectory>,
}

impl MemoryConnector {
    pub fn new(directory: Arc<MemoryDirectory>) -> Self {
        MemoryConnector { directory }
    }
}

const SUPPORTED: [StageKind; 6] = [
    StageKind::Sessions,
    StageKind::Disable,
    StageKind::Entitlements,
    StageKind::Data,
    StageKind::Delete,
    StageKind::Restore,
];

#[async_trait]
impl Connector for MemoryConnector {
    fn supports(&self) -> &[StageKind] {
        &SUPPORTED
    }

    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        self.directory.calls.fetch_add(1, Ordering::Relaxed);
        let state = self.directory.state()?;
        let mut ids = BTreeSet::new();
        for name in person.username.iter().chain(std::iter::once(&person.email)) {
            if let Some(id) = state.by_name.get(&name.to_lowercase()) {
                ids.insert(id.clone());
            }
        }
        Ok(ids
            .iter()
            .filter_map(|id| state.entries.get(id))
            .filter(|entry| !entry.deleted)
            .map(|entry| entry.account.clone())
            .collect())
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        self.directory.calls.fetch_add(1, Ordering::Relaxed);
        let mut state = self.directory.state()?;
        if let Some(Fault::Apply(error)) =
            MemoryDirectory::take_fault(&mut state, &task.account.username, task.action, true)
        {
            return Err(error);
        }
        let restoring = task.stage() == StageKind::Restore;
        let entry = match state.entries.get_mut(&task.account.id) {
            Some(entry) if restoring && entry.deleted => None,
            entry => entry,
        };
        let Some(entry) = entry else {
            if restoring {
                return Err(ConnectorError::NotFound(format!(
                    "account {} no longer exists, so it cannot be restored",
                    task.account.id
                )));
            }
            // Gone already: deleting is done, anything else has nothing left to revoke.
            return Ok(Applied::AlreadyDone);
        };
        let changed = match task.action {
            Action::RevokeSessions => std::mem::take(&mut entry.sessions) > 0,
            Action::Disable => std::mem::replace(&mut entry.account.active, false),
            Action::RemoveEntitlement => {
                let target = task.target.as_ref().map(|t| t.id.as_str()).unwrap_or("");
                let before = entry.account.entitlements.len();
                entry.account.entitlements.retain(|e| e.id != target);
                entry.account.entitlements.len() != before
            }
            Action::RemoveCredential => {
                let target = task.target.as_ref().map(|t| t.id.as_str()).unwrap_or("");
                let before = entry.account.credentials.len();
                entry.account.credentials.retain(|c| c.id != target);
                entry.account.credentials.len() != before
            }
            Action::TransferData => {
                let to = task.target.as_ref().map(|t| t.id.clone());
                let changed = entry.data_transferred_to != to;
                entry.data_transferred_to = to;
                changed
            }
            Action::Delete => !std::mem::replace(&mut entry.deleted, true),
            Action::Enable => !std::mem::replace(&mut entry.account.active, true),
            Action::RestoreEntitlement => match &task.target {
                Some(target) if !entry.account.entitlements.iter().any(|e| e.id == target.id) => {
                    entry.account.entitlements.push(Entitlement {
                        id: target.id.clone(),
                        name: target.name.clone(),
                        kind: target.kind.clone(),
                    });
                    true
                }
                _ => false,
            },
        };
        if changed {
            self.directory.changes.fetch_add(1, Ordering::Relaxed);
            Ok(Applied::Changed)
        } else {
            Ok(Applied::AlreadyDone)
        }
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        self.directory.calls.fetch_add(1, Ordering::Relaxed);
        let mut state = self.directory.state()?;
        if let Some(Fault::Unverified) =
            MemoryDirectory::take_fault(&mut state, &task.account.username, task.action, false)
        {
            return Ok(Evidence {
                verified: false,
                observed: json!({"account": task.account.id, "note": "read-back disagrees"}),
            });
        }
        let Some(entry) = state.entries.get(&task.account.id) else {
            return Ok(Evidence {
                // Gone proves a removal, never a restore.
                verified: task.stage() != StageKind::Restore,
                observed: json!({"account": task.account.id, "exists": false}),
            });
        };
        let target = task.target.as_ref().map(|t| t.id.as_str()).unwrap_or("");
        let (verified, observed) = match task.action {
            Action::RevokeSessions => (entry.sessions == 0, json!({"sessions": entry.sessions})),
            Action::Disable => (
                !entry.account.active,
                json!({"active": entry.account.active}),
            ),
            Action::RemoveEntitlement => {
                let held = entry.account.entitlements.iter().any(|e| e.id == target);
                (!held, json!({"member_of": target, "member": held}))
            }
            Action::RemoveCredential => {
                let held = entry.account.credentials.iter().any(|c| c.id == target);
                (!held, json!({"credential": target, "present": held}))
            }
            Action::TransferData => (
                entry.data_transferred_to.as_deref() == Some(target),
                json!({"data_owner": entry.data_transferred_to}),
            ),
            Action::Delete => (entry.deleted, json!({"exists": !entry.deleted})),
            Action::Enable => (
                entry.account.active && !entry.deleted,
                json!({"active": entry.account.active, "exists": !entry.deleted}),
            ),
            Action::RestoreEntitlement => {
                let held = entry.account.entitlements.iter().any(|e| e.id == target);
                (
                    held && !entry.deleted,
                    json!({"member_of": target, "member": held}),
                )
            }
        };
        Ok(Evidence {
            verified,
            observed: json!({"account": task.account.id, "read": observed}),
        })
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let state = self.directory.state()?;
        let mut accounts: Vec<Account> = state
            .entries
            .values()
            .filter(|entry| !entry.deleted)
            .map(|entry| entry.account.clone())
            .collect();
        accounts.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(accounts)
    }
}
