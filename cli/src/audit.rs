//! `deprov audit verify` and `deprov audit show`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use deprov_core::audit::verify_chain;
use deprov_core::ports::AuditLog;
use serde_json::Value;

use crate::failure::{Failure, AUDIT_BROKEN, OK};
use crate::output;
use crate::setup;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check every run's hash chain (or one run's) and name the first broken record.
    Verify(VerifyArgs),
    /// Everything recorded about one person, across runs.
    Show(ShowArgs),
}

#[derive(Args)]
pub struct VerifyArgs {
    #[arg(long, env = "DEPROV_DB")]
    db: Option<PathBuf>,
    /// Only this run.
    #[arg(long)]
    run: Option<String>,
}

#[derive(Args)]
pub struct ShowArgs {
    #[arg(long, env = "DEPROV_DB")]
    db: Option<PathBuf>,
    /// The person's HR id.
    #[arg(long)]
    person: String,
    /// One JSON record per line instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn audit(command: AuditCommand) -> Result<u8, Failure> {
    match command {
        AuditCommand::Verify(args) => verify(args).await,
        AuditCommand::Show(args) => show(args).await,
    }
}

/// Verifies chains; returns how many runs were checked and the problems found.
pub async fn verify_runs(
    store: &dyn AuditLog,
    only: Option<&str>,
) -> Result<(usize, usize, Vec<String>), Failure> {
    let runs = match only {
        Some(run) => vec![run.to_string()],
        None => store.run_ids().await?,
    };
    let mut broken = Vec::new();
    let mut records_checked = 0;
    for run_id in &runs {
        let head = store.head(run_id).await?;
        match store.records(run_id).await {
            Ok(records) => {
                if records.is_empty() && head.is_none() {
                    broken.push(format!("run {run_id} has no audit records"));
                    continue;
                }
                records_checked += records.len();
                if let Err(chain_break) = verify_chain(run_id, &records, head.as_ref()) {
                    broken.push(chain_break.to_string());
                }
            }
            // A row that no longer parses is tampering too; the store names its seq.
            Err(err) => broken.push(format!("audit chain of run {run_id} is broken: {err}")),
        }
    }
    Ok((runs.len(), records_checked, broken))
}

async fn verify(args: VerifyArgs) -> Result<u8, Failure> {
    let path = setup::db_path(args.db);
    if !path.exists() {
        return Err(Failure::invalid(format!(
            "no database at {}",
            path.display()
        )));
    }
    let store = setup::open_store(&path)?;
    let (runs, records, broken) = verify_runs(store.as_ref(), args.run.as_deref()).await?;
    if broken.is_empty() {
        println!(
            "Audit trail intact: {runs} runs, {records} records, every hash chain verified ({}).",
            path.display()
        );
        Ok(OK)
    } else {
        for problem in &broken {
            println!("BROKEN: {problem}");
        }
        println!(
            "{} of {runs} runs fail verification ({}).",
            broken.len(),
            path.display()
        );
        Ok(AUDIT_BROKEN)
    }
}

fn summary(kind: &str, detail: &Value) -> String {
    let text = |pointer: &str| {
        detail
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match kind {
        "task_completed" => {
            let target = text("/target/name");
            let evidence = detail
                .pointer("/evidence/observed")
                .map(Value::to_string)
                .unwrap_or_default();
            let error = text("/error/message");
            format!(
                "{} {}{} → {} {}",
                text("/action"),
                text("/account/username"),
                if target.is_empty() {
                    String::new()
                } else {
                    format!(" [{target}]")
                },
                text("/status"),
                if error.is_empty() { evidence } else { error }
            )
        }
        "plan_recorded" => format!(
            "{} ({}), policy {}",
            text("/event/kind"),
            text("/scenario"),
            text("/policy_version")
        ),
        "stage_completed" => format!(
            "{}: {} verified, {} escalated",
            text("/stage"),
            detail
                .get("verified")
                .map(Value::to_string)
                .unwrap_or_default(),
            detail
                .get("escalated")
                .map(Value::to_string)
                .unwrap_or_default()
        ),
        "run_finished" => detail
            .get("status")
            .map(Value::to_string)
            .unwrap_or_else(|| detail.to_string()),
        _ => detail
            .get("reason")
            .map(Value::to_string)
            .unwrap_or_else(|| detail.to_string()),
    }
}

async fn show(args: ShowArgs) -> Result<u8, Failure> {
    let store = setup::open_store(&setup::db_path(args.db))?;
    let records = store.by_subject(&args.person).await?;
    if args.json {
        for record in &records {
            println!("{}", serde_json::to_string(record).unwrap_or_default());
        }
        return Ok(OK);
    }
    if records.is_empty() {
        println!("No audit records about person {}.", args.person);
        return Ok(OK);
    }
    let mut rows = output::table(&["time (UTC)", "run", "seq", "record", "system", "what"]);
    for record in &records {
        let kind = serde_json::to_value(record.body.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        rows.add_row(vec![
            record.body.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            record.body.run_id.clone(),
            record.seq.to_string(),
            kind.clone(),
            record.body.system.clone().unwrap_or_default(),
            output::shorten(&summary(&kind, &record.body.detail), 110),
        ]);
    }
    println!("{rows}");
    println!("{} records about person {}.", records.len(), args.person);
    Ok(OK)
}
