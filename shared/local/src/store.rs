//! The SQLite file behind `RunStore` and `AuditLog`: runs, tasks, event dedupe and the audit
//! chain in one file, written by one thread that commits queued writes in groups (group
//! commit), so many concurrent tasks cost few fsyncs while every acknowledged write is
//! durable (WAL, `synchronous = FULL`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deprov_core::audit::{AuditEntry, AuditRecord, Body, ChainHead, SealedEntry};
use deprov_core::people::PersonRecord;
use deprov_core::plan::Task;
use deprov_core::ports::{
    AuditLog, Decided, EventClaim, RunRecord, RunStatus, RunStore, StoreError, TaskStart,
};
use deprov_core::quarantine::{Decision, Quarantine, QuarantineStatus};
use deprov_core::task::TaskOutcome;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::oneshot;

/// Most writes committed in one transaction.
const MAX_GROUP: usize = 512;
/// Chain heads kept in memory before the cache is dropped and re-read on demand.
const MAX_CACHED_HEADS: usize = 100_000;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    source TEXT NOT NULL, event_id TEXT NOT NULL, run_id TEXT NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (source, event_id));
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, person_id TEXT NOT NULL, status TEXT NOT NULL,
    next_stage INTEGER NOT NULL, wake_at TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    plan TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_by_person ON runs (person_id);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, wake_at);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, attempts INTEGER NOT NULL,
    outcome TEXT, completed_at TEXT);
CREATE INDEX IF NOT EXISTS tasks_by_run ON tasks (run_id);
CREATE TABLE IF NOT EXISTS audit (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL, subject TEXT NOT NULL,
    body TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
    PRIMARY KEY (run_id, seq), UNIQUE (run_id, key));
CREATE INDEX IF NOT EXISTS audit_by_subject ON audit (subject);
CREATE TABLE IF NOT EXISTS policies (
    version TEXT PRIMARY KEY, document TEXT NOT NULL, recorded_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_heads (
    run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL);
"#;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Answers one command once its group is committed; given the commit error, if any.
type Answer = Box<dyn FnOnce(Option<&str>)>;

enum Command {
    ClaimEvent(String, String, String, Reply<EventClaim>),
    PutRun(Box<RunRecord>, Reply<()>),
    GetRun(String, Reply<Option<RunRecord>>),
    RunStatus(String, Reply<Option<RunStatus>>),
    DueRuns(DateTime<Utc>, Reply<Vec<String>>),
    OpenRunsFor(String, Reply<Vec<RunRecord>>),
    StartTask(String, String, Reply<TaskStart>),
    /// The outcome and its JSON, encoded by the caller (off the writer thread).
    CompleteTask(Box<TaskOutcome>, String, Reply<TaskOutcome>),
    TaskOutcomes(String, Reply<Vec<TaskOutcome>>),
    /// A sealed entry and its body's JSON, both prepared by the caller.
    Append(Box<SealedEntry>, String, Reply<AuditRecord>),
    AppendBatch(Vec<(SealedEntry, String)>, Reply<Vec<AuditRecord>>),
    Records(String, Reply<Vec<AuditRecord>>),
    Head(String, Reply<Option<ChainHead>>),
    RunIds(Reply<Vec<String>>),
    BySubject(String, Reply<Vec<AuditRecord>>),
    PutPolicy(String, String, Reply<()>),
    GetPolicy(String, Reply<Option<String>>),
    /// A command defined in another module (`people_store`): runs in the group's
    /// transaction and answers once the group is committed.
    Call(Box<dyn FnOnce(&Transaction<'_>) -> Answer + Send>),
}

/// Handle to the store; cheap to clone, all clones share the writer thread.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    commands: mpsc::Sender<Command>,
}

pub(crate) fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

pub(crate) fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and starts its writer thread.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|err| backend(format!("cannot create {}: {err}", parent.display())))?;
        }
        let connection = Connection::open(path)
            .map_err(|err| backend(format!("cannot open {}: {err}", path.display())))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; \
                 PRAGMA wal_autocheckpoint = 8192;",
            )
            .and_then(|()| connection.execute_batch(SCHEMA))
            .and_then(|()| connection.execute_batch(crate::people_store::SCHEMA))
            .map_err(|err| backend(format!("cannot prepare {}: {err}", path.display())))?;
        let (commands, receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("deprov-sqlite".into())
            .spawn(move || Writer::new(connection).serve(receiver))
            .map_err(backend)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            commands,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps a policy document under its version (the config table): every plan names the
    /// version it used, and delayed stages resume under the same rules. A version is
    /// immutable: recording different content under it is refused.
    pub async fn record_policy(&self, version: &str, document: &str) -> Result<(), StoreError> {
        let (version, document) = (version.to_string(), document.to_string());
        self.ask(|reply| Command::PutPolicy(version, document, reply))
            .await
    }

    /// The policy document recorded under `version`.
    pub async fn policy(&self, version: &str) -> Result<Option<String>, StoreError> {
        let version = version.to_string();
        self.ask(|reply| Command::GetPolicy(version, reply)).await
    }

    /// Runs `body` on the writer thread, in a savepoint of the next group's transaction.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        body: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.ask(|reply| {
            Command::Call(Box::new(move |transaction: &Transaction<'_>| {
                answer(reply, guarded(transaction, body))
            }))
        })
        .await
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| backend("the SQLite writer thread has stopped"))?;
        answer
            .await
            .map_err(|_| backend("the SQLite writer thread dropped a request"))?
    }
}

