//! ringmq-bench: a thread-per-core MQTT load generator.
//!
//! `cli` parses the command line, `plan` turns it into the list of clients,
//! `runner` drives them on one pinned glommio executor per core with the
//! sans-IO `client` state machine, `payload` and `tracker` carry the
//! timestamps and the loss accounting, `runner` fills in the `stats` that
//! `report` checks and writes (with `plot`); `merge` adds up the reports of
//! several processes.
//!
//! Exit status: 0 when the run met what its QoS promises, 1 when it did not
//! (loss at QoS 1/2 or above `--max-loss` at QoS 0, duplicates at QoS 2,
//! clients that never connected), 2 when the run could not be made.

mod cli;
mod client;
mod merge;
mod payload;
mod plan;
mod plot;
mod report;
mod runner;
mod stats;
mod tracker;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ringmq-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<bool> {
    if let cli::Command::Merge(args) = &cli.command {
        let report = merge::merge_files(&args.files)?;
        print!("{}", report.table());
        if let Some(path) = &args.json {
            report.write_json(path)?;
        }
        if let Some(path) = &args.csv {
            report.write_csv(path)?;
        }
        if let Some(path) = &args.plot {
            plot::draw(&report, path)?;
        }
        return Ok(report.passed);
    }
    let plan = plan::Plan::from_command(cli.command)?;
    let output = plan.output.clone();
    let result = runner::run(plan.clone())?;
    let report = report::Report::new(&plan, &result);
    print!("{}", report.table());
    if let Some(path) = &output.json {
        report.write_json(path)?;
    }
    if let Some(path) = &output.csv {
        report.write_csv(path)?;
    }
    if let Some(path) = &output.plot {
        plot::draw(&report, path)?;
    }
    Ok(report.passed)
}
