//! Step Functions: executions named by run id (a duplicate delivery cannot start a second
//! run) and the task-token callbacks of the workers.

use aws_sdk_sfn::Client;
use deprov_core::ports::{ReportError, TaskReporter};
use deprov_core::{ErrorKind, TaskOutcome};

/// What starting an execution came to. A repeated start of the same run is one
/// execution either way: Step Functions answers a same-name, same-input start of a running
/// standard execution with its ARN, and anything else under a used name with
/// `ExecutionAlreadyExists`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecutionStart {
    /// The execution of this run (new, or the running one).
    Started { execution_arn: String },
    /// An execution of this run exists already (finished, or started with other input).
    AlreadyExists,
}

#[derive(Debug, thiserror::Error)]
#[error("Step Functions {operation}: {message}")]
pub struct SfnError {
    pub operation: &'static str,
    pub message: String,
}

fn failed<E: std::fmt::Debug>(operation: &'static str, err: E) -> SfnError {
    SfnError {
        operation,
        message: format!("{err:?}"),
    }
}

#[derive(Clone)]
pub struct Executions {
    client: Client,
    state_machine_arn: String,
}

impl Executions {
    pub fn new(client: Client, state_machine_arn: impl Into<String>) -> Executions {
        Executions {
            client,
            state_machine_arn: state_machine_arn.into(),
        }
    }

    /// Starts the state machine with `name = run_id`.
    pub async fn start(
        &self,
        run_id: &str,
        input: &serde_json::Value,
    ) -> Result<ExecutionStart, SfnError> {
        let started = self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(run_id)
            .input(input.to_string())
            .send()
            .await;
        match started {
            Ok(output) => Ok(ExecutionStart::Started {
                execution_arn: output.execution_arn,
            }),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|service| service.is_execution_already_exists()) =>
            {
                Ok(ExecutionStart::AlreadyExists)
            }
            Err(err) => Err(failed("StartExecution", err)),
        }
    }
}

impl Executions {
    /// The ARN of the execution named `run_id` of this state machine.
    pub fn execution_arn(&self, run_id: &str) -> String {
        format!(
            "{}:{run_id}",
            self.state_machine_arn
                .replacen(":stateMachine:", ":execution:", 1)
        )
    }

    /// Stops the execution named `run_id`. One that does not exist, or has finished
    /// already, is left as it is.
    pub async fn stop(&self, run_id: &str, cause: &str) -> Result<(), SfnError> {
        let stopped = self
            .client
            .stop_execution()
            .execution_arn(self.execution_arn(run_id))
            .error("Deprov.Stopped")
            .cause(cause)
            .send()
            .await;
        match stopped {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|service| service.is_execution_does_not_exist()) =>
            {
                Ok(())
            }
            Err(err) => Err(failed("StopExecution", err)),
        }
    }
}

/// Reports a task's result to the execution waiting on its token.
#[derive(Clone)]
pub struct TaskTokens {
    client: Client,
}

impl TaskTokens {
    pub fn new(client: Client) -> TaskTokens {
        TaskTokens { client }
    }
}

fn report_error<E, R>(
    operation: &'static str,
    err: aws_sdk_sfn::error::SdkError<E, R>,
) -> ReportError
where
    E: aws_sdk_sfn::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    let code = err
        .as_service_error()
        .and_then(|e| e.code())
        .unwrap_or_default();
    if matches!(code, "TaskTimedOut" | "InvalidToken" | "TaskDoesNotExist") {
        ReportError::Gone(format!("{operation}: {code}"))
    } else {
        ReportError::Failed(failed(operation, err).to_string())
    }
}

#[async_trait::async_trait]
impl TaskReporter for TaskTokens {
    async fn succeed(&self, token: &str, outcome: &TaskOutcome) -> Result<(), ReportError> {
        let output = serde_json::to_string(outcome)
            .map_err(|err| ReportError::Failed(format!("encoding the outcome: {err}")))?;
        self.client
            .send_task_success()
            .task_token(token)
            .output(output)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| report_error("SendTaskSuccess", err))
    }

    async fn fail(&self, token: &str, kind: ErrorKind, cause: &str) -> Result<(), ReportError> {
        // Step Functions caps the cause at 32,768 characters.
        let cause: String = cause.chars().take(32_000).collect();
        self.client
            .send_task_failure()
            .task_token(token)
            .error(kind.error_type())
            .cause(cause)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| report_error("SendTaskFailure", err))
    }

    async fn heartbeat(&self, token: &str) -> Result<(), ReportError> {
        self.client
            .send_task_heartbeat()
            .task_token(token)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| report_error("SendTaskHeartbeat", err))
    }
}