struct Writer {
    connection: Connection,
    /// Chain heads of recently appended runs, so appends need no read.
    heads: HashMap<String, ChainHead>,
}

impl Writer {
    fn new(connection: Connection) -> Writer {
        Writer {
            connection,
            heads: HashMap::new(),
        }
    }

    fn serve(mut self, receiver: mpsc::Receiver<Command>) {
        while let Ok(first) = receiver.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
        }
    }

    /// Runs a group of commands in one transaction and answers them after the commit.
    fn commit_group(&mut self, group: Vec<Command>) {
        let mut answers: Vec<Answer> = Vec::with_capacity(group.len());
        let result = (|| -> rusqlite::Result<()> {
            let transaction = self.connection.transaction()?;
            for command in group {
                answers.push(execute(&transaction, &mut self.heads, command));
            }
            transaction.commit()
        })();
        let failure = result.err().map(|err| err.to_string());
        if failure.is_some() || self.heads.len() > MAX_CACHED_HEADS {
            // Nothing of a failed group is stored: forget heads it advanced (they are read
            // back from `audit_heads` on demand). Also bounds the cache.
            self.heads.clear();
        }
        for answer in answers {
            answer(failure.as_deref());
        }
    }
}

/// Answers a command with `result` once its group is committed, or with the commit's error.
fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Answer {
    Box::new(move |failure: Option<&str>| {
        let result = match failure {
            Some(err) => Err(backend(format!("commit failed: {err}"))),
            None => result,
        };
        let _ = reply.send(result);
    })
}

/// Below this many entries a batch is sealed on the caller's thread alone.
const SEAL_PER_THREAD: usize = 256;

