//! ringmq-bench: a thread-per-core MQTT load generator.
//!
//! `cli` parses the command line, `plan` turns it into the list of clients,
//! `runner` drives them on one pinned glommio executor per core with the
//! sans-IO `client` state machine, `payload` and `tracker` carry the
//! timestamps and the loss accounting, `runner` fills in the `stats` that
//! `report` checks and writes (with `plot`); `merge` adds up the reports of
//! several processes; `search` runs the plan at rising rates for
//! `--find-max-rate`; `tls` is the client side of `--tls`.
//!
//! Exit status: 0 when the run met what its QoS promises, 1 when it did not
//! (loss at QoS 1/2 or above `--max-loss` at QoS 0, duplicates at QoS 2,
//! clients that never connected; with `--find-max-rate`, no rate was
//! sustained), 2 when the run could not be made.

mod cli;
mod client;
mod merge;
mod payload;
mod plan;
mod plot;
mod report;
mod runner;
mod search;
mod stats;
mod tls;
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
    let report = match plan.search {
        Some(search) => match find_max_rate(&plan, search)? {
            Some(report) => report,
            None => return Ok(false),
        },
        None => {
            let result = runner::run(plan.clone())?;
            report::Report::new(&plan, &result)
        }
    };
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

/// Runs `plan` at the rates [`search::find_max`] asks for, one line each;
/// the report of the highest sustained rate with every run under
/// `search`, or `None` (after saying so) when not even the lowest rate
/// tried was sustained.
fn find_max_rate(
    plan: &plan::Plan,
    search: plan::Search,
) -> anyhow::Result<Option<report::Report>> {
    let publishers = plan.publishers().max(1) as f64;
    let mut best: Option<(f64, report::Report)> = None;
    let mut steps = Vec::new();
    let found = search::find_max(search.start, search.limit, search.floor, |rate| {
        let mut run = plan.clone();
        run.set_rate(rate / publishers);
        // A run twice as long as asked is not sustained, whatever is left.
        run.give_up = plan.duration.map(|d| d * 2);
        let report = report::Report::new(&run, &runner::run(run.clone())?);
        let step = search::step(&report, rate, search.max_p99_us);
        println!(
            "rate {rate:.0}/s: {} (sent {:.0}/s, received {:.0}/s, lost {}, p99 {} us){}",
            if step.sustained { "sustained" } else { "not sustained" },
            step.sent_per_s,
            step.received_per_s,
            step.lost,
            step.p99_us,
            if step.sustained { String::new() } else { format!(": {}", step.why) }
        );
        let sustained = step.sustained;
        steps.push(step);
        if sustained && best.as_ref().is_none_or(|(r, _)| rate > *r) {
            best = Some((rate, report));
        }
        Ok(sustained)
    })?;
    match found {
        Some(rate) => println!("max sustained rate: {rate:.0} msg/s"),
        None => {
            println!("no sustained rate from {:.0} down to {:.0} msg/s", search.start, search.floor)
        }
    }
    Ok(best.map(|(rate, mut report)| {
        report.search = Some(search::Summary { max_sustained_rate: Some(rate), steps });
        report
    }))
}
