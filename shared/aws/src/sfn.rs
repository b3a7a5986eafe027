//! Step Functions: executions named by run id (a duplicate delivery cannot start a second
//! run) and the task-token callbacks of the workers.

use aws_sdk_sfn::Client;

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

/// Reports a task's result to the execution waiting on its token.
#[derive(Clone)]
pub struct TaskTokens {
    client: Client,
}

impl TaskTokens {
    pub fn new(client: Client) -> TaskTokens {
        TaskTokens { client }
    }

    pub async fn succeed(&self, token: &str, output: &serde_json::Value) -> Result<(), SfnError> {
        self.client
            .send_task_success()
            .task_token(token)
            .output(output.to_string())
            .send()
            .await
            .map(|_| ())
            .map_err(|err| failed("SendTaskSuccess", err))
    }

    /// `error` is a `Deprov.*` name the ASL catches; `cause` a readable explanation.
    pub async fn fail(&self, token: &str, error: &str, cause: &str) -> Result<(), SfnError> {
        self.client
            .send_task_failure()
            .task_token(token)
            .error(error)
            .cause(cause)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| failed("SendTaskFailure", err))
    }

    pub async fn heartbeat(&self, token: &str) -> Result<(), SfnError> {
        self.client
            .send_task_heartbeat()
            .task_token(token)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| failed("SendTaskHeartbeat", err))
    }
}