/// Seals and encodes entries (off the writer thread). Hashing and encoding are most of a
/// large batch's cost (a sweep's plans, its task records), so a large batch is spread over
/// the cores.
fn seal_all(
    entries: Vec<AuditEntry>,
    at: DateTime<Utc>,
) -> Result<Vec<(SealedEntry, String)>, StoreError> {
    let seal = |entry: AuditEntry| {
        let sealed = entry.seal(at);
        let body = serde_json::to_string(&sealed.body).map_err(backend)?;
        Ok((sealed, body))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || entries.len() < 2 * SEAL_PER_THREAD {
        return entries.into_iter().map(seal).collect();
    }
    let per_part = entries.len().div_ceil(threads);
    let mut parts = Vec::with_capacity(threads);
    let mut rest = entries;
    while rest.len() > per_part {
        let tail = rest.split_off(per_part);
        parts.push(rest);
        rest = tail;
    }
    parts.push(rest);
    std::thread::scope(|scope| {
        let sealing: Vec<_> = parts
            .into_iter()
            .map(|part| {
                scope.spawn(move || part.into_iter().map(seal).collect::<Result<Vec<_>, _>>())
            })
            .collect();
        let mut sealed = Vec::new();
        for part in sealing {
            sealed.extend(
                part.join()
                    .map_err(|_| backend("sealing audit entries panicked"))??,
            );
        }
        Ok(sealed)
    })
}

/// Per-item answers of a batch call, or its one failure repeated for every item.
fn each_or<T>(
    answers: Result<Vec<Result<T, StoreError>>, StoreError>,
    count: usize,
) -> Vec<Result<T, StoreError>> {
    match answers {
        Ok(answers) => answers,
        Err(err) => {
            let message = err.to_string();
            (0..count).map(|_| Err(backend(&message))).collect()
        }
    }
}

/// `execute` through the statement cache: the writer runs the same few statements all day.
pub(crate) fn cached_execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the statement cache.
pub(crate) fn cached_row<T>(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    tx.prepare_cached(sql)?.query_row(params, row)
}

/// Runs `body` in a savepoint, so a failing command does not undo the others of its group.
fn guarded<T>(
    transaction: &Transaction<'_>,
    body: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    cached_execute(transaction, "SAVEPOINT command", []).map_err(backend)?;
    let result = body(transaction);
    if result.is_err() {
        cached_execute(transaction, "ROLLBACK TO command", []).map_err(backend)?;
    }
    cached_execute(transaction, "RELEASE command", []).map_err(backend)?;
    result
}

/// Executes one command inside the group's transaction (in a savepoint, so one failing
/// command does not undo the others) and returns how to answer it once the group is
/// committed (or failed).
fn execute(
    transaction: &Transaction<'_>,
    heads: &mut HashMap<String, ChainHead>,
    command: Command,
) -> Answer {
    match command {
        Command::ClaimEvent(source, event_id, run_id, reply) => answer(
            reply,
            guarded(transaction, |tx| {
                claim_event(tx, &source, &event_id, &run_id)
            }),
        ),
        Command::PutRun(run, reply) => answer(reply, guarded(transaction, |tx| put_run(tx, &run))),
        Command::GetRun(run_id, reply) => answer(reply, get_run(transaction, &run_id)),
        Command::RunStatus(run_id, reply) => answer(reply, run_status(transaction, &run_id)),
        Command::DueRuns(now, reply) => answer(reply, due_runs(transaction, now)),
        Command::OpenRunsFor(person_id, reply) => {
            answer(reply, open_runs_for(transaction, &person_id))
        }
        Command::StartTask(task_id, run_id, reply) => answer(
            reply,
            guarded(transaction, |tx| start_task(tx, &task_id, &run_id)),
        ),
        Command::CompleteTask(outcome, text, reply) => answer(
            reply,
            guarded(transaction, |tx| complete_task(tx, *outcome, &text)),
        ),
        Command::TaskOutcomes(run_id, reply) => answer(reply, task_outcomes(transaction, &run_id)),
        Command::Append(sealed, body, reply) => {
            let run_id = sealed.body.run_id.clone();
            let before = heads.get(&run_id).cloned();
            let result = guarded(transaction, |tx| append(tx, heads, *sealed, &body));
            if result.is_err() {
                // The savepoint rolled the row back; the cached head must follow.
                match before {
                    Some(head) => heads.insert(run_id, head),
                    None => heads.remove(&run_id),
                };
            }
            answer(reply, result)
        }
        Command::AppendBatch(batch, reply) => {
            let runs: Vec<String> = batch
                .iter()
                .map(|(sealed, _)| sealed.body.run_id.clone())
                .collect();
            let before: Vec<Option<ChainHead>> =
                runs.iter().map(|run| heads.get(run).cloned()).collect();
            let result = guarded(transaction, |tx| {
                batch
                    .into_iter()
                    .map(|(sealed, body)| append(tx, heads, sealed, &body))
                    .collect::<Result<Vec<_>, _>>()
            });
            if result.is_err() {
                // The savepoint rolled every row back; so must the cached heads.
                for (run, head) in runs.into_iter().zip(before).rev() {
                    match head {
                        Some(head) => heads.insert(run, head),
                        None => heads.remove(&run),
                    };
                }
            }
            answer(reply, result)
        }
        Command::Records(run_id, reply) => answer(reply, records(transaction, &run_id)),
        Command::Head(run_id, reply) => answer(reply, head(transaction, &run_id)),
        Command::RunIds(reply) => answer(reply, run_ids(transaction)),
        Command::BySubject(subject, reply) => answer(reply, by_subject(transaction, &subject)),
        Command::PutPolicy(version, document, reply) => answer(
            reply,
            guarded(transaction, |tx| put_policy(tx, &version, &document)),
        ),
        Command::GetPolicy(version, reply) => answer(reply, get_policy(transaction, &version)),
        Command::Call(call) => call(transaction),
    }
}

fn put_policy(tx: &Transaction<'_>, version: &str, document: &str) -> Result<(), StoreError> {
    match get_policy(tx, version)? {
        Some(stored) if stored == document => Ok(()),
        Some(_) => Err(StoreError::Backend(format!(
            "policy version \"{version}\" is already recorded with different content; \
             give the changed policy a new `version` so every run keeps pointing at the rules it used"
        ))),
        None => {
            cached_execute(tx,
                "INSERT INTO policies (version, document, recorded_at) VALUES (?1, ?2, ?3)",
                params![version, document, Utc::now().to_rfc3339()],
            )
            .map_err(backend)?;
            Ok(())
        }
    }
}

fn get_policy(tx: &Transaction<'_>, version: &str) -> Result<Option<String>, StoreError> {
    cached_row(
        tx,
        "SELECT document FROM policies WHERE version = ?1",
        params![version],
        |row| row.get(0),
    )
    .optional()
    .map_err(backend)
}

fn claim_event(
    tx: &Transaction<'_>,
    source: &str,
    event_id: &str,
    run_id: &str,
) -> Result<EventClaim, StoreError> {
    let claimed = cached_execute(
        tx,
        "INSERT INTO events (source, event_id, run_id, received_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (source, event_id) DO NOTHING",
        params![source, event_id, run_id, Utc::now().to_rfc3339()],
    )
    .map_err(backend)?;
    if claimed == 1 {
        return Ok(EventClaim::New);
    }
    let existing: String = cached_row(
        tx,
        "SELECT run_id FROM events WHERE source = ?1 AND event_id = ?2",
        params![source, event_id],
        |row| row.get(0),
    )
    .map_err(backend)?;
    Ok(EventClaim::Existing(existing))
}

fn put_run(tx: &Transaction<'_>, run: &RunRecord) -> Result<(), StoreError> {
    let wake_at = run.wake_at.map(|at| at.to_rfc3339());
    let updated = tx
        .prepare_cached(
            "UPDATE runs SET status = ?2, next_stage = ?3, wake_at = ?4, updated_at = ?5 WHERE run_id = ?1",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                run.run_id,
                run.status.as_str(),
                run.next_stage,
                wake_at,
                run.updated_at.to_rfc3339()
            ])
        })
        .map_err(backend)?;
    if updated == 0 {
        // First put: the plan is written once, here.
        let plan = serde_json::to_string(&run.plan).map_err(backend)?;
        cached_execute(tx,
            "INSERT INTO runs (run_id, person_id, status, next_stage, wake_at, created_at, updated_at, plan)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                run.run_id,
                run.person_id,
                run.status.as_str(),
                run.next_stage,
                wake_at,
                run.created_at.to_rfc3339(),
                run.updated_at.to_rfc3339(),
                plan
            ],
        )
        .map_err(backend)?;
    }
    Ok(())
}

