//! The planner: event + discovered accounts + policy → a `Plan` of stages in kill order.
//!
//! Pure and deterministic: the same inputs give the same plan, byte for byte, whatever
//! order the discoveries arrived in.

use std::collections::BTreeSet;

use chrono::{DateTime, FixedOffset};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::connector::{Account, Entitlement};
use crate::event::{EventKind, LifecycleEvent};
use crate::ids;
use crate::policy::Policy;

/// The stages, in the order access must be killed: first whatever is live (sessions and
/// tokens), then the door (the account), then what the account could reach, then the keys
/// that bypass SSO, then data hand-over, and only at the end anything destructive.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    Sessions,
    Disable,
    Entitlements,
    Credentials,
    Data,
    Delete,
    /// Not part of the kill order: a rehire's or cancel's run re-enables accounts and
    /// re-adds entitlements that an earlier run removed.
    Restore,
}

impl StageKind {
    pub const KILL_ORDER: [StageKind; 6] = [
        StageKind::Sessions,
        StageKind::Disable,
        StageKind::Entitlements,
        StageKind::Credentials,
        StageKind::Data,
        StageKind::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Sessions => "sessions",
            StageKind::Disable => "disable",
            StageKind::Entitlements => "entitlements",
            StageKind::Credentials => "credentials",
            StageKind::Data => "data",
            StageKind::Delete => "delete",
            StageKind::Restore => "restore",
        }
    }

    /// 1-based position in the kill order (restore, outside it, is 7).
    pub fn number(self) -> u8 {
        self as u8 + 1
    }
}

/// What one task does to one account.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    RevokeSessions,
    Disable,
    RemoveEntitlement,
    RemoveCredential,
    TransferData,
    Delete,
    /// Restore: the account is active again.
    Enable,
    /// Restore: the entitlement (the task's target) is granted again.
    RestoreEntitlement,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::RevokeSessions => "revoke_sessions",
            Action::Disable => "disable",
            Action::RemoveEntitlement => "remove_entitlement",
            Action::RemoveCredential => "remove_credential",
            Action::TransferData => "transfer_data",
            Action::Delete => "delete",
            Action::Enable => "enable",
            Action::RestoreEntitlement => "restore_entitlement",
        }
    }

    pub fn stage(self) -> StageKind {
        match self {
            Action::RevokeSessions => StageKind::Sessions,
            Action::Disable => StageKind::Disable,
            Action::RemoveEntitlement => StageKind::Entitlements,
            Action::RemoveCredential => StageKind::Credentials,
            Action::TransferData => StageKind::Data,
            Action::Delete => StageKind::Delete,
            Action::Enable | Action::RestoreEntitlement => StageKind::Restore,
        }
    }
}

/// The account a task acts on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountRef {
    pub id: String,
    pub username: String,
}

/// What inside the account a task removes (an entitlement or a credential), or where data
/// goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Target {
    pub id: String,
    pub name: String,
    pub kind: String,
}

/// One action on one account of one system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Task {
    pub task_id: String,
    pub run_id: String,
    pub system: String,
    pub action: Action,
    pub account: AccountRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// The person the run is about (for logs and the audit subject).
    pub person_id: String,
}

impl Task {
    pub fn stage(&self) -> StageKind {
        self.action.stage()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Stage {
    pub stage: StageKind,
    /// Nothing in this stage starts before this time.
    pub not_before: DateTime<FixedOffset>,
    pub tasks: Vec<Task>,
}

/// Something the plan deliberately does not do, and why. Part of the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Skipped {
    pub system: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageKind>,
    pub reason: String,
}

/// A system that could not be searched: the run cannot claim the person is fully
/// deprovisioned, so it escalates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Unreachable {
    pub system: String,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    pub run_id: String,
    pub event: LifecycleEvent,
    pub scenario: String,
    pub policy_version: String,
    /// Accounts as found before any change: the pre-state a rehire restores.
    pub accounts: Vec<Account>,
    pub stages: Vec<Stage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<Unreachable>,
    /// The runs this run stopped (a rehire's or cancel's), whose work it restores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stops: Vec<String>,
    /// Why this run waits for a person's approval before its first stage (the scenario or
    /// a system it changes is marked `approval = true`); empty when it does not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval: Vec<String>,
}

impl Plan {
    pub fn task_count(&self) -> usize {
        self.stages.iter().map(|stage| stage.tasks.len()).sum()
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.stages.iter().flat_map(|stage| stage.tasks.iter())
    }
}

