//! `meshfilter demo`: the default filter over a sample mesh (`meshfilter-bench` runs it).

use std::process::ExitCode;

use meshfilter_bench::{DemoOptions, Sample};

use crate::builtin;
use crate::cli::DemoArgs;

pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let sample = match &args.sample {
        Some(path) => Sample::read(path)?,
        None => Sample::bundled()?,
    };
    let config = super::parse_config(args.config.as_deref())?;
    meshfilter_bench::demo::run(&DemoOptions {
        sample,
        filters: builtin::default_set(config),
        filters_only: args.filters_only,
    })?;
    Ok(ExitCode::SUCCESS)
}
