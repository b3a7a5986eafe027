//! EventBridge Scheduler: a run whose event takes effect later (a termination dated next
//! Friday) starts then, from a one-time schedule `at(…)` whose target is the state
//! machine (the templated Step Functions `StartExecution` target: the target `Arn` is the
//! state machine's ARN and `Input` the execution input, a `RunInput`). The schedule
//! deletes itself after it fired.
//!
//! The schedule's name derives from the run id, so a duplicate delivery finds it already
//! there (`ConflictException`), which is success. The execution the scheduler starts is
//! named by the scheduler, not by the run id, so Step Functions' name uniqueness does not
//! dedupe it: the plan function dedupes by run id (a run that already has a plan is not
//! planned again).

use async_trait::async_trait;
use aws_sdk_scheduler::types::{
    ActionAfterCompletion, FlexibleTimeWindow, FlexibleTimeWindowMode, Target,
};
use aws_sdk_scheduler::Client;
use chrono::{DateTime, FixedOffset, Utc};
use deprov_core::flow::RunInput;
use deprov_core::ids::sha256_hex;
use deprov_core::launch::{LaunchError, PendingRun, RunScheduler};

use crate::dynamo::DynamoRunStore;

/// The schedule group the template creates for pending runs.
pub const DEFAULT_GROUP: &str = "deprov-runs";

#[derive(Debug, thiserror::Error)]
#[error("EventBridge Scheduler {operation}: {message}")]
pub struct SchedulerError {
    pub operation: &'static str,
    pub message: String,
}

/// What creating a run's schedule came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheduled {
    Created {
        name: String,
    },
    /// A schedule of this run exists already (a duplicate delivery).
    AlreadyExists {
        name: String,
    },
}

/// The schedule name of a run: `[0-9a-zA-Z-_.]`, at most 64 characters, the same for the
/// same run id. Run ids (`r-<32 hex>`) are used as they are; anything else is hashed.
pub fn schedule_name(run_id: &str) -> String {
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let name = format!("deprov-{run_id}");
    if !run_id.is_empty() && name.len() <= 64 && name.bytes().all(valid) {
        name
    } else {
        format!("deprov-h-{}", &sha256_hex(run_id.as_bytes())[..48])
    }
}

/// `at(yyyy-mm-ddThh:mm:ss)` in UTC.
pub fn at_expression(at: DateTime<Utc>) -> String {
    format!("at({})", at.format("%Y-%m-%dT%H:%M:%S"))
}

/// One-time schedules that start runs.
#[derive(Clone)]
pub struct RunSchedules {
    client: Client,
    group: String,
    state_machine_arn: String,
    role_arn: String,
    record_in: Option<DynamoRunStore>,
}

impl RunSchedules {
    /// `role_arn` is the role the scheduler assumes to call `states:StartExecution`.
    pub fn new(
        client: Client,
        group: impl Into<String>,
        state_machine_arn: impl Into<String>,
        role_arn: impl Into<String>,
    ) -> RunSchedules {
        RunSchedules {
            client,
            group: group.into(),
            state_machine_arn: state_machine_arn.into(),
            role_arn: role_arn.into(),
            record_in: None,
        }
    }

    /// Also records each pending run in the runs table (`SCHEDULE#<run_id>`), so operators
    /// and the sweep can list what is due without asking the scheduler.
    pub fn recording_in(mut self, runs: DynamoRunStore) -> RunSchedules {
        self.record_in = Some(runs);
        self
    }

    /// Creates the run's one-time schedule at `at` (whole seconds, UTC) with `input` as
    /// the execution input.
    pub async fn schedule(
        &self,
        run_id: &str,
        at: DateTime<Utc>,
        input: &serde_json::Value,
    ) -> Result<Scheduled, SchedulerError> {
        let name = schedule_name(run_id);
        let invalid = |err: aws_sdk_scheduler::error::BuildError| SchedulerError {
            operation: "CreateSchedule",
            message: format!("request could not be built: {err}"),
        };
        let target = Target::builder()
            .arn(&self.state_machine_arn)
            .role_arn(&self.role_arn)
            .input(input.to_string())
            .build()
            .map_err(invalid)?;
        let window = FlexibleTimeWindow::builder()
            .mode(FlexibleTimeWindowMode::Off)
            .build()
            .map_err(invalid)?;
        let created = self
            .client
            .create_schedule()
            .name(&name)
            .group_name(&self.group)
            .schedule_expression(at_expression(at))
            .schedule_expression_timezone("UTC")
            .flexible_time_window(window)
            .target(target)
            .action_after_completion(ActionAfterCompletion::Delete)
            .description(format!("deprov run {run_id}"))
            .client_token(&name)
            .send()
            .await;
        match created {
            Ok(_) => Ok(Scheduled::Created { name }),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|service| service.is_conflict_exception()) =>
            {
                Ok(Scheduled::AlreadyExists { name })
            }
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|service| service.is_resource_not_found_exception()) =>
            {
                Err(SchedulerError {
                    operation: "CreateSchedule",
                    message: format!(
                        "schedule group \"{}\" does not exist; the template creates it (DEPROV_SCHEDULE_GROUP names it)",
                        self.group
                    ),
                })
            }
            Err(err) => Err(SchedulerError {
                operation: "CreateSchedule",
                message: format!("{err:?}"),
            }),
        }
    }
}

