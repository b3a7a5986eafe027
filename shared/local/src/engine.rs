//! The in-process orchestrator: the state machine's semantics in one process. Stages run in
//! kill order, a stage's tasks in parallel through per-system queues and worker pools
//! (per-system concurrency and rate limit), throttled and transient failures retried with
//! backoff and jitter, anything unproven escalated, delayed stages persisted and resumed
//! when due, and rehire/cancel stopping pending stages.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deprov_core::ids;
use deprov_core::journal;
use deprov_core::plan::{build_plan, Discovery, Plan, PlanError, Stage, StageKind};
use deprov_core::policy::Policy;
use deprov_core::ports::{
    AuditLog, Clock, Delivery, EventClaim, RunRecord, RunStatus, RunStore, StoreError, TaskMessage,
    TaskQueue,
};
use deprov_core::restore::{self, StoppedRun};
use deprov_core::task::{StageRecord, TaskError, TaskOutcome, TaskStatus};
use deprov_core::worker::{self, Attempt};
use deprov_core::{Connector, ErrorKind, LifecycleEvent};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::queue::LocalQueue;
use deprov_connectors::discover;

/// Events discovered at once when many runs start together, at the least; with systems
/// that take people in batches, enough to fill their batches. Each system bounds its own
/// calls (`coalesce_discovery`), so this only bounds what waits in memory.
const MIN_DISCOVERIES_AT_ONCE: usize = 64;
const MAX_DISCOVERIES_AT_ONCE: usize = 1024;

/// Runs started together as one cohort by `submit_many`, and cohorts in flight at once.
const RUNS_PER_COHORT: usize = 512;
const COHORTS_AT_ONCE: usize = 4;

/// What the engine tells an observer (the CLI's progress display) as a run advances.
#[derive(Clone, Debug)]
pub enum Progress {
    Planned(Box<Plan>),
    StageStarted { run_id: String, stage: Stage },
    TaskFinished(Box<TaskOutcome>),
    StageFinished(StageRecord),
    StageDeferred { run_id: String, stage: Stage },
    RunFinished { run_id: String, status: RunStatus },
}

/// Where a run stands after the engine is done with it for now.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub run_id: String,
    pub status: RunStatus,
    /// The event had been received before; this is the run it started.
    pub duplicate: bool,
    pub plan: Option<Plan>,
    /// Every recorded task outcome of the run so far.
    pub outcomes: Vec<TaskOutcome>,
    /// Why the planner refused the run.
    pub refused: Option<String>,
    /// When the next stage is due, for a waiting run.
    pub wake_at: Option<DateTime<Utc>>,
    /// Runs a rehire or cancel stopped.
    pub stopped_runs: Vec<String>,
}

impl RunReport {
    /// Verified tasks whose target was already in the wanted state.
    pub fn unchanged(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| {
                o.status == TaskStatus::Verified
                    && o.change == Some(deprov_core::Applied::AlreadyDone)
            })
            .count()
    }

    pub fn count(&self, status: TaskStatus) -> usize {
        self.outcomes.iter().filter(|o| o.status == status).count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("system \"{0}\" has no connector")]
    NoConnector(String),
    /// An approval or denial that cannot be taken.
    #[error("{0}")]
    Decision(String),
}

/// Tuning of the in-process runtime.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How long a worker may hold a task before it is handed to another.
    pub visibility_timeout: Duration,
    /// How long one discovery call may take.
    pub discovery_timeout: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            visibility_timeout: Duration::from_secs(300),
            discovery_timeout: Duration::from_secs(60),
        }
    }
}

/// Spaces out calls to one system so it sees at most `rate` task starts per second.
struct RateLimiter {
    interval: Duration,
    next: tokio::sync::Mutex<Instant>,
}

