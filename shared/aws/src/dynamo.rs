//! DynamoDB behind `RunStore` and `AuditLog`.
//!
//! Runs table (single table, `pk`/`sk` strings):
//! - `EVENT#<source>#<event_id>` / `EVENT` — dedupe: which run an event started;
//! - `RUN#<run_id>` / `RUN` — the run's state and its plan (written once); open runs carry
//!   `status_key` (sparse index `by_status`, sorted by `wake_at`) and `person` (index
//!   `by_person`);
//! - `RUN#<run_id>` / `TASK#<task_id>` — attempts and the first recorded outcome;
//! - `AUDIT#<run_id>` / `HEAD` — the chain's head, and `KEY#<key>` — which seq holds a key;
//! - `PERSON#<id>` and `QUARANTINE#<id>` — see `people`.
//!
//! Audit table (`run_id` string, `seq` number): append-only records; index `by_subject`.
//! An append is one transaction: the record (new seq), its key marker and the head moved
//! from the seq it was read at — so concurrent appenders never fork the chain, and a key is
//! recorded once.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use deprov_core::audit::{AuditEntry, AuditRecord, Body, ChainHead};
use deprov_core::people::PersonRecord;
use deprov_core::plan::Task;
use deprov_core::ports::Decided;
use deprov_core::ports::{
    AuditLog, EventClaim, RunRecord, RunStatus, RunStore, StoreError, TaskStart,
};
use deprov_core::quarantine::{Decision, Quarantine, QuarantineStatus};
use deprov_core::task::TaskOutcome;

mod people;

type Item = HashMap<String, AttributeValue>;

/// Appends retried after losing a race to a concurrent appender.
const MAX_APPEND_RACES: usize = 50;

fn backend<E: std::fmt::Debug>(what: &str, err: E) -> StoreError {
    StoreError::Backend(format!("DynamoDB {what}: {err:?}"))
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn text<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    item.get(name)
        .and_then(|value| value.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| {
            corrupt(
                "DynamoDB item",
                format!("attribute `{name}` is missing or not a string"),
            )
        })
}

fn number(item: &Item, name: &str) -> Result<u64, StoreError> {
    item.get(name)
        .and_then(|value| value.as_n().ok())
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| {
            corrupt(
                "DynamoDB item",
                format!("attribute `{name}` is missing or not a number"),
            )
        })
}

fn time(at: &DateTime<Utc>) -> String {
    // Fixed width, so the strings sort as the times do (the `by_status` index relies on it).
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(value: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(value)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|err| corrupt("stored time", err))
}

fn run_pk(run_id: &str) -> String {
    format!("RUN#{run_id}")
}

fn audit_pk(run_id: &str) -> String {
    format!("AUDIT#{run_id}")
}

/// The runs table.
#[derive(Clone)]
pub struct DynamoRunStore {
    client: Client,
    table: String,
}

