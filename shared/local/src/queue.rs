//! An in-process queue with SQS semantics: a received message is invisible to other
//! consumers until it is acked or its visibility timeout ends; a message received more than
//! `max_receives` times goes to the dead-letter list instead of looping forever.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use deprov_core::ports::{Delivery, QueueError, TaskMessage, TaskQueue};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

struct Stored {
    message: TaskMessage,
    receive_count: u32,
}

#[derive(Default)]
struct State {
    next_id: u64,
    messages: HashMap<u64, Stored>,
    /// Visible-at time and id of every message not in flight.
    ready: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Receipt → (message id, visibility deadline).
    in_flight: HashMap<String, (u64, Instant)>,
    dead: Vec<TaskMessage>,
}

pub struct LocalQueue {
    state: Mutex<State>,
    notify: Notify,
    visibility: Duration,
    max_receives: u32,
    dead_letters: mpsc::UnboundedSender<TaskMessage>,
}

impl LocalQueue {
    /// A queue and the receiving end of its dead-letter notifications.
    pub fn new(
        visibility: Duration,
        max_receives: u32,
    ) -> (LocalQueue, mpsc::UnboundedReceiver<TaskMessage>) {
        let (dead_letters, receiver) = mpsc::unbounded_channel();
        let queue = LocalQueue {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            visibility,
            max_receives: max_receives.max(1),
            dead_letters,
        };
        (queue, receiver)
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, QueueError> {
        self.state
            .lock()
            .map_err(|_| QueueError::Backend("queue lock poisoned".into()))
    }

    /// Messages that exhausted their deliveries.
    pub fn dead_letters(&self) -> Vec<TaskMessage> {
        self.state()
            .map(|state| state.dead.clone())
            .unwrap_or_default()
    }

    /// Messages waiting or in flight.
    pub fn len(&self) -> usize {
        self.state().map(|state| state.messages.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes up to `max` visible messages; returns when to look again if none is visible.
    fn take(&self, max: usize) -> Result<(Vec<Delivery>, Option<Instant>), QueueError> {
        let mut state = self.state()?;
        let now = Instant::now();
        // Messages whose consumer went quiet past the visibility timeout come back.
        let expired: Vec<String> = state
            .in_flight
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(receipt, _)| receipt.clone())
            .collect();
        for receipt in expired {
            if let Some((id, _)) = state.in_flight.remove(&receipt) {
                state.ready.push(Reverse((now, id)));
            }
        }
        let mut deliveries = Vec::new();
        while deliveries.len() < max {
            match state.ready.peek() {
                Some(Reverse((visible_at, _))) if *visible_at <= now => {}
                _ => break,
            }
            let Some(Reverse((_, id))) = state.ready.pop() else {
                break;
            };
            let Some(stored) = state.messages.get_mut(&id) else {
                continue;
            };
            stored.receive_count += 1;
            if stored.receive_count > self.max_receives {
                if let Some(stored) = state.messages.remove(&id) {
                    let _ = self.dead_letters.send(stored.message.clone());
                    state.dead.push(stored.message);
                }
                continue;
            }
            let delivery = Delivery {
                receipt: format!("{id}:{}", stored.receive_count),
                message: stored.message.clone(),
                receive_count: stored.receive_count,
            };
            state
                .in_flight
                .insert(delivery.receipt.clone(), (id, now + self.visibility));
            deliveries.push(delivery);
        }
        let next_ready = state.ready.peek().map(|Reverse((at, _))| *at);
        let next_expiry = state
            .in_flight
            .values()
            .map(|(_, deadline)| *deadline)
            .min();
        let wake = match (next_ready, next_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok((deliveries, wake))
    }
}

#[async_trait]
impl TaskQueue for LocalQueue {
    async fn send(&self, message: TaskMessage, delay: Duration) -> Result<(), QueueError> {
        {
            let mut state = self.state()?;
            state.next_id += 1;
            let id = state.next_id;
            state.messages.insert(
                id,
                Stored {
                    message,
                    receive_count: 0,
                },
            );
            state.ready.push(Reverse((Instant::now() + delay, id)));
        }
        self.notify.notify_one();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let give_up = Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            let (deliveries, wake) = self.take(max.max(1))?;
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            let now = Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let until = wake.map_or(give_up, |wake| wake.min(give_up));
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let mut state = self.state()?;
        let (id, _) = state
            .in_flight
            .remove(receipt)
            .ok_or_else(|| QueueError::UnknownReceipt(receipt.to_string()))?;
        state.messages.remove(&id);
        Ok(())
    }

    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), QueueError> {
        {
            let mut state = self.state()?;
            let (id, _) = state
                .in_flight
                .remove(receipt)
                .ok_or_else(|| QueueError::UnknownReceipt(receipt.to_string()))?;
            state.ready.push(Reverse((Instant::now() + delay, id)));
        }
        self.notify.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deprov_core::plan::{AccountRef, Action, Task};

    fn message(id: &str) -> TaskMessage {
        TaskMessage {
            policy_version: None,
            task: Task {
                task_id: id.into(),
                run_id: "r".into(),
                system: "crm".into(),
                action: Action::Disable,
                account: AccountRef {
                    id: "1".into(),
                    username: "u".into(),
                },
                target: None,
                person_id: "p".into(),
            },
            task_token: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unacked_messages_come_back_after_visibility_then_dead_letter() {
        let (queue, mut dead) = LocalQueue::new(Duration::from_secs(30), 2);
        queue
            .send(message("a"), Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let first = queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap_or_default();
        assert_eq!(first.len(), 1);
        // Invisible while in flight.
        assert!(queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap_or_default()
            .is_empty());
        let second = queue
            .receive(10, Duration::from_secs(60))
            .await
            .unwrap_or_default();
        assert_eq!(second[0].receive_count, 2);
        // Third delivery exceeds max_receives: dead-lettered.
        assert!(queue
            .receive(10, Duration::from_secs(60))
            .await
            .unwrap_or_default()
            .is_empty());
        assert_eq!(
            dead.recv().await.map(|m| m.task.task_id),
            Some("a".to_string())
        );
        assert!(queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn release_delays_and_ack_deletes() {
        let (queue, _dead) = LocalQueue::new(Duration::from_secs(30), 5);
        queue
            .send(message("a"), Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let got = queue.receive(1, Duration::ZERO).await.unwrap_or_default();
        queue
            .release(&got[0].receipt, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let start = Instant::now();
        let again = queue
            .receive(1, Duration::from_secs(10))
            .await
            .unwrap_or_default();
        assert!(Instant::now() - start >= Duration::from_secs(5));
        queue
            .ack(&again[0].receipt)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(queue.is_empty());
        assert!(queue.ack(&again[0].receipt).await.is_err());
    }
}
