//! `meshfilter bench chaos`: flags in, the soak of `meshfilter-bench`, the report out.

use std::process::ExitCode;

use anyhow::Context;
use meshfilter_bench::ChaosOptions;

use crate::cli::BenchChaosArgs;

pub fn run(args: &BenchChaosArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(clock_seed);
    println!("chaos soak: seed {seed}");
    let options = ChaosOptions {
        binary: std::env::current_exe().context("finding the meshfilter binary")?,
        minutes: args.minutes,
        remotes: args.remotes,
        endpoints: args.endpoints,
        seed,
        logs: args.logs.clone(),
    };
    let report = meshfilter_bench::chaos::run(&options)?;
    println!("{report}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A seed from the clock and the process ID: different on every run, printed so the run
/// can be replayed.
fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (u64::from(std::process::id()) << 32)
}