fn parse_status(text: &str) -> Result<RunStatus, StoreError> {
    RunStatus::from_name(text)
        .ok_or_else(|| corrupt("runs.status", format!("unknown status `{text}`")))
}

fn parse_time(column: &str, text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|err| corrupt(column, err))
}

const RUN_COLUMNS: &str =
    "run_id, person_id, status, next_stage, wake_at, created_at, updated_at, plan";

/// A `runs` row as read, before parsing.
struct RunRow {
    run_id: String,
    person_id: String,
    status: String,
    next_stage: usize,
    wake_at: Option<String>,
    created_at: String,
    updated_at: String,
    plan: String,
}

fn run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        run_id: row.get(0)?,
        person_id: row.get(1)?,
        status: row.get(2)?,
        next_stage: row.get(3)?,
        wake_at: row.get(4)?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
        plan: row.get(7)?,
    })
}

fn parse_run(row: RunRow) -> Result<RunRecord, StoreError> {
    Ok(RunRecord {
        status: parse_status(&row.status)?,
        next_stage: row.next_stage,
        wake_at: row
            .wake_at
            .map(|at| parse_time("runs.wake_at", &at))
            .transpose()?,
        created_at: parse_time("runs.created_at", &row.created_at)?,
        updated_at: parse_time("runs.updated_at", &row.updated_at)?,
        plan: serde_json::from_str(&row.plan)
            .map_err(|err| corrupt(&format!("plan of run {}", row.run_id), err))?,
        run_id: row.run_id,
        person_id: row.person_id,
    })
}