impl DynamoRunStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoRunStore {
        DynamoRunStore {
            client,
            table: table.into(),
        }
    }

    async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map(|output| output.item)
            .map_err(|err| backend("GetItem", err))
    }

    async fn query(
        &self,
        index: Option<&str>,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression(condition);
        if let Some(index) = index {
            request = request.index_name(index);
        } else {
            request = request.consistent_read(true);
        }
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        let mut pages = request.into_paginator().items().send();
        let mut items = Vec::new();
        while let Some(item) = pages.next().await {
            items.push(item.map_err(|err| backend("Query", err))?);
        }
        Ok(items)
    }

    fn run_from(item: &Item) -> Result<RunRecord, StoreError> {
        let run_id = text(item, "run_id")?.to_string();
        let status = text(item, "status")?;
        Ok(RunRecord {
            status: RunStatus::from_name(status).ok_or_else(|| corrupt("run status", status))?,
            person_id: text(item, "person")?.to_string(),
            next_stage: number(item, "next_stage")? as usize,
            wake_at: item
                .get("wake_at")
                .and_then(|value| value.as_s().ok())
                .map(|value| parse_time(value))
                .transpose()?,
            created_at: parse_time(text(item, "created_at")?)?,
            updated_at: parse_time(text(item, "updated_at")?)?,
            plan: serde_json::from_str(text(item, "plan")?)
                .map_err(|err| corrupt(&format!("plan of run {run_id}"), err))?,
            run_id,
        })
    }

    /// Records a run scheduled to start at `at` (`SCHEDULE#<run_id>` / `SCHEDULE`): what
    /// is pending, for operators and the sweep, and (through the `by_person` index) what a
    /// newer termination moves or a cancel removes. `start_at` is UTC (it sorts);
    /// `effective_at` keeps the sender's offset. Idempotent: the same run written again
    /// holds the same values. A removed schedule is not written again.
    pub async fn put_schedule(
        &self,
        run_id: &str,
        person_id: &str,
        at: DateTime<FixedOffset>,
    ) -> Result<(), StoreError> {
        let written = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(format!("SCHEDULE#{run_id}")))
            .item("sk", s("SCHEDULE"))
            .item("run_id", s(run_id))
            .item("person", s(person_id))
            .item("start_at", s(time(&at.with_timezone(&Utc))))
            .item("effective_at", s(at.to_rfc3339()))
            .item("state", s("pending"))
            .item("recorded_at", s(time(&Utc::now())))
            .condition_expression("attribute_not_exists(#state) OR #state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":pending", s("pending"))
            .send()
            .await;
        match written {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(err) => Err(backend("PutItem schedule", err)),
        }
    }

    /// The person's schedules still pending (`SCHEDULE#` items of the `by_person` index).
    pub async fn pending_schedules(
        &self,
        person_id: &str,
    ) -> Result<Vec<(String, DateTime<FixedOffset>)>, StoreError> {
        let items = self
            .query(
                Some("by_person"),
                "person = :person",
                vec![(":person", s(person_id))],
            )
            .await?;
        let mut pending = Vec::new();
        for item in items {
            let is_schedule = item
                .get("pk")
                .and_then(|value| value.as_s().ok())
                .is_some_and(|pk| pk.starts_with("SCHEDULE#"));
            let state = item.get("state").and_then(|value| value.as_s().ok());
            if !is_schedule || state.is_some_and(|state| state != "pending") {
                continue;
            }
            let run_id = text(&item, "run_id")?.to_string();
            let at = match item.get("effective_at").and_then(|value| value.as_s().ok()) {
                Some(given) => DateTime::parse_from_rfc3339(given)
                    .map_err(|err| corrupt("schedule effective_at", err))?,
                None => parse_time(text(&item, "start_at")?)?.fixed_offset(),
            };
            pending.push((run_id, at));
        }
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(pending)
    }

    /// Marks a schedule removed, with why and when; the item stays for operators.
    pub async fn remove_schedule(&self, run_id: &str, reason: &str) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("SCHEDULE#{run_id}")))
            .key("sk", s("SCHEDULE"))
            .update_expression(
                "SET #state = :removed, removed_reason = :reason, removed_at = :at, run_id = :run",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":removed", s("removed"))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":at", s(time(&Utc::now())))
            .expression_attribute_values(":run", s(run_id))
            .send()
            .await
            .map(|_| ())
            .map_err(|err| backend("UpdateItem schedule", err))
    }

    /// Why the run's schedule was removed, if it was.
    pub async fn schedule_removal(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        let Some(item) = self.get(format!("SCHEDULE#{run_id}"), "SCHEDULE").await? else {
            return Ok(None);
        };
        if item
            .get("state")
            .and_then(|value| value.as_s().ok())
            .map(String::as_str)
            != Some("removed")
        {
            return Ok(None);
        }
        Ok(Some(
            item.get("removed_reason")
                .and_then(|value| value.as_s().ok())
                .cloned()
                .unwrap_or_else(|| "removed".to_string()),
        ))
    }
}

