//! `meshfilter bench diff`: `filter diff` over a synthetic mesh of production size.

use std::process::ExitCode;
use std::time::Instant;

use meshfilter_whatif::{SyntheticMesh, synthetic};

use crate::cli::{BenchDiffArgs, DiffArgs};

pub fn run(args: &BenchDiffArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("snapshot.json");
    let made = Instant::now();
    let snapshot = synthetic(&SyntheticMesh {
        clusters: args.clusters,
        endpoints: args.endpoints,
        opted_in_percent: args.opted_in,
    });
    snapshot.write(&path)?;
    let bytes = std::fs::metadata(&path)?.len();
    eprintln!(
        "snapshot: {} clusters x {} endpoints, {:.1} MB, written in {:.1} s",
        args.clusters,
        args.endpoints,
        bytes as f64 / 1e6,
        made.elapsed().as_secs_f64()
    );
    drop(snapshot);
    let started = Instant::now();
    let code = super::diff::run(&DiffArgs {
        old: "builtin:cfp-scope".into(),
        new: "builtin:cfp-scope".into(),
        snapshot: path,
        old_config: Some(r#"{"default": "opt-out"}"#.into()),
        new_config: Some(r#"{"default": "opt-in"}"#.into()),
        json: false,
        top: 10,
        max_stopped: None,
        max_removed: None,
        threads: args.threads,
    })?;
    eprintln!(
        "filter diff, snapshot read included: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(code)
}