impl RateLimiter {
    fn new(rate_per_second: f64) -> RateLimiter {
        RateLimiter {
            interval: Duration::from_secs_f64(1.0 / rate_per_second),
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn acquire(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

struct Inner {
    policy: Policy,
    connectors: BTreeMap<String, Arc<dyn Connector>>,
    store: Arc<dyn RunStore>,
    audit: Arc<dyn AuditLog>,
    clock: Arc<dyn Clock>,
    options: EngineOptions,
    queues: BTreeMap<String, Arc<LocalQueue>>,
    /// task_id → whoever awaits its outcome.
    waiters: Mutex<HashMap<String, oneshot::Sender<TaskOutcome>>>,
    progress: Option<mpsc::UnboundedSender<Progress>>,
    /// Events discovered at once when many start together.
    discoveries_at_once: usize,
}

/// The running orchestrator and its worker pools.
pub struct Engine {
    inner: Arc<Inner>,
    workers: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Starts the worker pools: one queue per system, `concurrency` workers on each.
    pub fn start(
        policy: Policy,
        connectors: BTreeMap<String, Arc<dyn Connector>>,
        store: Arc<dyn RunStore>,
        audit: Arc<dyn AuditLog>,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
        progress: Option<mpsc::UnboundedSender<Progress>>,
    ) -> Engine {
        // Retries are released back with a delay, so deliveries exceed attempts; the margin
        // covers redeliveries after a worker stalled past its visibility timeout.
        let max_receives = policy.retry.max_attempts + 3;
        let discoveries_at_once = policy
            .systems
            .iter()
            .filter_map(|(system, config)| {
                let batch = connectors.get(system)?.max_batch();
                usize::try_from(config.concurrency).ok()?.checked_mul(batch)
            })
            .max()
            .unwrap_or(0)
            .clamp(MIN_DISCOVERIES_AT_ONCE, MAX_DISCOVERIES_AT_ONCE);
        // A system's discoveries are bounded by its concurrency, like its workers, and
        // gathered into batches where its connector can take them.
        let connectors: BTreeMap<String, Arc<dyn Connector>> = connectors
            .into_iter()
            .map(|(system, connector)| {
                let concurrency = policy.systems.get(&system).map_or(1, |c| c.concurrency);
                let connector = deprov_connectors::coalesce_discovery(
                    connector,
                    usize::try_from(concurrency).unwrap_or(1),
                );
                (system, connector)
            })
            .collect();
        let mut queues = BTreeMap::new();
        let mut dead_receivers = Vec::new();
        for system in connectors.keys() {
            let (queue, dead) = LocalQueue::new(options.visibility_timeout, max_receives);
            queues.insert(system.clone(), Arc::new(queue));
            dead_receivers.push((system.clone(), dead));
        }
        let inner = Arc::new(Inner {
            policy,
            connectors,
            store,
            audit,
            clock,
            options,
            queues,
            waiters: Mutex::new(HashMap::new()),
            progress,
            discoveries_at_once,
        });
        let mut workers = Vec::new();
        for (system, mut dead) in dead_receivers {
            let config = inner.policy.systems.get(&system);
            let concurrency = config.map_or(1, |c| c.concurrency.max(1));
            let limiter = Arc::new(
                config
                    .and_then(|c| c.rate_limit_per_second)
                    .map(RateLimiter::new),
            );
            for _ in 0..concurrency {
                let inner = Arc::clone(&inner);
                let system = system.clone();
                let limiter = Arc::clone(&limiter);
                workers.push(tokio::spawn(async move {
                    inner.work(&system, limiter.as_ref().as_ref()).await;
                }));
            }
            let inner_for_dead = Arc::clone(&inner);
            workers.push(tokio::spawn(async move {
                while let Some(message) = dead.recv().await {
                    inner_for_dead.dead_lettered(message).await;
                }
            }));
        }
        Engine { inner, workers }
    }

    /// Stops the worker pools. Work in flight is abandoned mid-attempt exactly as a crash
    /// would abandon it, and is recovered the same way on the next start.
    pub fn shutdown(self) {
        for worker in self.workers {
            worker.abort();
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// Discovers the person on every system in scope (read-only).
    pub async fn discover(&self, event: &LifecycleEvent) -> Result<Vec<Discovery>, EngineError> {
        self.inner.discover(event).await
    }

    /// Discovers and plans without changing or recording anything.
    pub async fn plan(&self, event: &LifecycleEvent) -> Result<Plan, EngineError> {
        let discoveries = self.inner.discover(event).await?;
        Ok(build_plan(event, &self.inner.policy, &discoveries)?)
    }

    /// Takes an event: a new one is planned and run, a duplicate resumes the run it started,
    /// a rehire or cancel stops the person's pending runs.
    pub async fn submit(&self, event: &LifecycleEvent) -> Result<RunReport, EngineError> {
        self.inner
            .start_runs(std::slice::from_ref(event))
            .await?
            .pop()
            .ok_or_else(|| {
                EngineError::Store(StoreError::Backend("no report for the event".into()))
            })
    }

    /// Takes many events at once (a sweep's findings, an approved quarantine, a mass
    /// offboarding): one report per event, in order. The runs they start are discovered,
    /// planned, recorded and run together, so each store write and each connector round
    /// trip serves many runs. A rehire or cancel is taken on its own, in its place: after
    /// the events before it, before those after it.
    pub async fn submit_many(
        &self,
        events: &[LifecycleEvent],
    ) -> Result<Vec<RunReport>, EngineError> {
        // An event given twice is one run: later copies answer with the first's report.
        let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
        let mut unique = Vec::with_capacity(events.len());
        // Per event: the position of its first copy, if it is a later one.
        let copy_of: Vec<Option<usize>> = events
            .iter()
            .enumerate()
            .map(|(position, event)| {
                let key = (event.source.as_str(), event.event_id.as_str());
                match first_of.get(&key) {
                    Some(first) => Some(*first),
                    None => {
                        first_of.insert(key, position);
                        unique.push(event.clone());
                        None
                    }
                }
            })
            .collect();
        let mut reports: Vec<RunReport> = Vec::with_capacity(unique.len());
        let mut rest = unique.as_slice();
        while !rest.is_empty() {
            let together = match rest.iter().position(|e| e.kind.stops_pending_runs()) {
                Some(0) => 1,
                Some(stop) => stop,
                None => rest.len(),
            };
            // In cohorts of bounded size, a few at once: one cohort's store writes overlap
            // another's connector calls, and a huge sweep does not hold every plan in memory.
            let cohorts: Vec<Vec<RunReport>> = futures_util::stream::iter(
                rest[..together]
                    .chunks(RUNS_PER_COHORT)
                    .map(|cohort| self.inner.start_runs(cohort)),
            )
            .buffered(COHORTS_AT_ONCE)
            .try_collect()
            .await?;
            reports.extend(cohorts.into_iter().flatten());
            rest = &rest[together..];
        }
        let mut firsts = reports.into_iter();
        let mut answered: Vec<RunReport> = Vec::with_capacity(events.len());
        for copy in copy_of {
            let report = match copy {
                None => firsts.next(),
                Some(first) => answered.get(first).map(|report| RunReport {
                    duplicate: true,
                    ..report.clone()
                }),
            };
            answered.push(report.ok_or_else(|| {
                EngineError::Store(StoreError::Backend("an event got no report".into()))
            })?);
        }
        Ok(answered)
    }

    /// Continues one run as far as it can go now.
    pub async fn drive(&self, run_id: &str) -> Result<RunReport, EngineError> {
        self.inner.drive(run_id).await
    }

    /// A person's decision on a run held for approval: approved, it runs now; denied, its
    /// tasks are cancelled and nothing is changed. Either way the trail says who and why.
    pub async fn decide(
        &self,
        run_id: &str,
        approved: bool,
        by: &str,
        reason: &str,
    ) -> Result<RunReport, EngineError> {
        let inner = &self.inner;
        if by.trim().is_empty() || reason.trim().is_empty() {
            return Err(EngineError::Decision(
                "say who decides (--by) and why (--reason): both go into the audit trail".into(),
            ));
        }
        let mut run = inner
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))?;
        if run.status != RunStatus::AwaitingApproval {
            return Err(EngineError::Decision(format!(
                "run {run_id} is {}, not awaiting approval",
                run.status.as_str()
            )));
        }
        inner
            .audit
            .append(journal::approval_decided(
                run_id,
                &run.person_id,
                approved,
                by,
                reason,
            ))
            .await?;
        if approved {
            run.status = RunStatus::Running;
            run.wake_at = None;
            run.updated_at = inner.clock.now();
            inner.store.put_run(&run).await?;
            return inner.drive(run_id).await;
        }
        inner
            .cancel_all(
                &mut run,
                &format!("denied by {by}: {reason}"),
                RunStatus::Cancelled,
            )
            .await?;
        inner.drive(run_id).await
    }

    /// Continues every run that has work now: interrupted ones and delayed stages that
    /// became due.
    pub async fn resume_due(&self) -> Result<Vec<RunReport>, EngineError> {
        let due = self.inner.store.due_runs(self.inner.clock.now()).await?;
        // In cohorts, as `submit_many`: a backlog of due stages is not loaded all at once.
        let cohorts: Vec<Vec<RunReport>> = futures_util::stream::iter(
            due.chunks(RUNS_PER_COHORT)
                .map(|run_ids| self.inner.resume(run_ids)),
        )
        .buffered(COHORTS_AT_ONCE)
        .try_collect()
        .await?;
        Ok(cohorts.into_iter().flatten().collect())
    }
}

impl Inner {
    /// Tells the observer, if there is one (`progress` is only built then: plans are big).
    fn emit(&self, progress: impl FnOnce() -> Progress) {
        if let Some(sender) = &self.progress {
            let _ = sender.send(progress());
        }
    }

    async fn discover(&self, event: &LifecycleEvent) -> Result<Vec<Discovery>, EngineError> {
        Ok(discover(
            &self.policy,
            &self.connectors,
            event,
            self.options.discovery_timeout,
        )
        .await?)
    }

    /// Claims, plans, records and runs the events' runs together (`Engine::submit_many`
    /// hands it either plain events or one rehire or cancel).
    async fn start_runs(&self, events: &[LifecycleEvent]) -> Result<Vec<RunReport>, EngineError> {
        let run_ids: Vec<String> = events
            .iter()
            .map(|event| ids::run_id(&event.source, &event.event_id))
            .collect();
        let claims: Vec<(String, String, String)> = events
            .iter()
            .zip(&run_ids)
            .map(|(event, run_id)| (event.source.clone(), event.event_id.clone(), run_id.clone()))
            .collect();
        let claims = self.store.claim_events(&claims).await?;
        let mut reports: Vec<Option<RunReport>> = events.iter().map(|_| None).collect();
        // Events seen before resume the run they started; the others are planned.
        let mut resumed = Vec::new();
        let mut fresh = Vec::new();
        for (index, claim) in claims.iter().enumerate() {
            match claim {
                EventClaim::Existing(existing) => match self.store.get_run(existing).await? {
                    Some(run) => resumed.push((index, run)),
                    // Claimed, but the crash came before the run was stored: plan it again.
                    None => fresh.push(index),
                },
                EventClaim::New => fresh.push(index),
            }
        }
        // The people as HR describes them now (`PERSON#`): orphan detection's reference.
        let people: Vec<_> = fresh
            .iter()
            .filter_map(|&index| deprov_core::people::PersonRecord::from_event(&events[index]))
            .collect();
        if !people.is_empty() {
            self.store.record_people(&people).await?;
        }
        let plans = self.plan_all(events, &run_ids, &fresh).await?;
        let mut refusals = Vec::new();
        let mut planned = Vec::new();
        for (index, plan) in fresh.into_iter().zip(plans) {
            match plan {
                Ok(plan) => planned.push((index, plan)),
                Err(refusal) => {
                    let event = &events[index];
                    refusals.push(journal::plan_refused(
                        &run_ids[index],
                        event,
                        &refusal.to_string(),
                        &self.policy.version,
                    ));
                    reports[index] = Some(RunReport {
                        run_id: run_ids[index].clone(),
                        status: RunStatus::Refused,
                        duplicate: matches!(claims[index], EventClaim::Existing(_)),
                        plan: None,
                        outcomes: Vec::new(),
                        refused: Some(refusal.to_string()),
                        wake_at: None,
                        stopped_runs: Vec::new(),
                    });
                }
            }
        }
        if !refusals.is_empty() {
            self.audit.append_batch(refusals).await?;
        }
        let now = self.clock.now();
        // (index of the event, whether it resumes the run an earlier delivery started)
        let mut order: Vec<(usize, bool)> =
            planned.iter().map(|(index, _)| (*index, false)).collect();
        let records: Vec<RunRecord> = planned
            .into_iter()
            .map(|(index, plan)| {
                // A run held for approval waits until its deadline, then escalates.
                let approval_deadline = (!plan.approval.is_empty()).then(|| {
                    now + chrono::Duration::from_std(self.policy.approvals.timeout.0)
                        .unwrap_or(chrono::Duration::MAX)
                });
                RunRecord {
                    run_id: run_ids[index].clone(),
                    person_id: events[index].person.id.clone(),
                    status: if approval_deadline.is_some() {
                        RunStatus::AwaitingApproval
                    } else {
                        RunStatus::Running
                    },
                    plan,
                    next_stage: 0,
                    wake_at: approval_deadline,
                    created_at: now,
                    updated_at: now,
                }
            })
            .collect();
        if !records.is_empty() {
            self.audit
                .append_batch(
                    records
                        .iter()
                        .map(|run| journal::plan_recorded(&run.plan))
                        .collect(),
                )
                .await?;
            self.store.put_runs(&records).await?;
        }
        for run in &records {
            self.emit(|| Progress::Planned(Box::new(run.plan.clone())));
        }
        let mut runs = records;
        for (index, run) in resumed {
            order.push((index, true));
            runs.push(run);
        }
        let driven = self.drive_many(runs).await?;
        for ((index, duplicate), mut report) in order.into_iter().zip(driven) {
            report.duplicate = duplicate;
            report.stopped_runs = report
                .plan
                .as_ref()
                .map(|plan| plan.stops.clone())
                .unwrap_or_default();
            reports[index] = Some(report);
        }
        reports
            .into_iter()
            .map(|report| {
                report.ok_or_else(|| {
                    EngineError::Store(StoreError::Backend("an event got no report".into()))
                })
            })
            .collect()
    }

    /// The plan of each event at `fresh`, in order. Discoveries run concurrently (a
    /// connector that takes people in batches gets them together); a rehire or cancel first
    /// stops the person's open runs and plans what to restore.
    async fn plan_all(
        &self,
        events: &[LifecycleEvent],
        run_ids: &[String],
        fresh: &[usize],
    ) -> Result<Vec<Result<Plan, PlanError>>, EngineError> {
        let planning = fresh.iter().copied().map(|index| async move {
            let event = &events[index];
            if event.kind.stops_pending_runs() {
                let stopped = self.stop_runs(event, &run_ids[index]).await?;
                return Ok(Ok(self.restore_plan(event, &stopped).await?));
            }
            let discoveries = match self.discover(event).await {
                Ok(discoveries) => discoveries,
                Err(EngineError::Plan(refusal)) => return Ok(Err(refusal)),
                Err(err) => return Err(err),
            };
            Ok(build_plan(event, &self.policy, &discoveries))
        });
        futures_util::stream::iter(planning)
            .buffered(self.discoveries_at_once)
            .try_collect()
            .await
    }

    /// Drives the stored runs of `run_ids` together (ids no longer stored are skipped).
    async fn resume(&self, run_ids: &[String]) -> Result<Vec<RunReport>, EngineError> {
        let mut runs = Vec::with_capacity(run_ids.len());
        for run_id in run_ids {
            if let Some(run) = self.store.get_run(run_id).await? {
                runs.push(run);
            }
        }
        self.drive_many(runs).await
    }

    async fn drive(&self, run_id: &str) -> Result<RunReport, EngineError> {
        let run = self
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| StoreError::UnknownRun(run_id.to_string()))?;
        self.drive_many(vec![run])
            .await?
            .pop()
            .ok_or_else(|| StoreError::UnknownRun(run_id.to_string()).into())
    }

    /// Continues each run as far as it can go now. The runs move stage by stage together:
    /// their due stages' tasks are in the queues at once, and each step's writes (task and
    /// stage records, run states) go to the store in one batch. One report per run, in order.
    async fn drive_many(&self, mut runs: Vec<RunRecord>) -> Result<Vec<RunReport>, EngineError> {
        for run in runs.iter_mut() {
            if run.status == RunStatus::AwaitingApproval {
                self.await_approval(run).await?;
            }
        }
        // Outcomes of the runs finished here, as read to judge them: their reports need no
        // second read.
        let mut final_outcomes: HashMap<usize, Vec<TaskOutcome>> = HashMap::new();
        let mut moving: Vec<usize> = (0..runs.len())
            .filter(|&index| matches!(runs[index].status, RunStatus::Running | RunStatus::Waiting))
            .collect();
        while !moving.is_empty() {
            let now = self.clock.now();
            // The runs with a stage due now, and those stages.
            let mut due = Vec::new();
            let mut stages = Vec::new();
            let mut finishing = Vec::new();
            let mut restarted = Vec::new();
            for &index in &moving {
                let run = &mut runs[index];
                let Some(stage) = run.plan.stages.get(run.next_stage).cloned() else {
                    finishing.push(index);
                    continue;
                };
                if stage.not_before > now {
                    self.defer(run, stage, now).await?;
                    continue;
                }
                if run.status != RunStatus::Running {
                    run.status = RunStatus::Running;
                    run.wake_at = None;
                    run.updated_at = now;
                    restarted.push(run.clone());
                }
                self.emit(|| Progress::StageStarted {
                    run_id: run.run_id.clone(),
                    stage: stage.clone(),
                });
                due.push(index);
                stages.push(stage);
            }
            let judged = self
                .finish(
                    runs.iter_mut()
                        .enumerate()
                        // `finishing` is ascending, as `moving` always is.
                        .filter(|(index, _)| finishing.binary_search(index).is_ok())
                        .map(|(_, run)| run)
                        .collect(),
                )
                .await?;
            for (index, outcomes) in finishing.into_iter().zip(judged) {
                final_outcomes.insert(index, outcomes);
            }
            if due.is_empty() {
                break;
            }
            if !restarted.is_empty() {
                self.store.put_runs(&restarted).await?;
            }
            let outcomes = self.run_stages(&stages).await?;
            let records: Vec<StageRecord> = due
                .iter()
                .zip(&stages)
                .zip(&outcomes)
                .map(|((index, stage), outcomes)| {
                    StageRecord::tally(
                        &runs[*index].run_id,
                        stage.stage,
                        &outcomes.iter().collect::<Vec<_>>(),
                    )
                })
                .collect();
            self.audit
                .append_batch(
                    due.iter()
                        .zip(&records)
                        .map(|(index, record)| {
                            journal::stage_completed(record, &runs[*index].person_id)
                        })
                        .collect(),
                )
                .await?;
            for record in records {
                self.emit(|| Progress::StageFinished(record));
            }
            // A rehire or cancel may have stopped runs while their stages ran.
            let ids: Vec<String> = due
                .iter()
                .map(|index| runs[*index].run_id.clone())
                .collect();
            let statuses = self.store.run_statuses(&ids).await?;
            let mut advanced = Vec::new();
            moving = Vec::new();
            for (index, status) in due.into_iter().zip(statuses) {
                let run = &mut runs[index];
                if status == Some(RunStatus::Cancelled) {
                    run.status = RunStatus::Cancelled;
                    continue;
                }
                run.next_stage += 1;
                run.updated_at = self.clock.now();
                // After the last stage, finishing stores the run's final state.
                if run.next_stage < run.plan.stages.len() {
                    advanced.push(run.clone());
                }
                moving.push(index);
            }
            if !advanced.is_empty() {
                self.store.put_runs(&advanced).await?;
            }
        }
        let unread: Vec<String> = (0..runs.len())
            .filter(|index| !final_outcomes.contains_key(index))
            .map(|index| runs[index].run_id.clone())
            .collect();
        let mut read = self.store.task_outcomes_of(&unread).await?.into_iter();
        let mut outcomes = Vec::with_capacity(runs.len());
        for index in 0..runs.len() {
            outcomes.push(match final_outcomes.remove(&index) {
                Some(judged) => judged,
                None => read.next().unwrap_or_default(),
            });
        }
        Ok(runs
            .into_iter()
            .zip(outcomes)
            .map(|(run, outcomes)| RunReport {
                run_id: run.run_id.clone(),
                status: run.status,
                duplicate: false,
                wake_at: run.wake_at.filter(|_| {
                    matches!(run.status, RunStatus::Waiting | RunStatus::AwaitingApproval)
                }),
                plan: Some(run.plan),
                outcomes,
                refused: None,
                stopped_runs: Vec::new(),
            })
            .collect())
    }

    /// A run held for approval: past its deadline it escalates (every task cancelled, the
    /// run finished); before it, the request is recorded (once, by key, even when a crash
    /// came between plan and request).
    async fn await_approval(&self, run: &mut RunRecord) -> Result<(), EngineError> {
        let until = run.wake_at.unwrap_or(run.updated_at);
        if until <= self.clock.now() {
            self.audit
                .append(journal::approval_timed_out(
                    &run.run_id,
                    &run.person_id,
                    until,
                ))
                .await?;
            self.cancel_all(run, "no approval before the deadline", RunStatus::Running)
                .await?;
            self.finish(vec![run]).await?;
        } else {
            self.audit
                .append(journal::approval_requested(&run.plan, until))
                .await?;
        }
        Ok(())
    }

    /// A stage not due yet: the run waits for it (recorded once per wake time).
    async fn defer(
        &self,
        run: &mut RunRecord,
        stage: Stage,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let wake_at = stage.not_before.with_timezone(&Utc);
        if run.status != RunStatus::Waiting || run.wake_at != Some(wake_at) {
            self.audit
                .append(journal::stage_deferred(
                    &run.run_id,
                    &run.person_id,
                    stage.stage,
                    stage.not_before,
                    stage.tasks.len(),
                ))
                .await?;
            run.status = RunStatus::Waiting;
            run.wake_at = Some(wake_at);
            run.updated_at = now;
            self.store.put_run(run).await?;
        }
        self.emit(|| Progress::StageDeferred {
            run_id: run.run_id.clone(),
            stage,
        });
        Ok(())
    }

    /// Sends the stages' unfinished tasks to their systems' queues and waits for every
    /// outcome; the task records of all of them are appended together. One list of outcomes
    /// per stage, in plan order.
    async fn run_stages(&self, stages: &[Stage]) -> Result<Vec<Vec<TaskOutcome>>, EngineError> {
        let run_ids: Vec<String> = stages
            .iter()
            .map(|stage| {
                stage
                    .tasks
                    .first()
                    .map(|task| task.run_id.clone())
                    .unwrap_or_default()
            })
            .collect();
        // Completed before a restart: kept as recorded (their audit records are appended
        // below with the others, idempotently).
        let finished: HashMap<String, TaskOutcome> = self
            .store
            .task_outcomes_of(&run_ids)
            .await?
            .into_iter()
            .flatten()
            .map(|outcome| (outcome.task.task_id.clone(), outcome))
            .collect();
        let mut outcomes: Vec<Vec<TaskOutcome>> = stages
            .iter()
            .map(|stage| Vec::with_capacity(stage.tasks.len()))
            .collect();
        let mut no_connector = Vec::new();
        let mut pending = Vec::new();
        for (position, stage) in stages.iter().enumerate() {
            for task in &stage.tasks {
                if let Some(outcome) = finished.get(&task.task_id) {
                    outcomes[position].push(outcome.clone());
                    continue;
                }
                let Some(queue) = self.queues.get(&task.system) else {
                    no_connector.push((
                        position,
                        worker::gave_up(
                            task,
                            0,
                            TaskError {
                                kind: ErrorKind::InvalidInput,
                                message: format!("system \"{}\" has no connector", task.system),
                            },
                        ),
                    ));
                    continue;
                };
                let (sender, receiver) = oneshot::channel();
                self.lock_waiters().insert(task.task_id.clone(), sender);
                let message = TaskMessage {
                    task: task.clone(),
                    policy_version: None,
                    task_token: None,
                };
                if let Err(err) = queue.send(message, Duration::ZERO).await {
                    self.lock_waiters().remove(&task.task_id);
                    return Err(StoreError::Backend(err.to_string()).into());
                }
                pending.push((position, task.clone(), receiver));
            }
        }
        if !no_connector.is_empty() {
            let gave_up: Vec<TaskOutcome> = no_connector
                .iter()
                .map(|(_, outcome)| outcome.clone())
                .collect();
            for ((position, _), winner) in no_connector
                .into_iter()
                .zip(self.store.complete_tasks(&gave_up).await)
            {
                outcomes[position].push(winner?);
            }
        }
        for (position, task, receiver) in pending {
            match receiver.await {
                Ok(outcome) => outcomes[position].push(outcome),
                Err(_) => {
                    // The worker pool stopped; what is recorded is what counts.
                    let recorded = self.store.task_outcomes(&task.run_id).await?;
                    match recorded
                        .into_iter()
                        .find(|o| o.task.task_id == task.task_id)
                    {
                        Some(outcome) => outcomes[position].push(outcome),
                        None => {
                            return Err(StoreError::Backend(format!(
                                "the worker pool stopped before task {} finished",
                                task.task_id
                            ))
                            .into())
                        }
                    }
                }
            }
        }
        // One audit record per task, in plan order, written together as the stages close.
        for (stage, outcomes) in stages.iter().zip(outcomes.iter_mut()) {
            let position: HashMap<&str, usize> = stage
                .tasks
                .iter()
                .enumerate()
                .map(|(index, task)| (task.task_id.as_str(), index))
                .collect();
            outcomes.sort_by_key(|outcome| position.get(outcome.task.task_id.as_str()).copied());
        }
        self.audit
            .append_batch(outcomes.iter().flatten().map(worker::audit_entry).collect())
            .await?;
        Ok(outcomes)
    }

    fn lock_waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<TaskOutcome>>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn deliver(&self, outcome: TaskOutcome) {
        self.emit(|| Progress::TaskFinished(Box::new(outcome.clone())));
        if let Some(waiter) = self.lock_waiters().remove(&outcome.task.task_id) {
            let _ = waiter.send(outcome);
        }
    }

    /// One worker of one system: receive up to the connector's batch, attempt them
    /// together, then record or retry each.
    async fn work(&self, system: &str, limiter: Option<&RateLimiter>) {
        let (Some(queue), Some(connector)) = (self.queues.get(system), self.connectors.get(system))
        else {
            return;
        };
        // Leave the attempt time to give up before the message becomes visible to others.
        let attempt_timeout = self.options.visibility_timeout.mul_f64(0.9);
        let batch = connector.max_batch().max(1);
        loop {
            let deliveries = match queue.receive(batch, Duration::from_secs(5)).await {
                Ok(deliveries) => deliveries,
                Err(err) => {
                    tracing::error!(system, error = %err, "queue receive failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if deliveries.is_empty() {
                continue;
            }
            let span = tracing::info_span!("tasks", system, count = deliveries.len());
            let _guard = span.enter();
            if let Some(limiter) = limiter {
                for _ in &deliveries {
                    limiter.acquire().await;
                }
            }
            let tasks: Vec<_> = deliveries.iter().map(|d| d.message.task.clone()).collect();
            let attempted = tokio::time::timeout(
                attempt_timeout,
                worker::attempt_batch(connector.as_ref(), self.store.as_ref(), &tasks),
            )
            .await;
            let mut results = match attempted {
                Ok(results) => results.into_iter().map(Some).collect(),
                Err(_) => Vec::new(),
            };
            results.resize_with(deliveries.len(), || None);
            self.settle(queue, &deliveries, results, attempt_timeout)
                .await;
        }
    }

    /// Records the outcomes of a batch's attempts together (`None`: the attempt timed
    /// out), and releases the ones to retry.
    async fn settle(
        &self,
        queue: &LocalQueue,
        deliveries: &[Delivery],
        results: Vec<Option<Result<Attempt, StoreError>>>,
        attempt_timeout: Duration,
    ) {
        let mut finished = Vec::new();
        let mut outcomes = Vec::new();
        for (delivery, result) in deliveries.iter().zip(results) {
            let task = &delivery.message.task;
            let result = result.unwrap_or_else(|| {
                Ok(Attempt::Retry {
                    attempts: delivery.receive_count,
                    error: TaskError {
                        kind: ErrorKind::Transient,
                        message: format!("attempt timed out after {}s", attempt_timeout.as_secs()),
                    },
                    retry_after: None,
                })
            });
            let outcome = match result {
                Ok(Attempt::Finished(outcome)) => *outcome,
                Ok(Attempt::Retry {
                    attempts,
                    error,
                    retry_after,
                }) if attempts < self.policy.retry.max_attempts => {
                    let delay = self
                        .policy
                        .retry
                        .backoff(attempts, retry_after, fastrand::f64());
                    tracing::info!(task_id = %task.task_id, attempts, delay_ms = delay.as_millis() as u64, error = %error.message, "retrying");
                    let _ = queue.release(&delivery.receipt, delay).await;
                    continue;
                }
                Ok(Attempt::Retry {
                    attempts, error, ..
                }) => worker::gave_up(task, attempts, error),
                Err(err) => {
                    tracing::error!(task_id = %task.task_id, error = %err, "cannot reach the store; the task will be retried");
                    let _ = queue
                        .release(&delivery.receipt, Duration::from_secs(1))
                        .await;
                    continue;
                }
            };
            finished.push(delivery);
            outcomes.push(outcome);
        }
        if outcomes.is_empty() {
            return;
        }
        // The audit records follow when the stage closes (RecordStage on AWS).
        let winners = self.store.complete_tasks(&outcomes).await;
        for (delivery, winner) in finished.into_iter().zip(winners) {
            match winner {
                Ok(winner) => {
                    let _ = queue.ack(&delivery.receipt).await;
                    self.deliver(winner);
                }
                Err(err) => {
                    tracing::error!(task_id = %delivery.message.task.task_id, error = %err, "cannot record the outcome; the task will be retried");
                    let _ = queue
                        .release(&delivery.receipt, Duration::from_secs(1))
                        .await;
                }
            }
        }
    }

    async fn dead_lettered(&self, message: TaskMessage) {
        let outcome = worker::gave_up(
            &message.task,
            self.policy.retry.max_attempts,
            TaskError {
                kind: ErrorKind::Transient,
                message: "dead-lettered: the task was delivered too many times without an outcome"
                    .into(),
            },
        );
        match self.store.complete_task(&outcome).await {
            Ok(winner) => self.deliver(winner),
            Err(err) => {
                tracing::error!(task_id = %message.task.task_id, error = %err, "cannot record a dead-lettered task")
            }
        }
    }

    /// Closes runs: each completed only if every task verified and every system was
    /// reachable.
    /// Returns the outcomes each run was judged on.
    async fn finish(
        &self,
        runs: Vec<&mut RunRecord>,
    ) -> Result<Vec<Vec<TaskOutcome>>, EngineError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = runs.iter().map(|run| run.run_id.clone()).collect();
        let outcomes = self.store.task_outcomes_of(&ids).await?;
        let mut entries = Vec::with_capacity(runs.len());
        let mut statuses = Vec::with_capacity(runs.len());
        for (run, outcomes) in runs.iter().zip(&outcomes) {
            let (summary, entry) = journal::run_finished(&run.plan, outcomes);
            entries.push(entry);
            statuses.push(summary.status);
        }
        self.audit.append_batch(entries).await?;
        let now = self.clock.now();
        let mut finished = Vec::with_capacity(runs.len());
        for (run, status) in runs.into_iter().zip(statuses) {
            run.status = status;
            run.wake_at = None;
            run.updated_at = now;
            finished.push(run.clone());
        }
        self.store.put_runs(&finished).await?;
        for run in &finished {
            self.emit(|| Progress::RunFinished {
                run_id: run.run_id.clone(),
                status: run.status,
            });
        }
        Ok(outcomes)
    }

    /// Records every task of `run` cancelled (`why`) and leaves the run in `status`.
    async fn cancel_all(
        &self,
        run: &mut RunRecord,
        why: &str,
        status: RunStatus,
    ) -> Result<(), EngineError> {
        for task in run.plan.tasks() {
            worker::record(
                self.store.as_ref(),
                self.audit.as_ref(),
                &worker::cancelled(task, why),
            )
            .await?;
        }
        run.status = status;
        run.wake_at = None;
        run.updated_at = self.clock.now();
        self.store.put_run(run).await?;
        Ok(())
    }

    /// Rehire or cancel: every pending stage of the person's open runs is cancelled before
    /// anything more (above all anything destructive) happens.
    async fn stop_runs(
        &self,
        event: &LifecycleEvent,
        own_run_id: &str,
    ) -> Result<Vec<RunRecord>, EngineError> {
        let open = self.store.open_runs_for(&event.person.id).await?;
        let mut stopped = Vec::new();
        for mut run in open {
            let why = restore::cancel_reason(event);
            for task in restore::cancellable_tasks(&run) {
                worker::record(
                    self.store.as_ref(),
                    self.audit.as_ref(),
                    &worker::cancelled(task, &why),
                )
                .await?;
            }
            self.audit
                .append(journal::run_cancelled(
                    &run.run_id,
                    &run.person_id,
                    own_run_id,
                    event,
                    &why,
                ))
                .await?;
            run.status = RunStatus::Cancelled;
            run.wake_at = None;
            run.updated_at = self.clock.now();
            self.store.put_run(&run).await?;
            self.emit(|| Progress::RunFinished {
                run_id: run.run_id.clone(),
                status: RunStatus::Cancelled,
            });
            stopped.push(run);
        }
        let ids: Vec<String> = stopped.iter().map(|run| run.run_id.clone()).collect();
        self.audit
            .append(journal::runs_stopped(own_run_id, event, &ids))
            .await?;
        Ok(stopped)
    }

    /// What a rehire or cancel puts back (`restore::restore_plan`).
    async fn restore_plan(
        &self,
        event: &LifecycleEvent,
        stopped: &[RunRecord],
    ) -> Result<Plan, EngineError> {
        let mut runs = Vec::with_capacity(stopped.len());
        for run in stopped {
            runs.push(StoppedRun {
                plan: run.plan.clone(),
                outcomes: self.store.task_outcomes(&run.run_id).await?,
            });
        }
        Ok(restore::restore_plan(
            event,
            &self.policy,
            &runs,
            |system| {
                self.connectors
                    .get(system)
                    .is_some_and(|connector| connector.supports().contains(&StageKind::Restore))
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimiter;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limiter_spaces_task_starts() {
        let limiter = RateLimiter::new(10.0);
        let started = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // The first start is immediate, the next four 100 ms apart.
        assert_eq!(started.elapsed(), Duration::from_millis(400));
    }
}