#[async_trait]
impl RunStore for DynamoRunStore {
    async fn claim_event(
        &self,
        source: &str,
        event_id: &str,
        run_id: &str,
    ) -> Result<EventClaim, StoreError> {
        let pk = format!("EVENT#{source}#{event_id}");
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&pk))
            .item("sk", s("EVENT"))
            .item("run_id", s(run_id))
            .item("received_at", s(time(&Utc::now())))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match put {
            Ok(_) => Ok(EventClaim::New),
            Err(err) if is_condition_failure(&err) => {
                let existing = self
                    .get(pk, "EVENT")
                    .await?
                    .ok_or_else(|| corrupt("event claim", "vanished"))?;
                Ok(EventClaim::Existing(text(&existing, "run_id")?.to_string()))
            }
            Err(err) => Err(backend("PutItem event", err)),
        }
    }

    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let open = !run.status.is_finished();
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(&run.run_id)))
            .key("sk", s("RUN"))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(run.status.as_str()))
            .expression_attribute_values(":next", n(run.next_stage))
            .expression_attribute_values(":updated", s(time(&run.updated_at)))
            .condition_expression("attribute_exists(pk)");
        let mut set = vec![
            "#status = :status",
            "next_stage = :next",
            "updated_at = :updated",
        ];
        let mut remove = Vec::new();
        match run.wake_at {
            Some(at) => {
                set.push("wake_at = :wake");
                update = update.expression_attribute_values(":wake", s(time(&at)));
            }
            None => remove.push("wake_at"),
        }
        if open {
            // Open runs sit in the sparse `by_status` index, sorted by when they are due.
            set.push("status_key = :status, due_at = :due");
            let due = run.wake_at.unwrap_or(run.updated_at);
            update = update.expression_attribute_values(":due", s(time(&due)));
        } else {
            remove.push("status_key");
            remove.push("due_at");
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        match update.update_expression(expression).send().await {
            Ok(_) => return Ok(()),
            Err(err) if is_condition_failure(&err) => {}
            Err(err) => return Err(backend("UpdateItem run", err)),
        }
        // First put: the plan is written once, here.
        let plan = serde_json::to_string(&run.plan).map_err(|err| backend("encode plan", err))?;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(run_pk(&run.run_id)))
            .item("sk", s("RUN"))
            .item("run_id", s(&run.run_id))
            .item("person", s(&run.person_id))
            .item("status", s(run.status.as_str()))
            .item("next_stage", n(run.next_stage))
            .item("created_at", s(time(&run.created_at)))
            .item("updated_at", s(time(&run.updated_at)))
            .item("plan", s(plan))
            .condition_expression("attribute_not_exists(pk)");
        if let Some(at) = run.wake_at {
            put = put.item("wake_at", s(time(&at)));
        }
        if open {
            put = put
                .item("status_key", s(run.status.as_str()))
                .item("due_at", s(time(&run.wake_at.unwrap_or(run.updated_at))));
        }
        match put.send().await {
            Ok(_) => Ok(()),
            // Created concurrently: apply the state update over it.
            Err(err) if is_condition_failure(&err) => Box::pin(self.put_run(run)).await,
            Err(err) => Err(backend("PutItem run", err)),
        }
    }

    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        self.get(run_pk(run_id), "RUN")
            .await?
            .as_ref()
            .map(Self::run_from)
            .transpose()
    }

    async fn run_status(&self, run_id: &str) -> Result<Option<RunStatus>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(run_id)))
            .key("sk", s("RUN"))
            .projection_expression("#status")
            .expression_attribute_names("#status", "status")
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| backend("GetItem", err))?
            .item;
        item.map(|item| {
            let status = text(&item, "status")?;
            RunStatus::from_name(status).ok_or_else(|| corrupt("run status", status))
        })
        .transpose()
    }

    async fn due_runs(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
        let mut due = Vec::new();
        for status in RunStatus::OPEN {
            let items = self
                .query(
                    Some("by_status"),
                    "status_key = :status AND due_at <= :now",
                    vec![(":status", s(status.as_str())), (":now", s(time(&now)))],
                )
                .await?;
            for item in &items {
                due.push(text(item, "run_id")?.to_string());
            }
        }
        due.sort();
        due.dedup();
        Ok(due)
    }

    async fn open_runs_for(&self, person_id: &str) -> Result<Vec<RunRecord>, StoreError> {
        let items = self
            .query(
                Some("by_person"),
                "person = :person",
                vec![(":person", s(person_id))],
            )
            .await?;
        let mut runs = Vec::new();
        for item in &items {
            // The index may lag; the base item is the truth.
            if let Some(run) = self.get_run(text(item, "run_id")?).await? {
                if !run.status.is_finished() {
                    runs.push(run);
                }
            }
        }
        runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        Ok(runs)
    }

    async fn start_task(&self, task: &Task) -> Result<TaskStart, StoreError> {
        let previous = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(&task.run_id)))
            .key("sk", s(format!("TASK#{}", task.task_id)))
            .update_expression("ADD attempts :one SET task_id = :task")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":task", s(&task.task_id))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|err| backend("UpdateItem task", err))?
            .attributes;
        let Some(previous) = previous.filter(|item| !item.is_empty()) else {
            return Ok(TaskStart::Fresh);
        };
        if let Some(outcome) = previous.get("outcome").and_then(|value| value.as_s().ok()) {
            let outcome: TaskOutcome =
                serde_json::from_str(outcome).map_err(|err| corrupt("task outcome", err))?;
            return Ok(TaskStart::Finished(Box::new(outcome)));
        }
        Ok(TaskStart::Interrupted {
            attempts: number(&previous, "attempts").unwrap_or(0) as u32,
        })
    }

    async fn complete_task(&self, outcome: &TaskOutcome) -> Result<TaskOutcome, StoreError> {
        let task = &outcome.task;
        let text_value =
            serde_json::to_string(outcome).map_err(|err| backend("encode outcome", err))?;
        let written = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(run_pk(&task.run_id)))
            .key("sk", s(format!("TASK#{}", task.task_id)))
            .update_expression("SET outcome = :outcome, completed_at = :at, task_id = :task")
            .condition_expression("attribute_not_exists(outcome)")
            .expression_attribute_values(":outcome", s(text_value))
            .expression_attribute_values(":at", s(time(&outcome.finished_at)))
            .expression_attribute_values(":task", s(&task.task_id))
            .send()
            .await;
        match written {
            Ok(_) => Ok(outcome.clone()),
            // First completion wins: return the one that did.
            Err(err) if is_condition_failure(&err) => {
                let item = self
                    .get(run_pk(&task.run_id), &format!("TASK#{}", task.task_id))
                    .await?
                    .ok_or_else(|| corrupt("task", "vanished"))?;
                serde_json::from_str(text(&item, "outcome")?)
                    .map_err(|err| corrupt("task outcome", err))
            }
            Err(err) => Err(backend("UpdateItem task outcome", err)),
        }
    }

    async fn task_outcomes(&self, run_id: &str) -> Result<Vec<TaskOutcome>, StoreError> {
        let items = self
            .query(
                None,
                "pk = :pk AND begins_with(sk, :task)",
                vec![(":pk", s(run_pk(run_id))), (":task", s("TASK#"))],
            )
            .await?;
        items
            .iter()
            .filter_map(|item| item.get("outcome").and_then(|value| value.as_s().ok()))
            .map(|outcome| {
                serde_json::from_str(outcome).map_err(|err| corrupt("task outcome", err))
            })
            .collect()
    }

    async fn record_person(&self, person: &PersonRecord) -> Result<(), StoreError> {
        self.record_person_item(person).await
    }

    async fn people(&self) -> Result<Vec<PersonRecord>, StoreError> {
        self.people_items().await
    }

    async fn put_quarantine(&self, quarantine: &Quarantine) -> Result<Quarantine, StoreError> {
        self.put_quarantine_items(quarantine).await
    }

    async fn get_quarantine(&self, id: &str) -> Result<Option<Quarantine>, StoreError> {
        self.get_quarantine_items(id).await
    }

    async fn quarantines(&self) -> Result<Vec<Quarantine>, StoreError> {
        self.quarantine_items().await
    }

    async fn decide_quarantine(
        &self,
        id: &str,
        status: QuarantineStatus,
        decision: &Decision,
    ) -> Result<Decided, StoreError> {
        self.decide_quarantine_item(id, status, decision).await
    }
}

