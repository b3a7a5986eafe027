//! intake: the HR webhook (API Gateway HTTP API → Lambda). Wiring only; see handler.rs.

use std::time::Duration;

use deprov_aws::lambda::init_tracing;
use deprov_aws::{
    load_sdk_config, AwsSettings, DynamoRunStore, Executions, RunSchedules, SecretsManagerSource,
};
use deprov_core::ports::SystemClock;
use lambda_http::{service_fn, Error};

mod handler;

/// How long the webhook key is cached in a warm function.
const SECRET_TTL: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config = handler::Config::from_env()?;
    let sdk = load_sdk_config(&AwsSettings::from_env()).await;
    let runs = DynamoRunStore::new(aws_sdk_dynamodb::Client::new(&sdk), &config.runs_table);
    let deps = deprov_core::intake::Deps {
        runs: runs.clone(),
        secrets: SecretsManagerSource::new(aws_sdk_secretsmanager::Client::new(&sdk), SECRET_TTL),
        starter: Executions::new(aws_sdk_sfn::Client::new(&sdk), &config.state_machine_arn),
        scheduler: RunSchedules::new(
            aws_sdk_scheduler::Client::new(&sdk),
            &config.schedule_group,
            &config.state_machine_arn,
            &config.scheduler_role_arn,
        )
        .recording_in(runs),
        clock: SystemClock,
        settings: config.settings,
    };
    lambda_http::run(service_fn(|request| handler::handle(&deps, request))).await
}