fn get_run(tx: &Transaction<'_>, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
    cached_row(
        tx,
        &format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"),
        params![run_id],
        run_row,
    )
    .optional()
    .map_err(backend)?
    .map(parse_run)
    .transpose()
}

fn run_status(tx: &Transaction<'_>, run_id: &str) -> Result<Option<RunStatus>, StoreError> {
    tx.prepare_cached("SELECT status FROM runs WHERE run_id = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![run_id], |row| row.get::<_, String>(0))
                .optional()
        })
        .map_err(backend)?
        .map(|status| parse_status(&status))
        .transpose()
}

fn due_runs(tx: &Transaction<'_>, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
    let mut statement = tx
        .prepare_cached(
            "SELECT run_id, status, wake_at FROM runs WHERE status IN ('running', 'waiting', 'awaiting_approval') ORDER BY run_id",
        )
        .map_err(backend)?;
    let rows = statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(backend)?;
    let mut due = Vec::new();
    for row in rows {
        let (run_id, status, wake_at) = row.map_err(backend)?;
        let wake_at = wake_at
            .map(|at| parse_time("runs.wake_at", &at))
            .transpose()?;
        if parse_status(&status)?.is_due(wake_at, now) {
            due.push(run_id);
        }
    }
    Ok(due)
}

fn open_runs_for(tx: &Transaction<'_>, person_id: &str) -> Result<Vec<RunRecord>, StoreError> {
    let mut statement = tx
        .prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE person_id = ?1 AND status IN ('running', 'waiting', 'awaiting_approval') ORDER BY run_id"
        ))
        .map_err(backend)?;
    let rows = statement
        .query_map(params![person_id], run_row)
        .map_err(backend)?;
    rows.map(|row| row.map_err(backend).and_then(parse_run))
        .collect()
}

fn parse_outcome(text: &str) -> Result<TaskOutcome, StoreError> {
    serde_json::from_str(text).map_err(|err| corrupt("task outcome", err))
}

fn start_task(tx: &Transaction<'_>, task_id: &str, run_id: &str) -> Result<TaskStart, StoreError> {
    let fresh = cached_execute(
        tx,
        "INSERT INTO tasks (task_id, run_id, attempts) VALUES (?1, ?2, 1)
         ON CONFLICT (task_id) DO NOTHING",
        params![task_id, run_id],
    )
    .map_err(backend)?;
    if fresh == 1 {
        return Ok(TaskStart::Fresh);
    }
    let (attempts, outcome): (u32, Option<String>) = cached_row(
        tx,
        "SELECT attempts, outcome FROM tasks WHERE task_id = ?1",
        params![task_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .map_err(backend)?;
    if let Some(outcome) = outcome {
        return Ok(TaskStart::Finished(Box::new(parse_outcome(&outcome)?)));
    }
    cached_execute(
        tx,
        "UPDATE tasks SET attempts = attempts + 1 WHERE task_id = ?1",
        params![task_id],
    )
    .map_err(backend)?;
    Ok(TaskStart::Interrupted { attempts })
}

fn complete_task(
    tx: &Transaction<'_>,
    outcome: TaskOutcome,
    text: &str,
) -> Result<TaskOutcome, StoreError> {
    let task = &outcome.task;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO tasks (task_id, run_id, attempts, outcome, completed_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (task_id) DO UPDATE SET outcome = excluded.outcome, completed_at = excluded.completed_at
             WHERE tasks.outcome IS NULL",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                task.task_id,
                task.run_id,
                outcome.attempts,
                text,
                outcome.finished_at.to_rfc3339()
            ])
        })
        .map_err(backend)?;
    if inserted == 1 {
        return Ok(outcome);
    }
    // An earlier completion won; it is the one that counts.
    let stored: String = cached_row(
        tx,
        "SELECT outcome FROM tasks WHERE task_id = ?1",
        params![task.task_id],
        |row| row.get(0),
    )
    .map_err(backend)?;
    parse_outcome(&stored)
}

