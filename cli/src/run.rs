//! `deprov run`, `deprov plan`, `deprov resume`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use deprov_core::ports::{Clock, RunStore, SystemClock};
use deprov_core::Policy;
use deprov_local::{Engine, EngineOptions, SqliteStore};
use tokio::sync::mpsc;

use crate::failure::{Failure, ESCALATED, OK};
use crate::output;
use crate::setup;

#[derive(Args)]
pub struct RunArgs {
    /// Policy document (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// Lifecycle event (JSON).
    #[arg(long, required_unless_present = "events", conflicts_with = "events")]
    event: Option<PathBuf>,
    /// Many lifecycle events at once (a layoff, a contractor agency's end, a divestiture):
    /// JSON Lines, one event per line, or a JSON array. They are planned and run together;
    /// if any is invalid, nothing runs.
    #[arg(long, conflicts_with = "dry_run")]
    events: Option<PathBuf>,
    /// SQLite file for runs and the audit trail.
    #[arg(long, env = "DEPROV_DB")]
    db: Option<PathBuf>,
    /// Secrets file (TOML tables of fields); `DEPROV_SECRET_<NAME>` variables override it.
    #[arg(long, env = "DEPROV_SECRETS")]
    secrets: Option<PathBuf>,
    /// Discover and print the plan; change and record nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the final report as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PlanArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    event: PathBuf,
    #[arg(long, env = "DEPROV_SECRETS")]
    secrets: Option<PathBuf>,
    /// Print the plan as JSON (the data contract between the states).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ResumeArgs {
    #[arg(long, env = "DEPROV_DB")]
    db: Option<PathBuf>,
    #[arg(long, env = "DEPROV_SECRETS")]
    secrets: Option<PathBuf>,
    /// Use this policy instead of the version each run recorded.
    #[arg(long)]
    policy: Option<PathBuf>,
}

/// Starts an engine over `store` with live progress printed.
pub fn start_engine(
    policy: Policy,
    connectors: BTreeMap<String, Arc<dyn deprov_core::Connector>>,
    store: Arc<SqliteStore>,
    clock: Arc<dyn Clock>,
) -> (Engine, tokio::task::JoinHandle<()>) {
    let (progress, updates) = mpsc::unbounded_channel();
    let printer = output::spawn_progress(updates);
    let engine = Engine::start(
        policy,
        connectors,
        store.clone(),
        store,
        clock,
        EngineOptions::default(),
        Some(progress),
    );
    (engine, printer)
}

/// Lets the progress printer drain before the final report.
pub async fn stop_engine(engine: Engine, printer: tokio::task::JoinHandle<()>) {
    engine.shutdown();
    let _ = printer.await;
}

/// An engine over `store` on the system clock, telling no one its progress.
pub fn quiet_engine(
    policy: Policy,
    connectors: BTreeMap<String, Arc<dyn deprov_core::Connector>>,
    store: &Arc<SqliteStore>,
) -> Engine {
    Engine::start(
        policy,
        connectors,
        store.clone(),
        store.clone(),
        Arc::new(SystemClock),
        EngineOptions::default(),
        None,
    )
}

/// An engine over `store`, printing progress unless `quiet` (JSON output).
pub fn engine_for(
    policy: Policy,
    connectors: std::collections::BTreeMap<String, Arc<dyn deprov_core::Connector>>,
    store: &Arc<SqliteStore>,
    quiet: bool,
) -> (Engine, Option<tokio::task::JoinHandle<()>>) {
    if quiet {
        // JSON output: no progress lines on stdout.
        return (quiet_engine(policy, connectors, store), None);
    }
    let (engine, printer) = start_engine(policy, connectors, store.clone(), Arc::new(SystemClock));
    (engine, Some(printer))
}

pub async fn finish_engine(engine: Engine, printer: Option<tokio::task::JoinHandle<()>>) {
    match printer {
        Some(printer) => stop_engine(engine, printer).await,
        None => engine.shutdown(),
    }
}

