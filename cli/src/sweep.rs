//! `deprov sweep`, `deprov approve`, `deprov deny`, `deprov quarantines`.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use clap::Args;
use deprov_core::plan::build_plan;
use deprov_core::ports::{Clock, Decided, RunStore, SystemClock};
use deprov_core::quarantine::{self, Decision, Quarantine, QuarantineStatus};
use deprov_core::sweep::{FindingKind, SweepReport};
use deprov_core::Policy;
use deprov_local::sweep::{self as local_sweep, Acted};
use deprov_local::{EngineOptions, SqliteStore};

use crate::failure::{Failure, FAILURE, OK, QUARANTINED};
use crate::output::{self, shorten};
use crate::run;
use crate::setup;

/// How long listing one system's accounts may take, retries included.
const LISTING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Args)]
pub struct SweepArgs {
    /// Policy document (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// SQLite file: people known from HR events (for orphans), runs, quarantines, audit.
    #[arg(long, env = "DEPROV_DB")]
    db: Option<PathBuf>,
    #[arg(long, env = "DEPROV_SECRETS")]
    secrets: Option<PathBuf>,
    /// List the findings and change nothing, record nothing.
    #[arg(long)]
    report: bool,
    /// Also plan every run the sweep would start (discovery is read-only); change and
    /// record nothing.
    #[arg(long, conflicts_with = "report")]
    dry_run: bool,
    /// Print the findings as JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DecideArgs {
    /// The quarantine's id (`q-…`, as the sweep's alert printed it), or the id of a run
    /// awaiting approval (`r-…`, as `deprov run` printed it).
    quarantine_id: String,
    /// Who decides (an email or a user name); recorded in the audit trail.
    #[arg(long)]
    by: String,
    /// Why; recorded in the audit trail.
    #[arg(long)]
    reason: String,
    #[arg(long, env = "DEPROV_DB")]
    db: Option<PathBuf>,
    #[arg(long, env = "DEPROV_SECRETS")]
    secrets: Option<PathBuf>,
    /// Run the released runs under this policy instead of the version the sweep recorded.
    #[arg(long)]
    policy: Option<PathBuf>,
}

#[derive(Args)]
pub struct QuarantinesArgs {
    #[arg(long, env = "DEPROV_DB")]
    db: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub async fn sweep(args: SweepArgs) -> Result<u8, Failure> {
    let policy_bytes = setup::read(&args.policy, "policy")?;
    let policy = setup::parse_policy(&args.policy, &policy_bytes)
        .map_err(|invalid| Failure::invalid(format!("{invalid}\nNothing was executed.")))?;
    let read_only = args.report || args.dry_run;
    let db = setup::db_path(args.db);
    // A report reads the people HR described, but never creates a database to do so.
    let store = if read_only && !db.exists() {
        None
    } else {
        Some(setup::open_store(&db)?)
    };
    let people = match &store {
        Some(store) => store.people().await?,
        None => Vec::new(),
    };
    let connectors = setup::connectors(&policy, setup::secrets(args.secrets.as_deref())?)?;
    let now = SystemClock.now();
    let report = local_sweep::find(&policy, &connectors, &people, now, LISTING_TIMEOUT).await;
    let incomplete = report.systems.iter().any(|system| system.failed);

    if read_only {
        if args.json {
            print_json(&report);
        } else {
            print_report(&report);
        }
        if args.dry_run {
            dry_run_plans(&policy, &connectors, &report).await?;
            println!("Dry run: nothing was changed or recorded.");
        } else if !args.json {
            println!("Report only: nothing was changed or recorded.");
        }
        return Ok(if incomplete { FAILURE } else { OK });
    }

    let Some(store) = store else {
        return Err(Failure::failed("no database to record the sweep in"));
    };
    store
        .record_policy(&policy.version, &String::from_utf8_lossy(&policy_bytes))
        .await
        .map_err(|err| Failure::invalid(err.to_string()))?;
    if !args.json {
        print_report(&report);
    }
    let (engine, printer) = run::engine_for(policy, connectors, &store, args.json);
    let acted = local_sweep::act(&engine, store.as_ref(), store.as_ref(), &report, now).await;
    run::finish_engine(engine, printer).await;
    let acted = acted?;
    let code = match &acted {
        Acted::Quarantined(quarantine) => {
            alert(quarantine);
            QUARANTINED
        }
        Acted::Started(reports) => output::runs_code(reports, args.json),
    };
    if args.json {
        let (quarantine, runs) = match &acted {
            Acted::Quarantined(quarantine) => (Some(quarantine.as_ref()), Vec::new()),
            Acted::Started(reports) => (None, reports.iter().map(output::run_json).collect()),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "sweep": report,
                "quarantine": quarantine,
                "runs": runs,
            }))
            .unwrap_or_default()
        );
    }
    Ok(if incomplete { code.max(FAILURE) } else { code })
}