fn task_outcomes(tx: &Transaction<'_>, run_id: &str) -> Result<Vec<TaskOutcome>, StoreError> {
    let mut statement = tx
        .prepare_cached(
            "SELECT outcome FROM tasks WHERE run_id = ?1 AND outcome IS NOT NULL ORDER BY task_id",
        )
        .map_err(backend)?;
    let rows = statement
        .query_map(params![run_id], |row| row.get::<_, String>(0))
        .map_err(backend)?;
    rows.map(|row| row.map_err(backend).and_then(|text| parse_outcome(&text)))
        .collect()
}

const AUDIT_COLUMNS: &str = "run_id, seq, body, prev_hash, hash";

/// An `audit` row as read, before parsing.
struct AuditRow {
    run_id: String,
    seq: u64,
    body: String,
    prev_hash: String,
    hash: String,
}

fn audit_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        run_id: row.get(0)?,
        seq: row.get(1)?,
        body: row.get(2)?,
        prev_hash: row.get(3)?,
        hash: row.get(4)?,
    })
}

fn parse_record(row: AuditRow) -> Result<AuditRecord, StoreError> {
    let body: Body = serde_json::from_str(&row.body).map_err(|err| {
        corrupt(
            &format!(
                "audit record of run {} at seq {} is unreadable",
                row.run_id, row.seq
            ),
            err,
        )
    })?;
    Ok(AuditRecord {
        body,
        seq: row.seq,
        prev_hash: row.prev_hash,
        hash: row.hash,
    })
}

