//! The SQLite side of people known from HR events and of quarantines: two tables beside the
//! runs, written through the store's writer thread like everything else.

use chrono::{DateTime, SecondsFormat, Utc};
use deprov_core::people::PersonRecord;
use deprov_core::ports::{Decided, StoreError};
use deprov_core::quarantine::{Decision, Quarantine, QuarantineStatus};
use rusqlite::{params, OptionalExtension, Transaction};

use crate::store::{backend, cached_execute, cached_row, corrupt, SqliteStore};

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS people (
    person_id TEXT PRIMARY KEY, as_of TEXT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS quarantines (
    quarantine_id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at TEXT NOT NULL,
    record TEXT NOT NULL);
"#;

/// Fixed width, so stored times compare as text the way they compare as times.
fn sortable(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(backend)
}

pub(crate) async fn record_people(
    store: &SqliteStore,
    people: &[PersonRecord],
) -> Result<(), StoreError> {
    let rows = people
        .iter()
        .map(|person| {
            Ok((
                person.person_id.clone(),
                sortable(&person.as_of),
                encode(person)?,
            ))
        })
        .collect::<Result<Vec<(String, String, String)>, StoreError>>()?;
    store
        .call(move |tx| {
            for (id, as_of, record) in &rows {
                // An event effective earlier than the stored one (a late delivery) changes
                // nothing.
                cached_execute(
                    tx,
                    "INSERT INTO people (person_id, as_of, record) VALUES (?1, ?2, ?3)
                     ON CONFLICT (person_id) DO UPDATE SET as_of = excluded.as_of, record = excluded.record
                     WHERE excluded.as_of >= people.as_of",
                    params![id, as_of, record],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
}

pub(crate) async fn people(store: &SqliteStore) -> Result<Vec<PersonRecord>, StoreError> {
    store
        .call(|tx| {
            let mut statement = tx
                .prepare_cached("SELECT record FROM people ORDER BY person_id")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(backend)?;
            rows.map(|row| {
                let text = row.map_err(backend)?;
                serde_json::from_str(&text).map_err(|err| corrupt("people.record", err))
            })
            .collect()
        })
        .await
}

fn read_quarantine(tx: &Transaction<'_>, id: &str) -> Result<Option<Quarantine>, StoreError> {
    cached_row(
        tx,
        "SELECT record FROM quarantines WHERE quarantine_id = ?1",
        params![id],
        |row| row.get::<_, String>(0),
    )
    .optional()
    .map_err(backend)?
    .map(|text| {
        serde_json::from_str(&text).map_err(|err| corrupt(&format!("quarantine {id}"), err))
    })
    .transpose()
}

pub(crate) async fn put_quarantine(
    store: &SqliteStore,
    quarantine: &Quarantine,
) -> Result<Quarantine, StoreError> {
    let record = encode(quarantine)?;
    let quarantine = quarantine.clone();
    store
        .call(move |tx| {
            if let Some(stored) = read_quarantine(tx, &quarantine.quarantine_id)? {
                return Ok(stored);
            }
            cached_execute(tx,
                "INSERT INTO quarantines (quarantine_id, status, created_at, record) VALUES (?1, ?2, ?3, ?4)",
                params![
                    quarantine.quarantine_id,
                    quarantine.status.as_str(),
                    sortable(&quarantine.created_at),
                    record
                ],
            )
            .map_err(backend)?;
            Ok(quarantine)
        })
        .await
}

pub(crate) async fn get_quarantine(
    store: &SqliteStore,
    id: &str,
) -> Result<Option<Quarantine>, StoreError> {
    let id = id.to_string();
    store.call(move |tx| read_quarantine(tx, &id)).await
}

pub(crate) async fn quarantines(store: &SqliteStore) -> Result<Vec<Quarantine>, StoreError> {
    store
        .call(|tx| {
            let mut statement = tx
                .prepare_cached(
                    "SELECT quarantine_id, record FROM quarantines ORDER BY created_at, quarantine_id",
                )
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
                .map_err(backend)?;
            rows.map(|row| {
                let (id, text) = row.map_err(backend)?;
                serde_json::from_str(&text).map_err(|err| corrupt(&format!("quarantine {id}"), err))
            })
            .collect()
        })
        .await
}

pub(crate) async fn decide_quarantine(
    store: &SqliteStore,
    id: &str,
    status: QuarantineStatus,
    decision: &Decision,
) -> Result<Decided, StoreError> {
    let (id, decision) = (id.to_string(), decision.clone());
    store
        .call(move |tx| {
            let Some(mut stored) = read_quarantine(tx, &id)? else {
                return Ok(Decided::Unknown);
            };
            if stored.status != QuarantineStatus::Pending {
                return Ok(Decided::Before(Box::new(stored)));
            }
            stored.status = status;
            stored.decision = Some(decision);
            // Conditional on still pending: the first decision wins.
            let updated = tx
                .execute(
                    "UPDATE quarantines SET status = ?2, record = ?3 WHERE quarantine_id = ?1 AND status = 'pending'",
                    params![id, status.as_str(), encode(&stored)?],
                )
                .map_err(backend)?;
            if updated == 0 {
                return Err(backend(format!("quarantine {id} changed while it was decided")));
            }
            Ok(Decided::Now(Box::new(stored)))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use deprov_core::brake::Trigger;
    use deprov_core::flow::RunInput;
    use deprov_core::ports::RunStore;
    use deprov_core::testing::sample_event;

    #[tokio::test]
    async fn people_keep_the_latest_event_and_quarantines_the_first_decision() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("d.db")).expect("store");
        let event = sample_event();
        let left = PersonRecord::from_event(&event).expect("an HR event");
        store.record_person(&left).await.expect("record");
        let mut earlier = left.clone();
        earlier.as_of -= chrono::Duration::days(30);
        earlier.inactive_from = None;
        store.record_person(&earlier).await.expect("record");
        assert_eq!(
            store.people().await.expect("people"),
            std::slice::from_ref(&left)
        );

        let quarantine = Quarantine::new(
            Trigger::Sweep,
            "v1",
            Vec::new(),
            Vec::new(),
            vec![RunInput {
                event,
                dry_run: false,
            }],
            Utc::now(),
        );
        let stored = store.put_quarantine(&quarantine).await.expect("put");
        assert_eq!(stored, quarantine);
        let decision = Decision::new("grace", "checked", Utc::now()).expect("decision");
        let id = &quarantine.quarantine_id;
        let decided = store
            .decide_quarantine(id, QuarantineStatus::Denied, &decision)
            .await
            .expect("decide");
        assert!(matches!(decided, Decided::Now(q) if q.status == QuarantineStatus::Denied));
        let again = store
            .decide_quarantine(id, QuarantineStatus::Approved, &decision)
            .await
            .expect("decide");
        assert!(matches!(again, Decided::Before(q) if q.status == QuarantineStatus::Denied));
        // Putting it again does not reopen it.
        let put_again = store.put_quarantine(&quarantine).await.expect("put");
        assert_eq!(put_again.status, QuarantineStatus::Denied);
        assert_eq!(store.quarantines().await.expect("list").len(), 1);
        assert_eq!(
            store
                .decide_quarantine("q-none", QuarantineStatus::Approved, &decision)
                .await
                .expect("decide"),
            Decided::Unknown
        );
    }
}