pub async fn approve(args: DecideArgs) -> Result<u8, Failure> {
    if is_run_id(&args.quarantine_id) {
        return decide_run(&args, true).await;
    }
    let (store, quarantine) = decide(&args, QuarantineStatus::Approved).await?;
    let policy = decision_policy(&args, &store, &quarantine.policy_version).await?;
    let connectors = setup::connectors(&policy, setup::secrets(args.secrets.as_deref())?)?;
    let (engine, printer) = run::engine_for(policy, connectors, &store, false);
    let reports = local_sweep::release(&engine, &quarantine).await;
    run::finish_engine(engine, printer).await;
    let reports = reports?;
    println!(
        "Released quarantine {}: {} run(s) started.",
        quarantine.quarantine_id,
        reports.len()
    );
    Ok(output::runs_code(&reports, false))
}

pub async fn deny(args: DecideArgs) -> Result<u8, Failure> {
    if is_run_id(&args.quarantine_id) {
        return decide_run(&args, false).await;
    }
    let (_, quarantine) = decide(&args, QuarantineStatus::Denied).await?;
    println!(
        "Denied quarantine {}: its {} run(s) will never start.",
        quarantine.quarantine_id,
        quarantine.runs.len()
    );
    Ok(OK)
}

pub async fn list(args: QuarantinesArgs) -> Result<u8, Failure> {
    let db = setup::db_path(args.db);
    if !db.exists() {
        return Err(Failure::invalid(format!(
            "{} does not exist; pass --db FILE",
            db.display()
        )));
    }
    let quarantines = setup::open_store(&db)?.quarantines().await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&quarantines).unwrap_or_default()
        );
        return Ok(OK);
    }
    if quarantines.is_empty() {
        println!("No quarantine.");
        return Ok(OK);
    }
    let mut rows = output::table(&[
        "id", "status", "trigger", "created", "runs", "why", "decided",
    ]);
    for quarantine in &quarantines {
        rows.add_row(vec![
            quarantine.quarantine_id.clone(),
            quarantine.status.as_str().to_string(),
            quarantine.trigger.as_str().to_string(),
            quarantine
                .created_at
                .format("%Y-%m-%d %H:%M UTC")
                .to_string(),
            quarantine.runs.len().to_string(),
            shorten(&breaches_text(quarantine), 80),
            quarantine
                .decision
                .as_ref()
                .map(|d| format!("{} — {}", d.by, shorten(&d.reason, 40)))
                .unwrap_or_default(),
        ]);
    }
    println!("{rows}");
    Ok(OK)
}

/// Records the decision (audited) and returns the quarantine as decided.
/// The policy a decision runs under: `--policy`, else the recorded `version`.
async fn decision_policy(
    args: &DecideArgs,
    store: &SqliteStore,
    version: &str,
) -> Result<Policy, Failure> {
    if let Some(path) = &args.policy {
        return setup::parse_policy(path, &setup::read(path, "policy")?)
            .map_err(|invalid| Failure::invalid(invalid.to_string()));
    }
    let text = store.policy(version).await?.ok_or_else(|| {
        Failure::invalid(format!(
            "policy version \"{version}\" is not recorded in this database; pass --policy FILE"
        ))
    })?;
    Policy::parse(&text).map_err(|invalid| Failure::invalid(invalid.to_string()))
}

fn is_run_id(id: &str) -> bool {
    id.trim().starts_with("r-")
}

/// A run held for approval (`approval = true` in the policy): approved, it runs now under
/// the policy version it was planned with (or `--policy`); denied, its tasks are cancelled.
async fn decide_run(args: &DecideArgs, approved: bool) -> Result<u8, Failure> {
    let db = setup::db_path(args.db.clone());
    if !db.exists() {
        return Err(Failure::invalid(format!(
            "{} does not exist; pass the --db the run used",
            db.display()
        )));
    }
    let store = setup::open_store(&db)?;
    let run_id = args.quarantine_id.trim();
    let run = store
        .get_run(run_id)
        .await?
        .ok_or_else(|| Failure::invalid(format!("no run \"{run_id}\" in {}", db.display())))?;
    let policy = decision_policy(args, &store, &run.plan.policy_version).await?;
    let connectors = setup::connectors(&policy, setup::secrets(args.secrets.as_deref())?)?;
    let (engine, printer) = run::engine_for(policy, connectors, &store, false);
    let report = engine
        .decide(run_id, approved, &args.by, &args.reason)
        .await
        .map_err(|err| match err {
            deprov_local::EngineError::Decision(message) => Failure::invalid(message),
            other => other.into(),
        });
    run::finish_engine(engine, printer).await;
    let report = report?;
    if !approved {
        println!(
            "Denied run {run_id}: its {} task(s) were cancelled; nothing was changed.",
            report.outcomes.len()
        );
        return Ok(OK);
    }
    Ok(output::summarize(&report))
}