impl RunSchedules {
    /// Deletes the run's schedule; one that is gone already (fired, or deleted before) is
    /// success.
    pub async fn delete(&self, run_id: &str) -> Result<(), SchedulerError> {
        let deleted = self
            .client
            .delete_schedule()
            .name(schedule_name(run_id))
            .group_name(&self.group)
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|service| service.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(SchedulerError {
                operation: "DeleteSchedule",
                message: format!("{err:?}"),
            }),
        }
    }

    fn records(&self) -> Result<&DynamoRunStore, LaunchError> {
        self.record_in.as_ref().ok_or_else(|| {
            LaunchError(
                "pending schedules are listed from the runs table; build RunSchedules with recording_in(runs)".into(),
            )
        })
    }
}

#[async_trait]
impl RunScheduler for RunSchedules {
    async fn schedule_run(
        &self,
        run_id: &str,
        person_id: &str,
        at: DateTime<FixedOffset>,
        input: &RunInput,
    ) -> Result<(), LaunchError> {
        let input = serde_json::to_value(input)
            .map_err(|err| LaunchError(format!("run input of {run_id}: {err}")))?;
        self.schedule(run_id, at.with_timezone(&Utc), &input)
            .await
            .map_err(|err| LaunchError(err.to_string()))?;
        if let Some(runs) = &self.record_in {
            runs.put_schedule(run_id, person_id, at)
                .await
                .map_err(|err| LaunchError(err.to_string()))?;
        }
        Ok(())
    }

    async fn pending_for(&self, person_id: &str) -> Result<Vec<PendingRun>, LaunchError> {
        let pending = self
            .records()?
            .pending_schedules(person_id)
            .await
            .map_err(|err| LaunchError(err.to_string()))?;
        Ok(pending
            .into_iter()
            .map(|(run_id, start_at)| PendingRun {
                run_id,
                person_id: person_id.to_string(),
                start_at,
            })
            .collect())
    }

    async fn unschedule(&self, run_id: &str, reason: &str) -> Result<(), LaunchError> {
        let records = self.records()?;
        // The schedule first: a record marked removed whose schedule still fires would be
        // worse than a removed schedule whose record still says pending (the retry fixes
        // that one).
        self.delete(run_id)
            .await
            .map_err(|err| LaunchError(err.to_string()))?;
        records
            .remove_schedule(run_id, reason)
            .await
            .map_err(|err| LaunchError(err.to_string()))
    }

    async fn removed(&self, run_id: &str) -> Result<Option<String>, LaunchError> {
        match &self.record_in {
            Some(records) => records
                .schedule_removal(run_id)
                .await
                .map_err(|err| LaunchError(err.to_string())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_are_valid_stable_and_short() {
        let run_id = deprov_core::ids::run_id("workday", "hr-1");
        assert_eq!(schedule_name(&run_id), format!("deprov-{run_id}"));
        for run_id in ["", "a/b", &"x".repeat(80)] {
            let name = schedule_name(run_id);
            assert!(name.len() <= 64, "{name}");
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')));
            assert_eq!(name, schedule_name(run_id));
        }
        assert_ne!(schedule_name("a/b"), schedule_name("a/c"));
    }

    #[test]
    fn at_expressions_are_whole_utc_seconds() {
        let at = Utc
            .with_ymd_and_hms(2026, 11, 30, 16, 0, 5)
            .single()
            .unwrap_or_default()
            + chrono::Duration::milliseconds(250);
        assert_eq!(at_expression(at), "at(2026-11-30T16:00:05)");
    }
}
