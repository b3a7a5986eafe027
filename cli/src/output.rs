//! What the operator sees: plan and outcome tables, live stage progress.

use std::collections::HashMap;
use std::io::IsTerminal;

use comfy_table::{presets, ContentArrangement, Table};
use deprov_core::plan::Plan;
use deprov_core::ports::RunStatus;
use deprov_core::task::{StageStatus, TaskOutcome, TaskStatus};
use deprov_core::Applied;
use deprov_local::{Progress, RunReport};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    if !std::io::stdout().is_terminal() {
        // Piped or logged output has no terminal width to fit; keep lines readable.
        table.set_width(180);
    }
    table
}

pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// The plan as a table, with what it deliberately skips and what it could not reach.
pub fn print_plan(plan: &Plan) {
    let event = &plan.event;
    println!(
        "Plan {} — {} of {} ({}), scenario \"{}\", policy {}",
        plan.run_id,
        event.kind.as_str(),
        event.person.id,
        event.person.email,
        plan.scenario,
        plan.policy_version
    );
    let mut rows = table(&[
        "#",
        "stage",
        "not before",
        "system",
        "account",
        "action",
        "target",
    ]);
    for stage in &plan.stages {
        for task in &stage.tasks {
            rows.add_row(vec![
                stage.stage.number().to_string(),
                stage.stage.as_str().to_string(),
                stage.not_before.format("%Y-%m-%d %H:%M %:z").to_string(),
                task.system.clone(),
                task.account.username.clone(),
                task.action.as_str().to_string(),
                task.target
                    .as_ref()
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
            ]);
        }
    }
    if plan.task_count() == 0 && plan.unreachable.is_empty() {
        println!("  no tasks: no account of this person was found on the systems in scope");
    } else if plan.task_count() == 0 {
        println!(
            "  no tasks on the systems that answered; the systems below could not be searched"
        );
    } else {
        println!("{rows}");
    }
    for skipped in &plan.skipped {
        println!(
            "  skipped: {} {}{} — {}",
            skipped.system,
            skipped.account.as_deref().unwrap_or(""),
            skipped
                .stage
                .map(|s| format!(" [{}]", s.as_str()))
                .unwrap_or_default(),
            skipped.reason
        );
    }
    for unreachable in &plan.unreachable {
        println!(
            "  UNREACHABLE: {} — {} (the run will escalate)",
            unreachable.system, unreachable.error
        );
    }
}

fn evidence_text(outcome: &TaskOutcome) -> String {
    match (&outcome.evidence, &outcome.error) {
        (_, Some(error)) => format!("{}: {}", error.kind, error.message),
        (Some(evidence), None) => serde_json::to_string(&evidence.observed).unwrap_or_default(),
        (None, None) => String::new(),
    }
}

fn status_text(outcome: &TaskOutcome) -> &'static str {
    match (outcome.status, outcome.change) {
        (TaskStatus::Verified, Some(Applied::AlreadyDone)) => "verified (already)",
        (TaskStatus::Verified, _) => "verified",
        (TaskStatus::Escalated, _) => "ESCALATED",
        (TaskStatus::Cancelled, _) => "cancelled",
    }
}

fn outcome_line(outcome: &TaskOutcome) -> String {
    let mark = match outcome.status {
        TaskStatus::Verified => "✓",
        TaskStatus::Escalated => "✗",
        TaskStatus::Cancelled => "–",
    };
    let task = &outcome.task;
    format!(
        "  {mark} {:<6} {:<16} {:<18} {:<12} {:<18} {}",
        task.system,
        shorten(&task.account.username, 16),
        task.action.as_str(),
        task.target
            .as_ref()
            .map(|t| shorten(&t.name, 12))
            .unwrap_or_default(),
        status_text(outcome),
        shorten(&evidence_text(outcome), 90)
    )
}

