//! SQS behind `TaskQueue`: one queue per system; the receive count comes from SQS's
//! `ApproximateReceiveCount`, a release is a visibility change.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use aws_sdk_sqs::Client;
use deprov_core::ports::{Delivery, QueueError, TaskMessage, TaskQueue};

/// SQS's longest delay and visibility timeout (15 minutes and 12 hours).
const MAX_DELAY_SECS: u64 = 900;
const MAX_VISIBILITY_SECS: u64 = 43_200;

#[derive(Clone)]
pub struct SqsTaskQueue {
    client: Client,
    url: String,
}

impl SqsTaskQueue {
    pub fn new(client: Client, url: impl Into<String>) -> SqsTaskQueue {
        SqsTaskQueue {
            client,
            url: url.into(),
        }
    }
}

fn backend<E: std::fmt::Debug>(what: &str, err: E) -> QueueError {
    QueueError::Backend(format!("SQS {what}: {err:?}"))
}

#[async_trait]
impl TaskQueue for SqsTaskQueue {
    async fn send(&self, message: TaskMessage, delay: Duration) -> Result<(), QueueError> {
        let body = serde_json::to_string(&message).map_err(|err| backend("encode", err))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(delay.as_secs().min(MAX_DELAY_SECS) as i32)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| backend("SendMessage", err))
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|err| backend("ReceiveMessage", err))?;
        let mut deliveries = Vec::new();
        for message in output.messages.unwrap_or_default() {
            let receipt = message.receipt_handle.clone().unwrap_or_default();
            let body = message.body.as_deref().unwrap_or_default();
            let receive_count = message
                .attributes
                .as_ref()
                .and_then(|attributes| {
                    attributes.get(&MessageSystemAttributeName::ApproximateReceiveCount)
                })
                .and_then(|count| count.parse().ok())
                .unwrap_or(1);
            match serde_json::from_str::<TaskMessage>(body) {
                Ok(task) => deliveries.push(Delivery {
                    receipt,
                    message: task,
                    receive_count,
                }),
                // Not ours to decode: leave it to redrive into the dead-letter queue.
                Err(err) => {
                    tracing::error!(error = %err, "undecodable task message left for the DLQ")
                }
            }
        }
        Ok(deliveries)
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| backend("DeleteMessage", err))
    }

    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(delay.as_secs().min(MAX_VISIBILITY_SECS) as i32)
            .send()
            .await
            .map(|_| ())
            .map_err(|err| backend("ChangeMessageVisibility", err))
    }
}