fn is_condition_failure<E: ConditionFailure, R>(err: &SdkError<E, R>) -> bool {
    err.as_service_error()
        .is_some_and(ConditionFailure::is_condition_failure)
}

/// The service errors that mean "the condition did not hold".
trait ConditionFailure {
    fn is_condition_failure(&self) -> bool;
}

impl ConditionFailure for aws_sdk_dynamodb::operation::put_item::PutItemError {
    fn is_condition_failure(&self) -> bool {
        self.is_conditional_check_failed_exception()
    }
}

impl ConditionFailure for aws_sdk_dynamodb::operation::update_item::UpdateItemError {
    fn is_condition_failure(&self) -> bool {
        self.is_conditional_check_failed_exception()
    }
}

/// The audit table, with the chain's heads and key markers in the runs table.
#[derive(Clone)]
pub struct DynamoAuditLog {
    client: Client,
    audit_table: String,
    runs_table: String,
    /// Appends to one run from this process take turns (striped by run id), so they do not
    /// race each other through DynamoDB; the conditional transaction still guards against
    /// other processes.
    stripes: Arc<[tokio::sync::Mutex<()>; APPEND_STRIPES]>,
}

/// How many runs may append at once in one process without waiting on each other's stripe.
const APPEND_STRIPES: usize = 64;