/// Prints progress as the engine reports it: a bar per stage on a terminal, plain lines
/// otherwise (logs, CI).
pub fn spawn_progress(mut progress: mpsc::UnboundedReceiver<Progress>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let interactive = std::io::stdout().is_terminal();
        let mut bars: HashMap<String, ProgressBar> = HashMap::new();
        let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        while let Some(event) = progress.recv().await {
            match event {
                Progress::Planned(_) => {}
                Progress::StageStarted { run_id, stage } => {
                    let title = format!("stage {} {}", stage.stage.number(), stage.stage.as_str());
                    if interactive {
                        let bar = ProgressBar::new(stage.tasks.len() as u64)
                            .with_style(style.clone())
                            .with_prefix(title);
                        bars.insert(run_id, bar);
                    } else {
                        println!("▶ {title}: {} tasks", stage.tasks.len());
                    }
                }
                Progress::TaskFinished(outcome) => {
                    let line = outcome_line(&outcome);
                    match bars.get(&outcome.task.run_id) {
                        Some(bar) => {
                            bar.println(line);
                            bar.inc(1);
                        }
                        None => println!("{line}"),
                    }
                }
                Progress::StageFinished(record) => {
                    if let Some(bar) = bars.remove(&record.run_id) {
                        bar.finish_and_clear();
                    }
                    let verdict = match record.status {
                        StageStatus::Completed => "done",
                        StageStatus::Escalated => "ESCALATED",
                        StageStatus::Cancelled => "cancelled",
                    };
                    println!(
                        "  stage {} {}: {verdict} — {} verified ({} already in place), {} escalated",
                        record.stage.number(),
                        record.stage.as_str(),
                        record.verified,
                        record.unchanged,
                        record.escalated
                    );
                }
                Progress::StageDeferred { stage, .. } => println!(
                    "⏸ stage {} {} waits until {} ({} tasks); reversible until then",
                    stage.stage.number(),
                    stage.stage.as_str(),
                    stage.not_before.format("%Y-%m-%d %H:%M %:z"),
                    stage.tasks.len()
                ),
                Progress::RunFinished { run_id, status } => {
                    println!("■ run {run_id}: {}", status.as_str())
                }
            }
        }
    })
}

/// The outcomes of a run as a table.
pub fn print_outcomes(outcomes: &[TaskOutcome]) {
    if outcomes.is_empty() {
        return;
    }
    let mut rows = table(&[
        "system",
        "account",
        "action",
        "target",
        "result",
        "evidence (read back)",
    ]);
    let mut sorted: Vec<&TaskOutcome> = outcomes.iter().collect();
    sorted.sort_by(|a, b| {
        (
            a.task.stage(),
            &a.task.system,
            &a.task.account.username,
            &a.task.target.as_ref().map(|t| &t.name),
        )
            .cmp(&(
                b.task.stage(),
                &b.task.system,
                &b.task.account.username,
                &b.task.target.as_ref().map(|t| &t.name),
            ))
    });
    for outcome in sorted {
        let task = &outcome.task;
        rows.add_row(vec![
            task.system.clone(),
            task.account.username.clone(),
            task.action.as_str().to_string(),
            task.target
                .as_ref()
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            status_text(outcome).to_string(),
            shorten(&evidence_text(outcome), 100),
        ]);
    }
    println!("{rows}");
}

/// The exit code a run deserves: escalations and refusals are not success.
pub fn summarize_code(report: &RunReport) -> u8 {
    use crate::failure::{ESCALATED, OK, REFUSED};
    match report.status {
        RunStatus::Refused => REFUSED,
        RunStatus::Escalated => ESCALATED,
        _ if report.count(TaskStatus::Escalated) > 0 => ESCALATED,
        _ => OK,
    }
}

