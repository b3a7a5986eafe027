//! The core's `RunStarter` port on Step Functions: a run starts as the execution named by
//! its run id, and `RunStopper` stops it (`RunScheduler`, for runs that start later, is in
//! `scheduler`).

use async_trait::async_trait;
use deprov_core::flow::RunInput;
use deprov_core::launch::{LaunchError, RunStart, RunStarter, RunStopper};

use crate::sfn::{ExecutionStart, Executions};

#[async_trait]
impl RunStarter for Executions {
    async fn start_run(&self, run_id: &str, input: &RunInput) -> Result<RunStart, LaunchError> {
        let input = serde_json::to_value(input)
            .map_err(|err| LaunchError(format!("run input of {run_id}: {err}")))?;
        match self.start(run_id, &input).await {
            Ok(ExecutionStart::Started { .. }) => Ok(RunStart::Started),
            Ok(ExecutionStart::AlreadyExists) => Ok(RunStart::AlreadyExists),
            Err(err) => Err(LaunchError(err.to_string())),
        }
    }
}

#[async_trait]
impl RunStopper for Executions {
    async fn stop_run(&self, run_id: &str, cause: &str) -> Result<(), LaunchError> {
        self.stop(run_id, cause)
            .await
            .map_err(|err| LaunchError(err.to_string()))
    }
}
