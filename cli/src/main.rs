//! `deprov`: the operator's command line.

mod audit;
mod bench;
mod demo;
mod failure;
mod output;
mod policy_check;
mod run;
mod serve;
mod setup;
mod sweep;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::failure::Failure;

#[derive(Parser)]
#[command(
    name = "deprov",
    version,
    about = "Automated deprovisioning: revoke a person's access everywhere, prove every removal, keep a tamper-evident audit trail.",
    after_help = "Exit codes: 0 every due task verified · 1 failure · 2 invalid input · 3 escalations · 4 refused by policy limits · 5 audit chain broken · 6 quarantined by the brake (release with `deprov approve`)"
)]
struct Cli {
    /// Log filter (tracing syntax), e.g. `info` or `deprov_local=debug`.
    #[arg(long, global = true, env = "DEPROV_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Terminate one person across two demo apps, with zero configuration and no network.
    Demo(demo::DemoArgs),
    /// Run an event against real systems: plan, revoke, verify, audit.
    Run(run::RunArgs),
    /// Discover (read-only) and print the plan, changing nothing.
    Plan(run::PlanArgs),
    /// Run delayed stages that are due and finish interrupted runs.
    Resume(run::ResumeArgs),
    /// Find inactive and orphan accounts on every policy system; start their runs, or
    /// quarantine them all when the brake's limits are exceeded.
    Sweep(sweep::SweepArgs),
    /// Release a quarantine, or approve a run held for approval: record who and why, then
    /// run it.
    Approve(sweep::DecideArgs),
    /// Refuse a quarantine or a run held for approval: record who and why; nothing runs.
    Deny(sweep::DecideArgs),
    /// List quarantines and their decisions.
    Quarantines(sweep::QuarantinesArgs),
    /// Serve the intake (HR webhooks) on 127.0.0.1, run what arrives, start future-dated
    /// runs when due.
    Serve(serve::ServeArgs),
    /// List future-dated runs: pending, started, or removed (moved or cancelled) and why.
    Schedules(serve::SchedulesArgs),
    /// Check and read the audit trail.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check a policy document.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Measure throughput (printed figures).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print a public input's JSON Schema: the lifecycle event, or the run input (the
    /// Step Functions execution input: an event plus dry_run).
    Schema {
        #[arg(value_enum, default_value = "event")]
        of: SchemaOf,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SchemaOf {
    Event,
    RunInput,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Report every problem of a policy file with its line and key.
    Check(PolicyCheckArgs),
}

#[derive(Args)]
struct PolicyCheckArgs {
    file: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(failure::FAILURE);
        }
    };
    let result: Result<u8, Failure> = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::demo(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Plan(args) => run::plan(args).await,
            Command::Resume(args) => run::resume(args).await,
            Command::Sweep(args) => sweep::sweep(args).await,
            Command::Approve(args) => sweep::approve(args).await,
            Command::Deny(args) => sweep::deny(args).await,
            Command::Quarantines(args) => sweep::list(args).await,
            Command::Serve(args) => serve::serve(args).await,
            Command::Schedules(args) => serve::schedules(args).await,
            Command::Audit(command) => audit::audit(command).await,
            Command::Policy(PolicyCommand::Check(args)) => policy_check::check(&args.file),
            Command::Bench(command) => bench::bench(command).await,
            Command::Schema { of } => {
                let schema = match of {
                    SchemaOf::Event => deprov_core::LifecycleEvent::json_schema(),
                    SchemaOf::RunInput => deprov_core::flow::RunInput::json_schema(),
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&schema).unwrap_or_default()
                );
                Ok(0)
            }
        }
    });
    // Worker pools hold no state that outlives the store; do not wait for idle workers.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
