//! Launching runs: the ports that start a run now (a Step Functions execution named by the
//! run id on AWS) or at a future time (a one-time EventBridge schedule), and the rules of
//! when an event waits for its effective time.

use async_trait::async_trait;
use chrono::{DateTime, Duration, FixedOffset, Utc};

use crate::event::{EventKind, LifecycleEvent};
use crate::flow::RunInput;

/// Events effective less than this far ahead start now: a schedule would fire at about the
/// same time, with more moving parts.
pub const SCHEDULE_THRESHOLD: Duration = Duration::seconds(60);

/// When a run for `event` should start, if not now: leavers whose last day is ahead keep
/// their access until then. Other kinds (a transfer, a rehire, a cancel) take effect when
/// they arrive; the plan's `not_before` delays what must wait. The time keeps the offset
/// the sender gave, so what is stored and answered reads as the HR system wrote it.
pub fn start_at(event: &LifecycleEvent, now: DateTime<Utc>) -> Option<DateTime<FixedOffset>> {
    let at = event.effective_at;
    (ends_employment(event.kind) && at.with_timezone(&Utc) > now + SCHEDULE_THRESHOLD).then_some(at)
}

/// Kinds that end a person's employment: they wait for their effective time.
pub fn ends_employment(kind: EventKind) -> bool {
    matches!(kind, EventKind::Termination | EventKind::ContractEnd)
}

/// Whether an event of this kind replaces the person's pending scheduled runs: a newer
/// termination moves them (an HR correction of the last day), a rehire or a cancel
/// removes them.
pub fn supersedes_schedules(kind: EventKind) -> bool {
    ends_employment(kind) || kind.stops_pending_runs()
}

/// A run waiting for its start time.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingRun {
    pub run_id: String,
    pub person_id: String,
    /// As the event gave it, offset included.
    pub start_at: DateTime<FixedOffset>,
}

/// What starting a run's execution came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunStart {
    /// The run's execution is running: started now, or the same start repeated.
    Started,
    /// An execution of this run exists already (finished, or started with other input).
    AlreadyExists,
}

/// Starting or scheduling a run failed; another attempt may pass. The message names the
/// operation and never carries a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(pub String);

/// Starts runs now.
#[async_trait]
pub trait RunStarter: Send + Sync {
    /// Starts the run's execution named `run_id`, so starting it twice is one run.
    async fn start_run(&self, run_id: &str, input: &RunInput) -> Result<RunStart, LaunchError>;
}

/// Starts runs later.
#[async_trait]
pub trait RunScheduler: Send + Sync {
    /// Starts the run at `at`, once. Scheduling the same run again changes nothing.
    async fn schedule_run(
        &self,
        run_id: &str,
        person_id: &str,
        at: DateTime<FixedOffset>,
        input: &RunInput,
    ) -> Result<(), LaunchError>;
    /// The person's runs still waiting for their start time.
    async fn pending_for(&self, person_id: &str) -> Result<Vec<PendingRun>, LaunchError>;
    /// Removes a pending run's schedule and records why (`reason`), so the run does not
    /// start and a later delivery of its event does not schedule it again. Removing a
    /// schedule that is gone already is success.
    async fn unschedule(&self, run_id: &str, reason: &str) -> Result<(), LaunchError>;
    /// Why the run's schedule was removed, if it was.
    async fn removed(&self, run_id: &str) -> Result<Option<String>, LaunchError>;
}

/// Stops runs: a rehire or cancel ends the person's open executions before anything more
/// is done to their accounts.
#[async_trait]
pub trait RunStopper: Send + Sync {
    /// Stops the run's execution with `cause`. A run without an execution (scheduled, not
    /// started) or one that has finished is fine: there is nothing left to stop.
    async fn stop_run(&self, run_id: &str, cause: &str) -> Result<(), LaunchError>;
}

#[cfg(any(test, feature = "testing"))]
pub use fake::MemoryLauncher;

#[cfg(any(test, feature = "testing"))]
mod fake {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct State {
        started: BTreeMap<String, RunInput>,
        scheduled: BTreeMap<String, (DateTime<FixedOffset>, RunInput)>,
        removed: BTreeMap<String, String>,
        stopped: BTreeMap<String, String>,
        start_calls: usize,
        schedule_calls: usize,
        failures: usize,
    }

    /// `RunStarter` and `RunScheduler` in memory: executions by name (a repeated name is
    /// `Started` with the same input, `AlreadyExists` otherwise, as Step Functions answers),
    /// schedules by run id, and failures on demand.
    #[derive(Default)]
    pub struct MemoryLauncher {
        state: Mutex<State>,
    }

    impl MemoryLauncher {
        fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, LaunchError> {
            self.state
                .lock()
                .map_err(|_| LaunchError("memory launcher lock poisoned".into()))
        }

