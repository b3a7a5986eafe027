//! The worker function: consumes the task queues (one event source mapping per system
//! kind) and answers the state machine through the task tokens.

mod handler;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use deprov_aws::lambda::{init_tracing, required_env};
use deprov_aws::{
    load_sdk_config, AwsSettings, DynamoPolicyStore, DynamoRunStore, SecretsManagerSource,
    TaskTokens,
};
use deprov_core::ports::SecretSource;
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    init_tracing();
    let runs_table = required_env("DEPROV_RUNS_TABLE")?;
    let config_table = required_env("DEPROV_CONFIG_TABLE")?;
    let sdk = load_sdk_config(&AwsSettings::from_env()).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let secrets: Arc<dyn SecretSource> = Arc::new(SecretsManagerSource::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        Duration::from_secs(300),
    ));
    let deps = handler::Deps::new(
        DynamoRunStore::new(dynamodb.clone(), runs_table),
        DynamoPolicyStore::new(dynamodb, config_table),
        TaskTokens::new(aws_sdk_sfn::Client::new(&sdk)),
        Box::new(move |system, config| deprov_connectors::build(system, config, secrets.clone())),
        // The state machine's HeartbeatSeconds is 300.
        Duration::from_secs(60),
    );
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        handler::handle(&deps, event)
    }))
    .await
}
