//! Pending future-dated runs in the SQLite file (`schedules` table): the local
//! counterpart of EventBridge Scheduler's one-time schedules and their `SCHEDULE#`
//! records. `deprov serve` starts each when it is due; a moved or cancelled one stays as
//! a row with its reason, so the operator can list what happened to every schedule.
//!
//! Its own connection on the same file (WAL, so it never blocks the run store's writer
//! for long): schedules are rare and small, and keeping them apart leaves the run store
//! unchanged.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use deprov_core::flow::RunInput;
use deprov_core::journal;
use deprov_core::launch::{LaunchError, PendingRun, RunScheduler};
use deprov_core::ports::{AuditLog, StoreError};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS schedules (
    run_id TEXT PRIMARY KEY, person_id TEXT NOT NULL,
    start_at TEXT NOT NULL, effective_at TEXT NOT NULL, input TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS schedules_by_person ON schedules (person_id, state);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (state, start_at);
"#;

/// A schedule as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScheduleRecord {
    pub run_id: String,
    pub person_id: String,
    /// As the event gave it, offset included.
    pub effective_at: DateTime<FixedOffset>,
    /// `pending`, `started` or `removed`.
    pub state: String,
    /// Why it was removed.
    pub reason: Option<String>,
}

/// The `schedules` table.
#[derive(Clone)]
pub struct SqliteSchedules {
    connection: Arc<Mutex<Connection>>,
    audit: Option<Arc<dyn AuditLog>>,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

fn launch_error(err: StoreError) -> LaunchError {
    LaunchError(format!("schedules table: {err}"))
}

/// Fixed width UTC, so the strings sort as the times do.
fn utc(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl SqliteSchedules {
    /// Opens (creating if needed) the table in the database file at `path`.
    pub fn open(path: &Path) -> Result<SqliteSchedules, StoreError> {
        let connection = Connection::open(path)
            .map_err(|err| backend(format!("cannot open {}: {err}", path.display())))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
            )
            .and_then(|()| connection.execute_batch(SCHEMA))
            .map_err(|err| backend(format!("cannot prepare {}: {err}", path.display())))?;
        Ok(SqliteSchedules {
            connection: Arc::new(Mutex::new(connection)),
            audit: None,
        })
    }

    /// Also records each removed schedule in the removed run's audit trail
    /// (`journal::schedule_removed`), so "what happened to person X" shows it.
    pub fn auditing_in(mut self, audit: Arc<dyn AuditLog>) -> SqliteSchedules {
        self.audit = Some(audit);
        self
    }

    /// Runs `body` on the connection off the async threads.
    async fn with<T: Send + 'static>(
        &self,
        body: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            let connection = connection
                .lock()
                .map_err(|_| backend("schedules connection lock poisoned"))?;
            body(&connection).map_err(backend)
        })
        .await
        .map_err(backend)?
    }

    /// Pending schedules due at `now`, with their run input, oldest first.
    pub async fn due(&self, now: DateTime<Utc>) -> Result<Vec<(String, RunInput)>, StoreError> {
        let rows = self
            .with(move |connection| {
                let mut statement = connection.prepare(
                    "SELECT run_id, input FROM schedules WHERE state = 'pending' AND start_at <= ?1 ORDER BY start_at",
                )?;
                let rows = statement
                    .query_map([utc(&now)], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|(run_id, input)| {
                let input: RunInput = serde_json::from_str(&input).map_err(|err| {
                    StoreError::Corrupt(format!("run input of schedule {run_id}: {err}"))
                })?;
                Ok((run_id, input))
            })
            .collect()
    }

    /// The schedule's run was started: it is no longer pending.
    pub async fn mark_started(&self, run_id: &str) -> Result<(), StoreError> {
        let run_id = run_id.to_string();
        self.with(move |connection| {
            connection.execute(
                "UPDATE schedules SET state = 'started', updated_at = ?2 WHERE run_id = ?1 AND state = 'pending'",
                params![run_id, utc(&Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    /// Every schedule, pending or not, for operators.
    pub async fn list(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = self
            .with(|connection| {
                let mut statement = connection.prepare(
                    "SELECT run_id, person_id, effective_at, state, reason FROM schedules ORDER BY start_at, run_id",
                )?;
                let rows = statement
                    .query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                            row.get::<_, String>(3)?,
                            row.get::<_, Option<String>>(4)?,
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|(run_id, person_id, effective_at, state, reason)| {
                Ok(ScheduleRecord {
                    effective_at: DateTime::parse_from_rfc3339(&effective_at).map_err(|err| {
                        StoreError::Corrupt(format!("effective_at of schedule {run_id}: {err}"))
                    })?,
                    run_id,
                    person_id,
                    state,
                    reason,
                })
            })
            .collect()
    }
}

#[async_trait]
impl RunScheduler for SqliteSchedules {
    async fn schedule_run(
        &self,
        run_id: &str,
        person_id: &str,
        at: DateTime<FixedOffset>,
        input: &RunInput,
    ) -> Result<(), LaunchError> {
        let input = serde_json::to_string(input)
            .map_err(|err| LaunchError(format!("run input of {run_id}: {err}")))?;
        let (run_id, person_id) = (run_id.to_string(), person_id.to_string());
        // The same run again changes nothing (and a removed one stays removed).
        self.with(move |connection| {
            let now = utc(&Utc::now());
            connection.execute(
                "INSERT INTO schedules (run_id, person_id, start_at, effective_at, input, state, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6) ON CONFLICT (run_id) DO NOTHING",
                params![run_id, person_id, utc(&at.with_timezone(&Utc)), at.to_rfc3339(), input, now],
            )?;
            Ok(())
        })
        .await
        .map_err(launch_error)
    }

    async fn pending_for(&self, person_id: &str) -> Result<Vec<PendingRun>, LaunchError> {
        let person = person_id.to_string();
        let rows = self
            .with(move |connection| {
                let mut statement = connection.prepare(
                    "SELECT run_id, effective_at FROM schedules WHERE person_id = ?1 AND state = 'pending' ORDER BY run_id",
                )?;
                let rows = statement
                    .query_map([person], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await
            .map_err(launch_error)?;
        rows.into_iter()
            .map(|(run_id, at)| {
                let start_at = DateTime::parse_from_rfc3339(&at).map_err(|err| {
                    LaunchError(format!("schedules table: effective_at of {run_id}: {err}"))
                })?;
                Ok(PendingRun {
                    run_id,
                    person_id: person_id.to_string(),
                    start_at,
                })
            })
            .collect()
    }

    async fn unschedule(&self, run_id: &str, reason: &str) -> Result<(), LaunchError> {
        let id = run_id.to_string();
        let pending = self
            .with(move |connection| {
                connection
                    .query_row(
                        "SELECT person_id, effective_at FROM schedules WHERE run_id = ?1 AND state = 'pending'",
                        [id],
                        |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
                    )
                    .optional()
            })
            .await
            .map_err(launch_error)?;
        let Some((person_id, at)) = pending else {
            return Ok(());
        };
        // The trail first: the append is idempotent by key, so a retry after a failed
        // update records it once.
        if let Some(audit) = &self.audit {
            let at = DateTime::parse_from_rfc3339(&at).map_err(|err| {
                LaunchError(format!("schedules table: effective_at of {run_id}: {err}"))
            })?;
            audit
                .append(journal::schedule_removed(run_id, &person_id, at, reason))
                .await
                .map_err(launch_error)?;
        }
        let (id, why) = (run_id.to_string(), reason.to_string());
        self.with(move |connection| {
            connection.execute(
                "UPDATE schedules SET state = 'removed', reason = ?2, updated_at = ?3 WHERE run_id = ?1 AND state = 'pending'",
                params![id, why, utc(&Utc::now())],
            )?;
            Ok(())
        })
        .await
        .map_err(launch_error)
    }

    async fn removed(&self, run_id: &str) -> Result<Option<String>, LaunchError> {
        let run_id = run_id.to_string();
        self.with(move |connection| {
            connection
                .query_row(
                    "SELECT reason FROM schedules WHERE run_id = ?1 AND state = 'removed'",
                    [run_id],
                    |row| row.get::<_, Option<String>>(0),
                )
                .optional()
                .map(|found| found.map(|reason| reason.unwrap_or_else(|| "removed".into())))
        })
        .await
        .map_err(launch_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deprov_core::testing::sample_event;

    #[tokio::test]
    async fn schedules_survive_reopening_move_and_come_due() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deprov.db");
        let schedules = SqliteSchedules::open(&path).unwrap();
        let event = sample_event();
        let at = event.effective_at;
        let input = RunInput {
            event,
            dry_run: false,
        };
        for _ in 0..2 {
            schedules
                .schedule_run("r-1", "E1001", at, &input)
                .await
                .unwrap();
        }
        schedules
            .schedule_run("r-2", "E1001", at + chrono::Duration::days(2), &input)
            .await
            .unwrap();
        drop(schedules);

        let store = Arc::new(crate::SqliteStore::open(&path).unwrap());
        let schedules = SqliteSchedules::open(&path)
            .unwrap()
            .auditing_in(store.clone());
        let pending = schedules.pending_for("E1001").await.unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].start_at, at);
        assert_eq!(pending[0].start_at.offset(), at.offset());
        schedules.unschedule("r-1", "moved: to r-2").await.unwrap();
        assert_eq!(
            schedules.removed("r-1").await.unwrap().as_deref(),
            Some("moved: to r-2")
        );
        assert_eq!(schedules.removed("r-2").await.unwrap(), None);
        // The removal is in r-1's audit trail, once even if asked again.
        schedules.unschedule("r-1", "again").await.unwrap();
        let records = store.records("r-1").await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].body.key, "schedule:removed");
        assert_eq!(records[0].body.detail["reason"], "moved: to r-2");
        // A removed schedule is not brought back by scheduling it again.
        schedules
            .schedule_run("r-1", "E1001", at, &input)
            .await
            .unwrap();
        assert_eq!(schedules.pending_for("E1001").await.unwrap().len(), 1);

        let utc = at.with_timezone(&Utc);
        assert!(schedules.due(utc).await.unwrap().is_empty());
        let due = schedules
            .due(utc + chrono::Duration::days(2))
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, "r-2");
        assert_eq!(due[0].1, input);
        schedules.mark_started("r-2").await.unwrap();
        assert!(schedules
            .due(utc + chrono::Duration::days(3))
            .await
            .unwrap()
            .is_empty());
        let states: Vec<_> = schedules
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|record| (record.run_id, record.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("r-1".to_string(), "removed".to_string()),
                ("r-2".to_string(), "started".to_string())
            ]
        );
    }
}