pub async fn run(args: RunArgs) -> Result<u8, Failure> {
    let event_path = match (&args.event, &args.events) {
        (_, Some(events)) => return run_many(&args, events).await,
        (Some(event), None) => event.clone(),
        (None, None) => return Err(Failure::invalid("give --event FILE or --events FILE")),
    };
    let policy_bytes = setup::read(&args.policy, "policy")?;
    let event_bytes = setup::read(&event_path, "event")?;
    let store = if args.dry_run {
        None
    } else {
        Some(setup::open_store(&setup::db_path(args.db))?)
    };
    let policy = setup::parse_policy(&args.policy, &policy_bytes);
    let event = setup::parse_event(&event_path, &event_bytes);
    let (policy, event) = match (policy, event) {
        (Ok(policy), Ok(event)) => (policy, event),
        (policy, event) => {
            let mut message = Vec::new();
            for (path, bytes, invalid) in [
                (&args.policy, &policy_bytes, policy.err()),
                (&event_path, &event_bytes, event.err()),
            ] {
                if let Some(invalid) = invalid {
                    if let Some(store) = &store {
                        setup::record_rejection(store, path, bytes, &invalid).await?;
                    }
                    message.push(invalid.to_string());
                }
            }
            return Err(Failure::invalid(format!(
                "{}\nNothing was executed.",
                message.join("\n")
            )));
        }
    };
    let secrets = setup::secrets(args.secrets.as_deref())?;
    let connectors = setup::connectors(&policy, secrets)?;

    let Some(store) = store else {
        let plan = deprov_local::discover(
            &policy,
            &connectors,
            &event,
            EngineOptions::default().discovery_timeout,
        )
        .await
        .and_then(|found| deprov_core::plan::build_plan(&event, &policy, &found))
        .map_err(deprov_local::EngineError::from)?;
        output::print_plan(&plan);
        println!("Dry run: nothing was changed or recorded.");
        return Ok(OK);
    };
    store
        .record_policy(&policy.version, &String::from_utf8_lossy(&policy_bytes))
        .await
        .map_err(|err| Failure::invalid(err.to_string()))?;
    let (engine, printer) = start_engine(
        policy,
        connectors,
        Arc::clone(&store),
        Arc::new(SystemClock),
    );
    let report = engine.submit(&event).await;
    stop_engine(engine, printer).await;
    let report = report?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "run_id": report.run_id,
                "status": report.status,
                "duplicate": report.duplicate,
                "refused": report.refused,
                "wake_at": report.wake_at,
                "stopped_runs": report.stopped_runs,
                "outcomes": report.outcomes,
            }))
            .unwrap_or_default()
        );
        return Ok(crate::output::summarize_code(&report));
    }
    if let Some(plan) = &report.plan {
        if report.duplicate {
            output::print_plan(plan);
        }
    }
    output::print_outcomes(&report.outcomes);
    let code = output::summarize(&report);
    println!(
        "Audit trail: {} (verify with `deprov audit verify --db {0}`)",
        store.path().display()
    );
    Ok(code)
}

/// `deprov run --events FILE`: every event checked first (nothing runs if one is invalid),
/// then all of them submitted together.
async fn run_many(args: &RunArgs, path: &std::path::Path) -> Result<u8, Failure> {
    let policy_bytes = setup::read(&args.policy, "policy")?;
    let events_bytes = setup::read(path, "events")?;
    let store = setup::open_store(&setup::db_path(args.db.clone()))?;
    let policy = setup::parse_policy(&args.policy, &policy_bytes);
    let mut problems = Vec::new();
    if let Err(invalid) = &policy {
        setup::record_rejection(&store, &args.policy, &policy_bytes, invalid).await?;
        problems.push(invalid.to_string());
    }
    let mut events = Vec::new();
    for (place, bytes) in setup::split_events(path, &events_bytes)? {
        match deprov_core::LifecycleEvent::parse(&bytes) {
            Ok(event) => events.push(event),
            Err(mut invalid) => {
                invalid.what = place;
                setup::record_rejection(&store, path, &bytes, &invalid).await?;
                problems.push(invalid.to_string());
            }
        }
    }
    let policy = match policy {
        Ok(policy) if problems.is_empty() => policy,
        _ => {
            return Err(Failure::invalid(format!(
                "{}\nNothing was executed.",
                problems.join("\n")
            )))
        }
    };
    if events.is_empty() {
        return Err(Failure::invalid(format!(
            "{} holds no events: give one JSON event per line, or a JSON array of events",
            path.display()
        )));
    }
    let secrets = setup::secrets(args.secrets.as_deref())?;
    let connectors = setup::connectors(&policy, secrets)?;
    store
        .record_policy(&policy.version, &String::from_utf8_lossy(&policy_bytes))
        .await
        .map_err(|err| Failure::invalid(err.to_string()))?;
    let (engine, printer) = engine_for(policy, connectors, &store, args.json);
    let reports = engine.submit_many(&events).await;
    finish_engine(engine, printer).await;
    let reports = reports?;
    if args.json {
        let runs: Vec<serde_json::Value> = events
            .iter()
            .zip(&reports)
            .map(|(event, report)| {
                let mut run = output::run_json(report);
                run["event_id"] = event.event_id.clone().into();
                run["person_id"] = event.person.id.clone().into();
                run
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&runs).unwrap_or_default()
        );
        return Ok(output::runs_code(&reports, true));
    }
    let mut table = output::table(&["event", "person", "run", "status", "verified", "escalated"]);
    for (event, report) in events.iter().zip(&reports) {
        table.add_row(vec![
            output::shorten(&event.event_id, 32),
            output::shorten(&event.person.id, 24),
            report.run_id.clone(),
            if report.duplicate {
                format!("{} (received before)", report.status.as_str())
            } else {
                report.status.as_str().to_string()
            },
            report.count(deprov_core::TaskStatus::Verified).to_string(),
            report.count(deprov_core::TaskStatus::Escalated).to_string(),
        ]);
    }
    println!("{table}");
    let code = output::runs_code(&reports, false);
    println!(
        "Audit trail: {} (verify with `deprov audit verify --db {0}`)",
        store.path().display()
    );
    Ok(code)
}