/// One-paragraph verdict of a run, and the exit code it deserves.
pub fn summarize(report: &RunReport) -> u8 {
    let verified = report.count(TaskStatus::Verified);
    let escalated = report.count(TaskStatus::Escalated);
    let unchanged = report.unchanged();
    if report.duplicate {
        println!(
            "This event was received before: it belongs to run {} ({}). Nothing new was started.",
            report.run_id,
            report.status.as_str()
        );
    }
    if !report.stopped_runs.is_empty() {
        println!(
            "Stopped the pending stages of: {}",
            report.stopped_runs.join(", ")
        );
    }
    match report.status {
        RunStatus::DryRun => println!(
            "Run {} is a dry run: the plan was recorded and nothing was changed.",
            report.run_id
        ),
        RunStatus::Refused => {
            println!(
                "Refused: {}. Nothing was changed.",
                report.refused.as_deref().unwrap_or("the planner refused the run")
            );
        }
        RunStatus::Escalated => println!(
            "Run {} ESCALATED: {verified} tasks verified, {escalated} need attention (see the table and `deprov audit show`).",
            report.run_id
        ),
        RunStatus::Waiting => println!(
            "Run {}: {verified} due tasks verified ({unchanged} already in place, {} changed); the next stage is due {}. Run `deprov resume` then.",
            report.run_id,
            verified - unchanged,
            report
                .wake_at
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default()
        ),
        RunStatus::Completed if report.stopped_runs.is_empty() => {
            if verified > 0 && unchanged == verified {
                println!(
                    "Run {}: nothing to change — all {verified} tasks were already in the wanted state, and reading back proved it.",
                    report.run_id
                );
            } else {
                println!(
                    "Run {} completed: {verified} tasks verified ({} changed, {unchanged} already in place).",
                    report.run_id,
                    verified - unchanged
                );
            }
        }
        RunStatus::Completed => {
            let restored = report
                .outcomes
                .iter()
                .filter(|o| o.task.stage() == deprov_core::StageKind::Restore)
                .count();
            if restored > 0 {
                println!(
                    "Run {} restored what those runs had done: {verified} restore tasks verified ({} changed, {unchanged} already in place). What cannot come back is listed as skipped in the plan.",
                    report.run_id,
                    verified - unchanged
                );
            } else {
                println!(
                    "Run {}: nothing to restore (see the plan's skipped list for what was not put back).",
                    report.run_id
                );
            }
        }
        RunStatus::Cancelled => println!("Run {} was cancelled before its remaining stages.", report.run_id),
        RunStatus::Running => println!("Run {} is still running.", report.run_id),
        RunStatus::AwaitingApproval => println!(
            "Run {} waits for approval ({}) until {}; nothing was changed. `deprov approve {} --by NAME --reason TEXT` runs it, `deprov deny …` cancels it; without a decision it escalates then.",
            report.run_id,
            report
                .plan
                .as_ref()
                .map(|plan| plan.approval.join("; "))
                .unwrap_or_default(),
            report
                .wake_at
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            report.run_id
        ),
    }
    summarize_code(report)
}

/// One line tallying runs (unless `quiet`), and the exit code the worst of them deserves.
pub fn runs_code(reports: &[RunReport], quiet: bool) -> u8 {
    let mut code = crate::failure::OK;
    let (mut completed, mut waiting, mut escalated) = (0, 0, 0);
    for report in reports {
        code = code.max(summarize_code(report));
        match report.status {
            RunStatus::Completed => completed += 1,
            RunStatus::Waiting => waiting += 1,
            _ if report.count(TaskStatus::Escalated) > 0 => escalated += 1,
            RunStatus::Escalated => escalated += 1,
            _ => {}
        }
    }
    if !quiet {
        println!(
            "{} run(s): {completed} completed, {waiting} waiting for a delayed stage, {escalated} escalated.",
            reports.len()
        );
    }
    code
}

/// A run's report in brief, for `--json` listings.
pub fn run_json(report: &RunReport) -> serde_json::Value {
    serde_json::json!({
        "run_id": report.run_id,
        "status": report.status,
        "duplicate": report.duplicate,
        "refused": report.refused,
        "verified": report.count(TaskStatus::Verified),
        "escalated": report.count(TaskStatus::Escalated),
    })
}
