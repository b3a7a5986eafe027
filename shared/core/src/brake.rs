//! The blast-radius brake: a trigger (a sweep, a burst of intake events, one run) that would
//! act on too many accounts of a system — more than the policy's `max_accounts`, or more than
//! `max_percent` of the system's listed accounts — executes nothing and is quarantined until
//! someone approves it. A wrong clock, a connector reporting nonsense or a bad HR export
//! would otherwise disable everyone before anybody looked.
//!
//! `check` is the one decision, used by the local sweep, the AWS sweep function and the
//! planner alike.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::Policy;

/// What would act on the accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// An inactivity / orphan sweep.
    Sweep,
    /// Many lifecycle events arriving together.
    IntakeBurst,
    /// One run.
    Run,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Sweep => "sweep",
            Trigger::IntakeBurst => "intake burst",
            Trigger::Run => "run",
        }
    }
}

/// How many accounts of one system a trigger would act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Exposure {
    pub system: String,
    /// Accounts the trigger would act on.
    pub accounts: usize,
    /// The system's listed accounts, when known (a sweep lists them; a single run does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub population: Option<usize>,
}

/// Which limit a trigger exceeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Breach {
    /// The system, or none for a limit over all systems (`sweep.max_runs_per_sweep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The policy key of the limit, e.g. `systems.crm.max_percent`.
    pub limit: String,
    /// The limit's value.
    pub allowed: f64,
    /// What the trigger would do: accounts, a percentage, or runs.
    pub would: f64,
    /// Said for humans: what, how many, which limit.
    pub message: String,
}

/// The brake's decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Within every limit: go ahead.
    Clear,
    /// Over a limit: execute nothing, hold it for approval.
    Quarantine { breaches: Vec<Breach> },
}

impl Verdict {
    pub fn is_clear(&self) -> bool {
        matches!(self, Verdict::Clear)
    }

    pub fn breaches(&self) -> &[Breach] {
        match self {
            Verdict::Clear => &[],
            Verdict::Quarantine { breaches } => breaches,
        }
    }
}

/// The percentage of `population` that `accounts` is (0 when the population is empty).
pub fn percent_of(accounts: usize, population: usize) -> f64 {
    if population == 0 {
        return 0.0;
    }
    accounts as f64 * 100.0 / population as f64
}

/// Judges a trigger: its exposure on each system against that system's `max_accounts` and
/// `max_percent`, and, for a sweep, its number of runs against `sweep.max_runs_per_sweep`.
///
/// A percentage is judged only when the system's population is known and more than one
/// account would be acted on: one person's account on a small system is not a blast.
/// Exposures of the same system are added up.
pub fn check(policy: &Policy, trigger: Trigger, exposures: &[Exposure], runs: usize) -> Verdict {
    let mut by_system: BTreeMap<&str, (usize, Option<usize>)> = BTreeMap::new();
    for exposure in exposures {
        let entry = by_system
            .entry(exposure.system.as_str())
            .or_insert((0, None));
        entry.0 += exposure.accounts;
        entry.1 = match (entry.1, exposure.population) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let what = trigger.as_str();
    let mut breaches = Vec::new();
    for (system, (accounts, population)) in by_system {
        let limits = policy.brake_limits(system);
        if accounts > limits.max_accounts as usize {
            breaches.push(Breach {
                system: Some(system.to_string()),
                limit: limits.accounts_key.clone(),
                allowed: f64::from(limits.max_accounts),
                would: accounts as f64,
                message: format!(
                    "the {what} would act on {accounts} accounts of \"{system}\", more than {} = {}",
                    limits.accounts_key, limits.max_accounts
                ),
            });
        }
        if let Some(population) = population.filter(|_| accounts > 1) {
            let percent = percent_of(accounts, population);
            if percent > limits.max_percent {
                breaches.push(Breach {
                    system: Some(system.to_string()),
                    limit: limits.percent_key.clone(),
                    allowed: limits.max_percent,
                    would: percent,
                    message: format!(
                        "the {what} would act on {accounts} of the {population} accounts of \"{system}\" ({percent:.1}%), more than {} = {}",
                        limits.percent_key, limits.max_percent
                    ),
                });
            }
        }
    }
    let max_runs = policy.sweep.max_runs_per_sweep;
    if trigger == Trigger::Sweep && runs > max_runs as usize {
        breaches.push(Breach {
            system: None,
            limit: "sweep.max_runs_per_sweep".into(),
            allowed: f64::from(max_runs),
            would: runs as f64,
            message: format!(
                "the sweep would start {runs} runs, more than sweep.max_runs_per_sweep = {max_runs}"
            ),
        });
    }
    if breaches.is_empty() {
        Verdict::Clear
    } else {
        Verdict::Quarantine { breaches }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_policy;

    fn exposure(system: &str, accounts: usize, population: Option<usize>) -> Exposure {
        Exposure {
            system: system.into(),
            accounts,
            population,
        }
    }

    #[test]
    fn within_the_limits_is_clear() {
        let policy = sample_policy();
        let verdict = check(
            &policy,
            Trigger::Sweep,
            &[
                exposure("crm", 40, Some(1000)),
                exposure("wiki", 1, Some(3)),
            ],
            25,
        );
        assert_eq!(verdict, Verdict::Clear);
    }

    #[test]
    fn sixty_percent_of_a_system_is_quarantined_and_named() {
        let policy = sample_policy();
        let verdict = check(
            &policy,
            Trigger::Sweep,
            &[exposure("crm", 30, Some(50))],
            30,
        );
        let breaches = verdict.breaches();
        assert_eq!(breaches.len(), 2, "{breaches:#?}");
        assert_eq!(breaches[0].limit, "limits.max_percent");
        assert_eq!(breaches[0].would, 60.0);
        assert_eq!(
            breaches[0].message,
            "the sweep would act on 30 of the 50 accounts of \"crm\" (60.0%), more than limits.max_percent = 10"
        );
        assert_eq!(breaches[1].limit, "sweep.max_runs_per_sweep");
    }

    #[test]
    fn a_systems_own_limits_win_and_counts_add_up() {
        let mut policy = sample_policy();
        if let Some(crm) = policy.systems.get_mut("crm") {
            crm.max_accounts = Some(3);
            crm.max_percent = Some(100.0);
        }
        let verdict = check(
            &policy,
            Trigger::IntakeBurst,
            &[exposure("crm", 2, None), exposure("crm", 2, Some(4))],
            0,
        );
        assert_eq!(
            verdict
                .breaches()
                .iter()
                .map(|b| b.limit.as_str())
                .collect::<Vec<_>>(),
            ["systems.crm.max_accounts"]
        );
        assert!(verdict.breaches()[0]
            .message
            .starts_with("the intake burst would act on 4 accounts of \"crm\""));
    }

    #[test]
    fn one_account_is_never_a_percentage_and_runs_limit_only_sweeps() {
        let policy = sample_policy();
        assert!(check(&policy, Trigger::Run, &[exposure("crm", 1, Some(2))], 1).is_clear());
        assert!(check(&policy, Trigger::Run, &[exposure("crm", 2, None)], 500).is_clear());
        assert!(!check(&policy, Trigger::Run, &[exposure("crm", 2, Some(4))], 1).is_clear());
        assert!(!check(&policy, Trigger::Run, &[exposure("crm", 51, None)], 1).is_clear());
    }
}