pub async fn plan(args: PlanArgs) -> Result<u8, Failure> {
    let policy = setup::parse_policy(&args.policy, &setup::read(&args.policy, "policy")?)
        .map_err(|invalid| Failure::invalid(invalid.to_string()))?;
    let event = setup::parse_event(&args.event, &setup::read(&args.event, "event")?)
        .map_err(|invalid| Failure::invalid(invalid.to_string()))?;
    let connectors = setup::connectors(&policy, setup::secrets(args.secrets.as_deref())?)?;
    let found = deprov_local::discover(
        &policy,
        &connectors,
        &event,
        EngineOptions::default().discovery_timeout,
    )
    .await
    .map_err(deprov_local::EngineError::from)?;
    let plan = deprov_core::plan::build_plan(&event, &policy, &found)
        .map_err(|err| Failure::invalid(err.to_string()))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else {
        output::print_plan(&plan);
    }
    // A system that could not be searched may still hold the person's access.
    Ok(if plan.unreachable.is_empty() {
        OK
    } else {
        ESCALATED
    })
}

pub async fn resume(args: ResumeArgs) -> Result<u8, Failure> {
    let store = setup::open_store(&setup::db_path(args.db))?;
    let secrets = setup::secrets(args.secrets.as_deref())?;
    let override_policy = match &args.policy {
        Some(path) => Some(
            setup::parse_policy(path, &setup::read(path, "policy")?)
                .map_err(|invalid| Failure::invalid(invalid.to_string()))?,
        ),
        None => None,
    };
    let due = store.due_runs(SystemClock.now()).await?;
    if due.is_empty() {
        println!("Nothing is due.");
        return Ok(OK);
    }
    // Each run resumes under the policy version it was planned with.
    let mut by_version: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for run_id in due {
        if let Some(run) = store.get_run(&run_id).await? {
            by_version
                .entry(run.plan.policy_version.clone())
                .or_default()
                .push(run_id);
        }
    }
    let mut code = OK;
    for (version, run_ids) in by_version {
        let policy = match &override_policy {
            Some(policy) => policy.clone(),
            None => {
                let text = store.policy(&version).await?.ok_or_else(|| {
                    Failure::invalid(format!("policy version \"{version}\" is not recorded in this database; pass --policy FILE"))
                })?;
                Policy::parse(&text).map_err(|invalid| Failure::invalid(invalid.to_string()))?
            }
        };
        let connectors = setup::connectors(&policy, Arc::clone(&secrets))?;
        let (engine, printer) = start_engine(
            policy,
            connectors,
            Arc::clone(&store),
            Arc::new(SystemClock),
        );
        let mut reports = Vec::new();
        for run_id in &run_ids {
            reports.push(engine.drive(run_id).await);
        }
        stop_engine(engine, printer).await;
        for report in reports {
            let report = report?;
            let run_code = output::summarize(&report);
            code = code.max(run_code);
        }
    }
    Ok(code)
}
