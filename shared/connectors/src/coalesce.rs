//! Discovery per system, bounded and coalesced: many runs starting at once (a sweep, a
//! mass offboarding, a burst from HR) each look for their person on the same systems. A
//! system sees at most its `concurrency` discovery calls at once, like its workers; for a
//! connector that can look for many people in one round trip (`max_batch` > 1), the
//! searches queued meanwhile go together into one `discover_batch` call. Nothing waits on
//! a timer: a batch is whatever is queued when a slot frees up, so a lone run is not delayed.

use std::sync::Arc;

use async_trait::async_trait;
use deprov_core::connector::batch_answers;
use deprov_core::plan::{StageKind, Task};
use deprov_core::{Account, Applied, Connector, ConnectorError, Evidence, PersonQuery};
use tokio::sync::{mpsc, oneshot, Semaphore};

type Found = Result<Vec<Account>, ConnectorError>;

struct Search {
    person: PersonQuery,
    reply: oneshot::Sender<Found>,
}

/// `connector` with at most `concurrency` discovery calls at once, each taking up to
/// `max_batch` queued searches. Must be called within a Tokio runtime.
pub fn coalesce_discovery(connector: Arc<dyn Connector>, concurrency: usize) -> Arc<dyn Connector> {
    let max_batch = connector.max_batch().max(1);
    let (searches, mut queued) = mpsc::unbounded_channel::<Search>();
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let inner = Arc::clone(&connector);
    tokio::spawn(async move {
        loop {
            // Hold a slot before taking searches: while every slot is busy, searches queue
            // up and the next batch takes them all.
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let Some(first) = queued.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match queued.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            let inner = Arc::clone(&inner);
            tokio::spawn(async move {
                let people: Vec<PersonQuery> =
                    batch.iter().map(|search| search.person.clone()).collect();
                let found = batch_answers(inner.discover_batch(&people).await, "discover");
                for (search, answer) in batch.into_iter().zip(found) {
                    let _ = search.reply.send(answer);
                }
                drop(slot);
            });
        }
    });
    Arc::new(Coalesced {
        inner: connector,
        searches,
    })
}

struct Coalesced {
    inner: Arc<dyn Connector>,
    searches: mpsc::UnboundedSender<Search>,
}

#[async_trait]
impl Connector for Coalesced {
    fn supports(&self) -> &[StageKind] {
        self.inner.supports()
    }

    fn max_batch(&self) -> usize {
        self.inner.max_batch()
    }

    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        let (reply, answer) = oneshot::channel();
        let search = Search {
            person: person.clone(),
            reply,
        };
        if self.searches.send(search).is_err() {
            // The gathering task is gone (the runtime is shutting down): search directly.
            return self.inner.discover(person).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(ConnectorError::Transient(
                "the discovery batch stopped before it answered (the connector failed or panicked)"
                    .into(),
            ))
        })
    }

    async fn discover_batch(&self, people: &[PersonQuery]) -> Vec<Found> {
        self.inner.discover_batch(people).await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        self.inner.apply(task).await
    }

    async fn apply_batch(&self, tasks: &[Task]) -> Vec<Result<Applied, ConnectorError>> {
        self.inner.apply_batch(tasks).await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        self.inner.verify(task).await
    }

    async fn verify_batch(&self, tasks: &[Task]) -> Vec<Result<Evidence, ConnectorError>> {
        self.inner.verify_batch(tasks).await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        self.inner.list_accounts().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers each person with one account named after them; records each batch's size.
    struct Directory {
        batches: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl Connector for Directory {
        fn supports(&self) -> &[StageKind] {
            &[]
        }
        fn max_batch(&self) -> usize {
            8
        }
        async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
            Ok(vec![Account {
                system: "dir".into(),
                id: person.person_id.clone(),
                username: person.person_id.clone(),
                email: None,
                active: true,
                entitlements: Vec::new(),
                credentials: Vec::new(),
                last_activity: None,
            }])
        }
        async fn discover_batch(&self, people: &[PersonQuery]) -> Vec<Found> {
            self.batches
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(people.len());
            // Slow enough that searches queue up behind a batch in flight.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let mut found = Vec::new();
            for person in people {
                found.push(self.discover(person).await);
            }
            found
        }
        async fn apply(&self, _: &Task) -> Result<Applied, ConnectorError> {
            Err(ConnectorError::Unsupported("apply".into()))
        }
        async fn verify(&self, _: &Task) -> Result<Evidence, ConnectorError> {
            Err(ConnectorError::Unsupported("verify".into()))
        }
    }

    fn person(id: usize) -> PersonQuery {
        PersonQuery {
            person_id: format!("P{id}"),
            email: format!("p{id}@example.com"),
            username: None,
        }
    }

    #[tokio::test]
    async fn concurrent_searches_go_together_and_each_gets_its_own_answer() {
        let directory = Arc::new(Directory {
            batches: Mutex::new(Vec::new()),
        });
        let coalesced = coalesce_discovery(directory.clone(), 2);
        let people: Vec<PersonQuery> = (0..40).map(person).collect();
        let found =
            futures_util::future::join_all(people.iter().map(|p| coalesced.discover(p))).await;
        for (person, found) in people.iter().zip(found) {
            let accounts = found.unwrap_or_default();
            assert_eq!(accounts.len(), 1);
            assert_eq!(accounts[0].id, person.person_id);
        }
        let batches = directory
            .batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        assert_eq!(batches.iter().sum::<usize>(), 40);
        assert!(
            batches.iter().all(|size| (1..=8).contains(size)),
            "{batches:?}"
        );
        assert!(
            batches.len() <= 10,
            "40 searches in {} calls",
            batches.len()
        );

        // A lone search is not held back waiting for company.
        let started = std::time::Instant::now();
        let alone = coalesced.discover(&person(99)).await.unwrap_or_default();
        assert_eq!(alone.len(), 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