async fn decide(
    args: &DecideArgs,
    status: QuarantineStatus,
) -> Result<(Arc<SqliteStore>, Quarantine), Failure> {
    let decision = Decision::new(&args.by, &args.reason, Utc::now()).map_err(Failure::invalid)?;
    let db = setup::db_path(args.db.clone());
    if !db.exists() {
        return Err(Failure::invalid(format!(
            "{} does not exist; pass the --db the sweep used",
            db.display()
        )));
    }
    let store = setup::open_store(&db)?;
    let id = args.quarantine_id.trim();
    let decided = quarantine::decide(store.as_ref(), store.as_ref(), id, status, &decision).await?;
    let quarantine = match decided {
        Decided::Now(quarantine) => *quarantine,
        Decided::Unknown => {
            return Err(Failure::invalid(format!(
                "no quarantine \"{id}\" in {}; `deprov quarantines --db {0}` lists them",
                db.display()
            )))
        }
        // Approving again finishes releasing what an interrupted approval started.
        Decided::Before(quarantine)
            if quarantine.status == status && status == QuarantineStatus::Approved =>
        {
            *quarantine
        }
        Decided::Before(quarantine) => {
            let earlier = quarantine.decision.as_ref();
            return Err(Failure::invalid(format!(
                "quarantine {id} was {} already by {} ({}); a decision is final",
                quarantine.status.as_str(),
                earlier.map_or("?", |d| d.by.as_str()),
                earlier.map_or(String::new(), |d| d.at.to_rfc3339())
            )));
        }
    };
    Ok((store, quarantine))
}

/// The alert: one line on stderr an operator or a log watcher cannot miss.
fn alert(quarantine: &Quarantine) {
    eprintln!("{}", quarantine.alert());
}

fn breaches_text(quarantine: &Quarantine) -> String {
    quarantine
        .breaches
        .iter()
        .map(|b| b.message.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

fn print_json(report: &SweepReport) {
    println!(
        "{}",
        serde_json::to_string_pretty(report).unwrap_or_default()
    );
}

fn print_report(report: &SweepReport) {
    println!(
        "Sweep at {} — policy {}, orphans: {}",
        report.at.format("%Y-%m-%d %H:%M UTC"),
        report.policy_version,
        report.orphans.as_str()
    );
    let mut systems = output::table(&[
        "system",
        "accounts",
        "active",
        "threshold",
        "inactive",
        "orphans",
        "exempted",
        "no activity data",
        "note",
    ]);
    for system in &report.systems {
        systems.add_row(vec![
            system.system.clone(),
            system.accounts.to_string(),
            system.active.to_string(),
            system.threshold.clone(),
            system.inactive.to_string(),
            system.orphans.to_string(),
            system.exempted.to_string(),
            system.without_activity.to_string(),
            system.skipped.clone().unwrap_or_default(),
        ]);
    }
    println!("{systems}");
    if report.findings.is_empty() {
        println!("No findings.");
    } else {
        let mut rows = output::table(&[
            "finding",
            "system",
            "account",
            "last activity",
            "acts",
            "run",
            "reason",
        ]);
        for finding in &report.findings {
            rows.add_row(vec![
                finding.kind.as_str().to_string(),
                finding.system.clone(),
                finding.username.clone(),
                finding
                    .last_activity
                    .map(|at| at.format("%Y-%m-%d").to_string())
                    .unwrap_or_else(|| "—".into()),
                if finding.acts { "run" } else { "report" }.to_string(),
                finding.run_id.clone(),
                shorten(&finding.reason, 80),
            ]);
        }
        println!("{rows}");
    }
    println!(
        "{} inactive, {} orphans; {} run(s) to start.",
        report.count(FindingKind::Inactive),
        report.count(FindingKind::Orphan),
        report.acting().count()
    );
    for note in &report.notes {
        println!("Note: {note}");
    }
    for breach in report.brake.breaches() {
        println!("BRAKE: {}", breach.message);
    }
}

/// Plans every run the sweep would start (read-only discovery) and prints their size.
async fn dry_run_plans(
    policy: &Policy,
    connectors: &std::collections::BTreeMap<String, Arc<dyn deprov_core::Connector>>,
    report: &SweepReport,
) -> Result<(), Failure> {
    if !report.brake.is_clear() {
        println!(
            "The brake would quarantine these runs: nothing would execute until `deprov approve`."
        );
    }
    for input in report.run_inputs() {
        let found = deprov_local::discover(
            policy,
            connectors,
            &input.event,
            EngineOptions::default().discovery_timeout,
        )
        .await
        .map_err(deprov_local::EngineError::from)?;
        match build_plan(&input.event, policy, &found) {
            Ok(plan) => println!(
                "  would run {}: {} task(s) for {} on {}",
                plan.run_id,
                plan.task_count(),
                input.event.person.id,
                input.event.systems.join(", ")
            ),
            Err(refused) => println!(
                "  would refuse the run of {}: {refused}",
                input.event.person.id
            ),
        }
    }
    Ok(())
}