/// What discovery found on one system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    pub system: String,
    /// The stages the system's connector can carry out.
    pub supports: Vec<StageKind>,
    /// The accounts found, or why the search failed.
    pub result: Result<Vec<Account>, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the policy has no scenario for a \"{0}\" event; add [scenarios.{0}]")]
    NoScenario(String),
    #[error("a \"{0}\" event stops earlier runs; it has no plan of its own")]
    StopsRuns(String),
    #[error(
        "the event names system \"{system}\", which the policy does not define (systems: {known})"
    )]
    UnknownSystem { system: String, known: String },
    #[error("this run would touch {count} accounts, above limits.max_accounts_per_run = {limit}; refused")]
    TooManyAccounts { count: usize, limit: u32 },
    #[error(
        "this run would have {count} tasks, above limits.max_tasks_per_run = {limit}; refused"
    )]
    TooManyTasks { count: usize, limit: u32 },
}

/// The systems an event concerns: the policy's, narrowed to `event.systems` when given.
pub fn systems_in_scope<'p>(
    event: &LifecycleEvent,
    policy: &'p Policy,
) -> Result<Vec<&'p str>, PlanError> {
    for system in &event.systems {
        if !policy.systems.contains_key(system) {
            return Err(PlanError::UnknownSystem {
                system: system.clone(),
                known: policy
                    .systems
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(policy
        .systems
        .keys()
        .filter(|name| event.systems.is_empty() || event.systems.contains(name))
        .map(String::as_str)
        .collect())
}

/// Builds the plan. Discoveries may come in any order; the plan does not depend on it.
pub fn build_plan(
    event: &LifecycleEvent,
    policy: &Policy,
    discoveries: &[Discovery],
) -> Result<Plan, PlanError> {
    if event.kind.stops_pending_runs() {
        return Err(PlanError::StopsRuns(event.kind.as_str().to_string()));
    }
    let (scenario_name, scenario) = policy
        .scenario_for(event)
        .ok_or_else(|| PlanError::NoScenario(event.kind.as_str().to_string()))?;
    let run_id = ids::run_id(&event.source, &event.event_id);
    let scope = systems_in_scope(event, policy)?;

    let mut sorted: Vec<&Discovery> = discoveries
        .iter()
        .filter(|discovery| scope.contains(&discovery.system.as_str()))
        .collect();
    sorted.sort_by(|a, b| a.system.cmp(&b.system));

    let revoked_entitlements = |system: &str| -> Option<BTreeSet<String>> {
        // A mover keeps what the new roles grant; only the difference is revoked.
        (event.kind == EventKind::Transfer).then(|| {
            let transfer = event.transfer.as_ref();
            let old = policy.entitlements_of(
                transfer.map(|t| t.from_roles.as_slice()).unwrap_or(&[]),
                system,
            );
            let new = policy.entitlements_of(
                transfer.map(|t| t.to_roles.as_slice()).unwrap_or(&[]),
                system,
            );
            old.into_iter().filter(|name| !new.contains(name)).collect()
        })
    };

    let mut accounts = Vec::new();
    let mut tasks: Vec<Task> = Vec::new();
    let mut skipped = Vec::new();
    let mut unreachable = Vec::new();
    for discovery in sorted {
        let system = discovery.system.as_str();
        let found = match &discovery.result {
            Ok(found) => found,
            Err(error) => {
                unreachable.push(Unreachable {
                    system: system.to_string(),
                    error: error.clone(),
                });
                continue;
            }
        };
        let stages: Vec<StageKind> = match scenario.overrides.get(system) {
            Some(over) => over.stages.clone(),
            None => scenario.stages.clone(),
        };
        let mut found: Vec<&Account> = found.iter().collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found.dedup_by(|a, b| a.id == b.id);
        for account in found {
            if let Some(exemption) =
                policy.exemption_for(system, &account.username, account.email.as_deref())
            {
                skipped.push(Skipped {
                    system: system.to_string(),
                    account: Some(account.username.clone()),
                    stage: None,
                    reason: format!("exempt: {}", exemption.reason),
                });
                continue;
            }
            let mut account = account.clone();
            account.entitlements.sort();
            account.credentials.sort();
            let task = |action: Action, target: Option<Target>| Task {
                task_id: ids::task_id(
                    &run_id,
                    system,
                    action.as_str(),
                    &account.id,
                    target.as_ref().map(|t| t.id.as_str()).unwrap_or(""),
                ),
                run_id: run_id.clone(),
                system: system.to_string(),
                action,
                account: AccountRef {
                    id: account.id.clone(),
                    username: account.username.clone(),
                },
                target,
                person_id: event.person.id.clone(),
            };
            for stage in StageKind::KILL_ORDER {
                if !stages.contains(&stage) {
                    continue;
                }
                if !discovery.supports.contains(&stage) {
                    skipped.push(Skipped {
                        system: system.to_string(),
                        account: Some(account.username.clone()),
                        stage: Some(stage),
                        reason: format!(
                            "the {system} connector has no \"{}\" stage",
                            stage.as_str()
                        ),
                    });
                    continue;
                }
                match stage {
                    StageKind::Sessions => tasks.push(task(Action::RevokeSessions, None)),
                    StageKind::Disable => tasks.push(task(Action::Disable, None)),
                    StageKind::Entitlements => {
                        let only = revoked_entitlements(system);
                        for entitlement in &account.entitlements {
                            if only.as_ref().is_some_and(|only| !grants(only, entitlement)) {
                                continue;
                            }
                            tasks.push(task(
                                Action::RemoveEntitlement,
                                Some(Target {
                                    id: entitlement.id.clone(),
                                    name: entitlement.name.clone(),
                                    kind: entitlement.kind.clone(),
                                }),
                            ));
                        }
                    }
                    StageKind::Credentials => {
                        for credential in &account.credentials {
                            tasks.push(task(
                                Action::RemoveCredential,
                                Some(Target {
                                    id: credential.id.clone(),
                                    name: credential
                                        .name
                                        .clone()
                                        .unwrap_or_else(|| credential.id.clone()),
                                    kind: credential.kind.clone(),
                                }),
                            ));
                        }
                    }
                    StageKind::Data => match &event.person.manager_email {
                        Some(manager) => tasks.push(task(
                            Action::TransferData,
                            Some(Target {
                                id: manager.clone(),
                                name: manager.clone(),
                                kind: "user".into(),
                            }),
                        )),
                        None => skipped.push(Skipped {
                            system: system.to_string(),
                            account: Some(account.username.clone()),
                            stage: Some(stage),
                            reason: "the event names no manager_email to hand data over to".into(),
                        }),
                    },
                    StageKind::Delete => tasks.push(task(Action::Delete, None)),
                    // Policy validation keeps it out of scenarios.
                    StageKind::Restore => {}
                }
            }
            accounts.push(account);
        }
    }

    let touched: BTreeSet<(&str, &str)> = tasks
        .iter()
        .map(|task| (task.system.as_str(), task.account.id.as_str()))
        .collect();
    if touched.len() > policy.limits.max_accounts_per_run as usize {
        return Err(PlanError::TooManyAccounts {
            count: touched.len(),
            limit: policy.limits.max_accounts_per_run,
        });
    }
    if tasks.len() > policy.limits.max_tasks_per_run as usize {
        return Err(PlanError::TooManyTasks {
            count: tasks.len(),
            limit: policy.limits.max_tasks_per_run,
        });
    }

    // Each stage starts no earlier than the previous one and its own delay.
    let mut stages = Vec::new();
    let mut not_before = event.effective_at;
    for kind in StageKind::KILL_ORDER {
        let stage_tasks: Vec<Task> = tasks
            .iter()
            .filter(|task| task.stage() == kind)
            .cloned()
            .collect();
        if stage_tasks.is_empty() {
            continue;
        }
        if let Some(delay) = scenario.delays.get(&kind) {
            let delayed = event.effective_at
                + chrono::Duration::from_std(delay.0).unwrap_or(chrono::Duration::MAX);
            not_before = not_before.max(delayed);
        }
        stages.push(Stage {
            stage: kind,
            not_before,
            tasks: stage_tasks,
        });
    }

    let mut approval = Vec::new();
    if scenario.approval && !tasks.is_empty() {
        approval.push(format!(
            "scenario \"{scenario_name}\" is marked approval = true"
        ));
    }
    let changed: BTreeSet<&str> = tasks.iter().map(|task| task.system.as_str()).collect();
    for system in changed {
        if policy
            .systems
            .get(system)
            .is_some_and(|config| config.approval)
        {
            approval.push(format!("system \"{system}\" is marked approval = true"));
        }
    }

    Ok(Plan {
        approval,
        run_id,
        event: event.clone(),
        scenario: scenario_name.to_string(),
        policy_version: policy.version.clone(),
        accounts,
        stages,
        skipped,
        unreachable,
        stops: Vec::new(),
    })
}

fn grants(names: &BTreeSet<String>, entitlement: &Entitlement) -> bool {
    names.contains(&entitlement.name) || names.contains(&entitlement.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{sample_event, sample_policy};
    use proptest::prelude::*;

    fn account(id: &str, groups: &[&str]) -> Account {
        Account {
            system: "crm".into(),
            id: id.into(),
            username: format!("user-{id}"),
            email: Some(format!("{id}@example.com")),
            active: true,
            entitlements: groups
                .iter()
                .map(|g| Entitlement {
                    id: format!("g-{g}"),
                    name: (*g).into(),
                    kind: "group".into(),
                })
                .collect(),
            credentials: vec![],
            last_activity: None,
        }
    }

    fn discovery(system: &str, accounts: Vec<Account>) -> Discovery {
        Discovery {
            system: system.into(),
            supports: vec![
                StageKind::Disable,
                StageKind::Entitlements,
                StageKind::Delete,
            ],
            result: Ok(accounts),
        }
    }

    #[test]
    fn stages_follow_kill_order_and_delete_is_delayed() {
        let event = sample_event();
        let policy = sample_policy();
        let plan = build_plan(
            &event,
            &policy,
            &[discovery("crm", vec![account("42", &["eng", "ops"])])],
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let kinds: Vec<StageKind> = plan.stages.iter().map(|s| s.stage).collect();
        assert_eq!(
            kinds,
            [
                StageKind::Disable,
                StageKind::Entitlements,
                StageKind::Delete
            ]
        );
        assert_eq!(plan.stages[1].tasks.len(), 2);
        let delay = plan.stages[2].not_before - event.effective_at;
        assert_eq!(delay.num_days(), 30);
        // The sessions stage is asked for but the connector has none: recorded, not hidden.
        assert!(plan
            .skipped
            .iter()
            .any(|s| s.stage == Some(StageKind::Sessions)));
    }

    #[test]
    fn exempt_accounts_and_unreachable_systems_are_recorded() {
        let event = sample_event();
        let policy = sample_policy();
        let mut svc = account("7", &[]);
        svc.username = "svc-backup".into();
        let plan = build_plan(
            &event,
            &policy,
            &[
                discovery("crm", vec![svc]),
                Discovery {
                    system: "wiki".into(),
                    supports: vec![],
                    result: Err("connection refused".into()),
                },
            ],
        )
        .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(plan.task_count(), 0);
        assert!(plan.skipped[0].reason.starts_with("exempt"));
        assert_eq!(plan.unreachable[0].system, "wiki");
    }

    #[test]
    fn a_mover_loses_only_what_the_new_role_does_not_grant() {
        let mut event = sample_event();
        event.kind = EventKind::Transfer;
        event.termination_type = None;
        event.transfer = Some(crate::event::Transfer {
            from_roles: vec!["engineer".into()],
            to_roles: vec!["manager".into()],
        });
        let policy = sample_policy();
        let plan = build_plan(
            &event,
            &policy,
            &[discovery(
                "crm",
                vec![account("42", &["eng", "ops", "all-staff"])],
            )],
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let removed: Vec<&str> = plan
            .tasks()
            .filter_map(|t| t.target.as_ref())
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(removed, ["eng"]);
    }

    #[test]
    fn blast_radius_is_refused() {
        let event = sample_event();
        let mut policy = sample_policy();
        policy.limits.max_accounts_per_run = 1;
        let err = build_plan(
            &event,
            &policy,
            &[discovery("crm", vec![account("1", &[]), account("2", &[])])],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            PlanError::TooManyAccounts { count: 2, limit: 1 }
        ));
    }

    proptest! {
        #[test]
        fn same_inputs_same_plan_byte_for_byte(
            ids in proptest::collection::vec("[a-z0-9]{1,6}", 0..8),
            groups in proptest::collection::vec("[a-z]{1,5}", 0..5),
            seed in any::<u64>(),
        ) {
            let event = sample_event();
            let policy = sample_policy();
            let group_refs: Vec<&str> = groups.iter().map(String::as_str).collect();
            let accounts: Vec<Account> = ids.iter().map(|id| account(id, &group_refs)).collect();
            let forward = vec![discovery("crm", accounts.clone()), discovery("wiki", accounts.clone())];
            let mut shuffled_accounts = accounts.clone();
            let rng = fastrand_like(seed);
            shuffled_accounts.sort_by_key(|a| rng(&a.id));
            for a in &mut shuffled_accounts { a.entitlements.reverse(); }
            let backward = vec![discovery("wiki", shuffled_accounts.clone()), discovery("crm", shuffled_accounts)];
            let one = build_plan(&event, &policy, &forward);
            let two = build_plan(&event, &policy, &backward);
            match (one, two) {
                (Ok(one), Ok(two)) => {
                    let one = serde_json::to_vec(&one).unwrap_or_default();
                    let two = serde_json::to_vec(&two).unwrap_or_default();
                    prop_assert_eq!(one, two);
                }
                (Err(one), Err(two)) => prop_assert_eq!(one, two),
                (one, two) => prop_assert!(false, "{one:?} vs {two:?}"),
            }
        }
    }

    /// A seeded ordering key without another dependency.
    fn fastrand_like(seed: u64) -> impl Fn(&str) -> u64 {
        move |text: &str| {
            text.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |acc, b| {
                (acc ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        }
    }
}