fn append(
    tx: &Transaction<'_>,
    heads: &mut HashMap<String, ChainHead>,
    sealed: SealedEntry,
    body: &str,
) -> Result<AuditRecord, StoreError> {
    let head = match heads.get(&sealed.body.run_id) {
        Some(head) => Some(head.clone()),
        None => head(tx, &sealed.body.run_id)?,
    };
    let record = sealed.link(head.as_ref());
    let inserted = cached_execute(
        tx,
        "INSERT INTO audit (run_id, seq, key, subject, body, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (run_id, key) DO NOTHING",
        params![
            record.body.run_id,
            record.seq,
            record.body.key,
            record.body.subject,
            body,
            record.prev_hash,
            record.hash
        ],
    )
    .map_err(backend)?;
    if inserted == 0 {
        // Appended before (a retry): the first record stands and the chain does not move.
        let existing = cached_row(
            tx,
            &format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE run_id = ?1 AND key = ?2"),
            params![record.body.run_id, record.body.key],
            audit_row,
        )
        .map_err(backend)?;
        return parse_record(existing);
    }
    tx.prepare_cached(
        "INSERT INTO audit_heads (run_id, seq, hash) VALUES (?1, ?2, ?3)
         ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .and_then(|mut statement| {
        statement.execute(params![record.body.run_id, record.seq, record.hash])
    })
    .map_err(backend)?;
    heads.insert(record.body.run_id.clone(), record.head());
    Ok(record)
}

fn collect_records(
    tx: &Transaction<'_>,
    sql: &str,
    parameter: &str,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut statement = tx.prepare_cached(sql).map_err(backend)?;
    let rows = statement
        .query_map(params![parameter], audit_row)
        .map_err(backend)?;
    rows.map(|row| row.map_err(backend).and_then(parse_record))
        .collect()
}

fn records(tx: &Transaction<'_>, run_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
    collect_records(
        tx,
        &format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE run_id = ?1 ORDER BY seq"),
        run_id,
    )
}

fn by_subject(tx: &Transaction<'_>, subject: &str) -> Result<Vec<AuditRecord>, StoreError> {
    collect_records(
        tx,
        &format!(
            "SELECT {AUDIT_COLUMNS} FROM audit WHERE subject = ?1 ORDER BY json_extract(body, '$.at'), run_id, seq"
        ),
        subject,
    )
}

fn head(tx: &Transaction<'_>, run_id: &str) -> Result<Option<ChainHead>, StoreError> {
    tx.prepare_cached("SELECT seq, hash FROM audit_heads WHERE run_id = ?1")
        .and_then(|mut statement| {
            statement
                .query_row(params![run_id], |row| {
                    Ok(ChainHead {
                        seq: row.get(0)?,
                        hash: row.get(1)?,
                    })
                })
                .optional()
        })
        .map_err(backend)
}

fn run_ids(tx: &Transaction<'_>) -> Result<Vec<String>, StoreError> {
    let mut statement = tx
        .prepare_cached(
            "SELECT run_id FROM audit_heads UNION SELECT DISTINCT run_id FROM audit ORDER BY 1",
        )
        .map_err(backend)?;
    let rows = statement
        .query_map([], |row| row.get::<_, String>(0))
        .map_err(backend)?;
    rows.map(|row| row.map_err(backend)).collect()
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn claim_event(
        &self,
        source: &str,
        event_id: &str,
        run_id: &str,
    ) -> Result<EventClaim, StoreError> {
        let (source, event_id, run_id) =
            (source.to_string(), event_id.to_string(), run_id.to_string());
        self.ask(|reply| Command::ClaimEvent(source, event_id, run_id, reply))
            .await
    }

    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let run = Box::new(run.clone());
        self.ask(|reply| Command::PutRun(run, reply)).await
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let run_id = run_id.to_string();
        self.ask(|reply| Command::GetRun(run_id, reply)).await
    }

    async fn run_status(&self, run_id: &str) -> Result<Option<RunStatus>, StoreError> {
        let run_id = run_id.to_string();
        self.ask(|reply| Command::RunStatus(run_id, reply)).await
    }

    async fn due_runs(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        self.ask(|reply| Command::DueRuns(now, reply)).await
    }

    async fn open_runs_for(&self, person_id: &str) -> Result<Vec<RunRecord>, StoreError> {
        let person_id = person_id.to_string();
        self.ask(|reply| Command::OpenRunsFor(person_id, reply))
            .await
    }

    async fn start_task(&self, task: &Task) -> Result<TaskStart, StoreError> {
        let (task_id, run_id) = (task.task_id.clone(), task.run_id.clone());
        self.ask(|reply| Command::StartTask(task_id, run_id, reply))
            .await
    }

    async fn complete_task(&self, outcome: &TaskOutcome) -> Result<TaskOutcome, StoreError> {
        let text = serde_json::to_string(outcome).map_err(backend)?;
        let outcome = Box::new(outcome.clone());
        self.ask(|reply| Command::CompleteTask(outcome, text, reply))
            .await
    }

    async fn task_outcomes(&self, run_id: &str) -> Result<Vec<TaskOutcome>, StoreError> {
        let run_id = run_id.to_string();
        self.ask(|reply| Command::TaskOutcomes(run_id, reply)).await
    }

    async fn claim_events(
        &self,
        claims: &[(String, String, String)],
    ) -> Result<Vec<EventClaim>, StoreError> {
        let claims = claims.to_vec();
        self.call(move |tx| {
            claims
                .iter()
                .map(|(source, event_id, run_id)| claim_event(tx, source, event_id, run_id))
                .collect()
        })
        .await
    }

    async fn put_runs(&self, runs: &[RunRecord]) -> Result<(), StoreError> {
        let runs = runs.to_vec();
        self.call(move |tx| runs.iter().try_for_each(|run| put_run(tx, run)))
            .await
    }

    async fn run_statuses(&self, run_ids: &[String]) -> Result<Vec<Option<RunStatus>>, StoreError> {
        let run_ids = run_ids.to_vec();
        self.call(move |tx| run_ids.iter().map(|id| run_status(tx, id)).collect())
            .await
    }

    async fn task_outcomes_of(
        &self,
        run_ids: &[String],
    ) -> Result<Vec<Vec<TaskOutcome>>, StoreError> {
        let run_ids = run_ids.to_vec();
        self.call(move |tx| run_ids.iter().map(|id| task_outcomes(tx, id)).collect())
            .await
    }

    async fn start_tasks(&self, tasks: &[Task]) -> Vec<Result<TaskStart, StoreError>> {
        let ids: Vec<(String, String)> = tasks
            .iter()
            .map(|task| (task.task_id.clone(), task.run_id.clone()))
            .collect();
        let count = ids.len();
        let starts = self
            .call(move |tx| {
                Ok(ids
                    .iter()
                    .map(|(task_id, run_id)| guarded(tx, |tx| start_task(tx, task_id, run_id)))
                    .collect::<Vec<_>>())
            })
            .await;
        each_or(starts, count)
    }

    async fn complete_tasks(
        &self,
        outcomes: &[TaskOutcome],
    ) -> Vec<Result<TaskOutcome, StoreError>> {
        let count = outcomes.len();
        let encoded: Result<Vec<(TaskOutcome, String)>, StoreError> = outcomes
            .iter()
            .map(|outcome| {
                Ok((
                    outcome.clone(),
                    serde_json::to_string(outcome).map_err(backend)?,
                ))
            })
            .collect();
        let encoded = match encoded {
            Ok(encoded) => encoded,
            Err(err) => return each_or(Err(err), count),
        };
        let winners = self
            .call(move |tx| {
                Ok(encoded
                    .into_iter()
                    .map(|(outcome, text)| guarded(tx, |tx| complete_task(tx, outcome, &text)))
                    .collect::<Vec<_>>())
            })
            .await;
        each_or(winners, count)
    }

    async fn record_person(&self, person: &PersonRecord) -> Result<(), StoreError> {
        crate::people_store::record_people(self, std::slice::from_ref(person)).await
    }

    async fn record_people(&self, people: &[PersonRecord]) -> Result<(), StoreError> {
        crate::people_store::record_people(self, people).await
    }

    async fn people(&self) -> Result<Vec<PersonRecord>, StoreError> {
        crate::people_store::people(self).await
    }

    async fn put_quarantine(&self, quarantine: &Quarantine) -> Result<Quarantine, StoreError> {
        crate::people_store::put_quarantine(self, quarantine).await
    }

    async fn get_quarantine(&self, id: &str) -> Result<Option<Quarantine>, StoreError> {
        crate::people_store::get_quarantine(self, id).await
    }

    async fn quarantines(&self) -> Result<Vec<Quarantine>, StoreError> {
        crate::people_store::quarantines(self).await
    }

    async fn decide_quarantine(
        &self,
        id: &str,
        status: QuarantineStatus,
        decision: &Decision,
    ) -> Result<Decided, StoreError> {
        crate::people_store::decide_quarantine(self, id, status, decision).await
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        // Hashing and encoding happen here, on the caller's thread; the writer only links.
        let sealed = entry.seal(Utc::now());
        let body = serde_json::to_string(&sealed.body).map_err(backend)?;
        let sealed = Box::new(sealed);
        self.ask(|reply| Command::Append(sealed, body, reply)).await
    }

    async fn append_batch(&self, entries: Vec<AuditEntry>) -> Result<Vec<AuditRecord>, StoreError> {
        let batch = seal_all(entries, Utc::now())?;
        self.ask(|reply| Command::AppendBatch(batch, reply)).await
    }

    async fn records(&self, run_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let run_id = run_id.to_string();
        self.ask(|reply| Command::Records(run_id, reply)).await
    }

    async fn head(&self, run_id: &str) -> Result<Option<ChainHead>, StoreError> {
        let run_id = run_id.to_string();
        self.ask(|reply| Command::Head(run_id, reply)).await
    }

    async fn run_ids(&self) -> Result<Vec<String>, StoreError> {
        self.ask(Command::RunIds).await
    }

    async fn by_subject(&self, subject: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let subject = subject.to_string();
        self.ask(|reply| Command::BySubject(subject, reply)).await
    }
}