impl DynamoAuditLog {
    pub fn new(
        client: Client,
        audit_table: impl Into<String>,
        runs_table: impl Into<String>,
    ) -> DynamoAuditLog {
        DynamoAuditLog {
            client,
            audit_table: audit_table.into(),
            runs_table: runs_table.into(),
            stripes: Arc::new(std::array::from_fn(|_| tokio::sync::Mutex::new(()))),
        }
    }

    fn stripe(&self, run_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        run_id.hash(&mut hasher);
        &self.stripes[(hasher.finish() % APPEND_STRIPES as u64) as usize]
    }

    async fn runs_item(&self, pk: String, sk: String) -> Result<Option<Item>, StoreError> {
        self.client
            .get_item()
            .table_name(&self.runs_table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map(|output| output.item)
            .map_err(|err| backend("GetItem", err))
    }

    async fn record_at(&self, run_id: &str, seq: u64) -> Result<AuditRecord, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.audit_table)
            .key("run_id", s(run_id))
            .key("seq", n(seq))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| backend("GetItem audit", err))?
            .item
            .ok_or_else(|| corrupt("audit", format!("run {run_id} has no record at seq {seq}")))?;
        record_from(&item)
    }

    async fn query_records(
        &self,
        index: Option<&str>,
        condition: &str,
        name: &str,
        value: &str,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut request = self
            .client
            .query()
            .table_name(&self.audit_table)
            .key_condition_expression(condition)
            .expression_attribute_values(name, s(value));
        request = match index {
            Some(index) => request.index_name(index),
            None => request.consistent_read(true),
        };
        let mut pages = request.into_paginator().items().send();
        let mut records = Vec::new();
        while let Some(item) = pages.next().await {
            records.push(record_from(
                &item.map_err(|err| backend("Query audit", err))?,
            )?);
        }
        Ok(records)
    }
}

fn record_from(item: &Item) -> Result<AuditRecord, StoreError> {
    let run_id = text(item, "run_id")?;
    let seq = number(item, "seq")?;
    let body: Body = serde_json::from_str(text(item, "body")?).map_err(|err| {
        corrupt(
            &format!("audit record of run {run_id} at seq {seq} is unreadable"),
            err,
        )
    })?;
    Ok(AuditRecord {
        body,
        seq,
        prev_hash: text(item, "prev_hash")?.to_string(),
        hash: text(item, "hash")?.to_string(),
    })
}

fn build<T, E: std::fmt::Debug>(what: &str, built: Result<T, E>) -> Result<T, StoreError> {
    built.map_err(|err| backend(what, err))
}

