//! The sweep function: fired daily by EventBridge Scheduler; starts one run per inactive
//! account the policy's systems report.

mod handler;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use deprov_aws::lambda::{init_tracing, required_env};
use deprov_aws::{
    load_sdk_config, AwsSettings, DynamoPolicyStore, DynamoRunStore, Executions,
    SecretsManagerSource,
};
use deprov_core::ports::SecretSource;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let config_table = required_env("DEPROV_CONFIG_TABLE")?;
    let runs_table = required_env("DEPROV_RUNS_TABLE")?;
    let state_machine_arn = required_env("DEPROV_STATE_MACHINE_ARN")?;
    let sdk = load_sdk_config(&AwsSettings::from_env()).await;
    let secrets: Arc<dyn SecretSource> = Arc::new(SecretsManagerSource::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        Duration::from_secs(300),
    ));
    let deps = handler::Deps {
        policies: DynamoPolicyStore::new(aws_sdk_dynamodb::Client::new(&sdk), config_table),
        starter: Executions::new(aws_sdk_sfn::Client::new(&sdk), state_machine_arn),
        store: DynamoRunStore::new(aws_sdk_dynamodb::Client::new(&sdk), runs_table),
        connectors: Box::new(move |system, config| {
            deprov_connectors::build(system, config, secrets.clone())
        }),
        // The function's timeout is 300 s; what is left after listing starts the runs.
        listing_timeout: Duration::from_secs(200),
        listings_at_once: 4,
    };
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<EventBridgeEvent<serde_json::Value>>| handler::handle(&deps, event),
    ))
    .await
}