        /// The next `count` starts or schedules fail.
        pub fn fail_next(&self, count: usize) {
            if let Ok(mut state) = self.state.lock() {
                state.failures = count;
            }
        }

        /// The runs started, by run id.
        pub fn started(&self) -> BTreeMap<String, RunInput> {
            self.state
                .lock()
                .map(|state| state.started.clone())
                .unwrap_or_default()
        }

        /// The runs scheduled and still pending, by run id.
        pub fn scheduled(&self) -> BTreeMap<String, (DateTime<FixedOffset>, RunInput)> {
            self.state
                .lock()
                .map(|state| state.scheduled.clone())
                .unwrap_or_default()
        }

        /// The runs stopped, by run id, with the cause given.
        pub fn stopped(&self) -> BTreeMap<String, String> {
            self.state
                .lock()
                .map(|state| state.stopped.clone())
                .unwrap_or_default()
        }

        /// The schedules removed, by run id, with the reason recorded.
        pub fn removed_schedules(&self) -> BTreeMap<String, String> {
            self.state
                .lock()
                .map(|state| state.removed.clone())
                .unwrap_or_default()
        }

        /// How many schedules were asked for, failed ones included.
        pub fn schedule_calls(&self) -> usize {
            self.state
                .lock()
                .map(|state| state.schedule_calls)
                .unwrap_or(0)
        }

        /// How many starts were asked for, failed ones included.
        pub fn start_calls(&self) -> usize {
            self.state
                .lock()
                .map(|state| state.start_calls)
                .unwrap_or(0)
        }
    }

    fn fail(state: &mut State, operation: &str) -> Result<(), LaunchError> {
        if state.failures > 0 {
            state.failures -= 1;
            return Err(LaunchError(format!("{operation}: service unavailable")));
        }
        Ok(())
    }

    #[async_trait]
    impl RunStarter for MemoryLauncher {
        async fn start_run(&self, run_id: &str, input: &RunInput) -> Result<RunStart, LaunchError> {
            let mut state = self.state()?;
            state.start_calls += 1;
            fail(&mut state, "StartExecution")?;
            Ok(match state.started.get(run_id) {
                Some(existing) if existing == input => RunStart::Started,
                Some(_) => RunStart::AlreadyExists,
                None => {
                    state.started.insert(run_id.to_string(), input.clone());
                    RunStart::Started
                }
            })
        }
    }

    #[async_trait]
    impl RunStopper for MemoryLauncher {
        async fn stop_run(&self, run_id: &str, cause: &str) -> Result<(), LaunchError> {
            let mut state = self.state()?;
            fail(&mut state, "StopExecution")?;
            if state.started.contains_key(run_id) {
                state.stopped.insert(run_id.to_string(), cause.to_string());
            }
            Ok(())
        }
    }

    #[async_trait]
    impl RunScheduler for MemoryLauncher {
        async fn schedule_run(
            &self,
            run_id: &str,
            _person_id: &str,
            at: DateTime<FixedOffset>,
            input: &RunInput,
        ) -> Result<(), LaunchError> {
            let mut state = self.state()?;
            state.schedule_calls += 1;
            fail(&mut state, "CreateSchedule")?;
            state
                .scheduled
                .entry(run_id.to_string())
                .or_insert_with(|| (at, input.clone()));
            Ok(())
        }

        async fn pending_for(&self, person_id: &str) -> Result<Vec<PendingRun>, LaunchError> {
            let state = self.state()?;
            Ok(state
                .scheduled
                .iter()
                .filter(|(_, (_, input))| input.event.person.id == person_id)
                .map(|(run_id, (at, input))| PendingRun {
                    run_id: run_id.clone(),
                    person_id: input.event.person.id.clone(),
                    start_at: *at,
                })
                .collect())
        }

        async fn unschedule(&self, run_id: &str, reason: &str) -> Result<(), LaunchError> {
            let mut state = self.state()?;
            fail(&mut state, "DeleteSchedule")?;
            if state.scheduled.remove(run_id).is_some() {
                state.removed.insert(run_id.to_string(), reason.to_string());
            }
            Ok(())
        }

        async fn removed(&self, run_id: &str) -> Result<Option<String>, LaunchError> {
            Ok(self.state()?.removed.get(run_id).cloned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_event;

    #[test]
    fn only_leavers_effective_beyond_a_minute_wait() {
        let mut event = sample_event();
        let given = event.effective_at;
        let at = given.with_timezone(&Utc);
        assert_eq!(start_at(&event, at - Duration::days(3)), Some(given));
        assert_eq!(start_at(&event, at - Duration::seconds(30)), None);
        assert_eq!(start_at(&event, at + Duration::days(1)), None);
        event.kind = EventKind::ContractEnd;
        event.termination_type = None;
        assert_eq!(start_at(&event, at - Duration::days(3)), Some(given));
        event.kind = EventKind::Transfer;
        assert_eq!(start_at(&event, at - Duration::days(3)), None);
    }
}