#[async_trait]
impl AuditLog for DynamoAuditLog {
    async fn append(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        let sealed = entry.seal(Utc::now());
        let body =
            serde_json::to_string(&sealed.body).map_err(|err| backend("encode audit body", err))?;
        let run_id = sealed.body.run_id.clone();
        let key_sk = format!("KEY#{}", sealed.body.key);
        let _turn = self.stripe(&run_id).lock().await;
        for _ in 0..MAX_APPEND_RACES {
            if let Some(marker) = self.runs_item(audit_pk(&run_id), key_sk.clone()).await? {
                return self.record_at(&run_id, number(&marker, "seq")?).await;
            }
            let head = self.head(&run_id).await?;
            let record = sealed.clone().link(head.as_ref());
            let mut item: Item = HashMap::new();
            item.insert("run_id".into(), s(&run_id));
            item.insert("seq".into(), n(record.seq));
            item.insert("key".into(), s(&record.body.key));
            item.insert("subject".into(), s(&record.body.subject));
            item.insert("at".into(), s(time(&record.body.at)));
            item.insert("body".into(), s(&body));
            item.insert("prev_hash".into(), s(&record.prev_hash));
            item.insert("hash".into(), s(&record.hash));
            let record_put = build(
                "audit Put",
                Put::builder()
                    .table_name(&self.audit_table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(seq)")
                    .build(),
            )?;
            let marker_put = build(
                "key marker Put",
                Put::builder()
                    .table_name(&self.runs_table)
                    .item("pk", s(audit_pk(&run_id)))
                    .item("sk", s(&key_sk))
                    .item("seq", n(record.seq))
                    .condition_expression("attribute_not_exists(pk)")
                    .build(),
            )?;
            let mut head_update = Update::builder()
                .table_name(&self.runs_table)
                .key("pk", s(audit_pk(&run_id)))
                .key("sk", s("HEAD"))
                .update_expression("SET seq = :seq, #hash = :hash, run_id = :run")
                .expression_attribute_names("#hash", "hash")
                .expression_attribute_values(":seq", n(record.seq))
                .expression_attribute_values(":hash", s(&record.hash))
                .expression_attribute_values(":run", s(&run_id));
            head_update = match &head {
                Some(head) => head_update
                    .condition_expression("seq = :previous")
                    .expression_attribute_values(":previous", n(head.seq)),
                None => head_update.condition_expression("attribute_not_exists(pk)"),
            };
            let head_update = build("head Update", head_update.build())?;
            let written = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(record_put).build())
                .transact_items(TransactWriteItem::builder().put(marker_put).build())
                .transact_items(TransactWriteItem::builder().update(head_update).build())
                .send()
                .await;
            match written {
                Ok(_) => return Ok(record),
                Err(err) => {
                    let cancelled = err
                        .as_service_error()
                        .is_some_and(|service| service.is_transaction_canceled_exception());
                    if !cancelled {
                        return Err(backend("TransactWriteItems audit", err));
                    }
                    // Another appender moved the head or wrote this key: read again.
                    tokio::time::sleep(std::time::Duration::from_millis(fastish_jitter())).await;
                }
            }
        }
        Err(StoreError::Backend(format!(
            "gave up appending to the audit chain of run {run_id} after {MAX_APPEND_RACES} concurrent-write conflicts"
        )))
    }

    async fn records(&self, run_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        self.query_records(None, "run_id = :run", ":run", run_id)
            .await
    }

    async fn head(&self, run_id: &str) -> Result<Option<ChainHead>, StoreError> {
        self.runs_item(audit_pk(run_id), "HEAD".into())
            .await?
            .map(|item| {
                Ok(ChainHead {
                    seq: number(&item, "seq")?,
                    hash: text(&item, "hash")?.to_string(),
                })
            })
            .transpose()
    }

    async fn run_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.runs_table)
            .filter_expression("sk = :head AND begins_with(pk, :audit)")
            .expression_attribute_values(":head", s("HEAD"))
            .expression_attribute_values(":audit", s("AUDIT#"))
            .into_paginator()
            .items()
            .send();
        let mut runs = Vec::new();
        while let Some(item) = pages.next().await {
            let item = item.map_err(|err| backend("Scan", err))?;
            runs.push(text(&item, "run_id")?.to_string());
        }
        runs.sort();
        Ok(runs)
    }

    async fn by_subject(&self, subject: &str) -> Result<Vec<AuditRecord>, StoreError> {
        self.query_records(
            Some("by_subject"),
            "subject = :subject",
            ":subject",
            subject,
        )
        .await
    }
}

/// A few milliseconds, varying, so racing appenders spread out.
fn fastish_jitter() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    2 + u64::from(nanos % 20)
}
