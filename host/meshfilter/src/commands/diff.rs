//! `meshfilter filter diff OLD NEW --snapshot FILE`: what a filter change would do.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use meshfilter_filter_runtime::{
    BuiltinSet, FilterManifest, FilterMetrics, FilterRuntime, MANIFEST_FILE, ModuleSource,
};
use meshfilter_whatif::{DiffOptions, DiffReport, Snapshot, diff};

use crate::cli::DiffArgs;

pub fn run(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let snapshot = Snapshot::read(&args.snapshot)?;
    let old = side(&args.old, args.old_config.as_deref()).context("OLD")?;
    let new = side(&args.new, args.new_config.as_deref()).context("NEW")?;
    let engine = super::engine()?;
    let loader = |source: &ModuleSource| {
        let engine = engine.clone();
        let source = source.clone();
        // One runtime per cluster and side: their "generation loaded" lines would bury
        // the report. Load errors are returned, not logged.
        move |local| {
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                FilterRuntime::with_engine(
                    engine.clone(),
                    source.clone(),
                    BTreeMap::new(),
                    local,
                    FilterMetrics::default(),
                )
            })
        }
    };
    let (old_loader, new_loader) = (loader(&old), loader(&new));
    let mut options = DiffOptions::default();
    if let Some(threads) = args.threads {
        options.threads = threads.max(1);
    }
    let report = diff(&snapshot, &old_loader, &new_loader, &options)?;
    let violations = gates(&report, args);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, args.top);
    }
    for v in &violations {
        eprintln!("GATE FAILED: {v}");
    }
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A filters directory, or one module (a file or `builtin:<name>`) on every hook.
fn side(spec: &str, config: Option<&str>) -> anyhow::Result<ModuleSource> {
    let path = Path::new(spec);
    if path.is_dir() {
        anyhow::ensure!(
            path.join(MANIFEST_FILE).is_file(),
            "{spec}: a filters directory needs {MANIFEST_FILE}"
        );
        anyhow::ensure!(
            config.is_none(),
            "{spec}: --old-config/--new-config apply to single modules; a directory's config is in its {MANIFEST_FILE}"
        );
        return Ok(ModuleSource::Directory(path.to_path_buf()));
    }
    let (file, bytes) = super::read_module(spec)?;
    Ok(ModuleSource::Builtin(BuiltinSet {
        manifest: FilterManifest::single(&file, super::parse_config(config)?),
        modules: vec![(file, Arc::from(bytes))],
    }))
}

fn gates(report: &DiffReport, args: &DiffArgs) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(max) = args.max_stopped
        && report.stopped_exports() > max
    {
        out.push(format!(
            "{} endpoints would stop being exported (--max-stopped {max})",
            report.stopped_exports()
        ));
    }
    if let Some(max) = args.max_removed
        && report.max_removed() > max
    {
        out.push(format!(
            "a consuming cluster would lose {} entries (--max-removed {max})",
            report.max_removed()
        ));
    }
    out
}

fn print_report(report: &DiffReport, top: usize) {
    println!(
        "{} clusters, {} endpoints, evaluated in {} ms",
        report.clusters, report.endpoints, report.elapsed_ms
    );
    println!(
        "\n{:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "HOOK", "COMPARED", "CHANGED", "STARTED", "STOPPED", "RESCOPED", "OLD FAILS", "NEW FAILS"
    );
    for (hook, t) in &report.hooks {
        println!(
            "{:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
            hook,
            t.compared,
            t.changed,
            t.started,
            t.stopped,
            t.rescoped,
            t.old_failures,
            t.new_failures
        );
    }
    if report.changes.is_empty() {
        println!("\nno decision changes");
    } else {
        println!(
            "\n{:<7} {:<20} {:<16} {:<16} {:>8}  REASON (examples)",
            "HOOK", "NAMESPACE", "FROM", "TO", "COUNT"
        );
        for g in report.changes.iter().take(top) {
            println!(
                "{:<7} {:<20} {:<16} {:<16} {:>8}  {} ({})",
                g.hook,
                g.namespace,
                g.from.to_string(),
                g.to.to_string(),
                g.count,
                g.reason,
                g.examples.join(", ")
            );
        }
        if report.changes.len() > top {
            println!(
                "... {} more groups (--top N, or --json for all)",
                report.changes.len() - top
            );
        }
    }
    println!(
        "\n{:<24} {:>6} {:>14} {:>14} {:>10} {:>16}",
        "CONSUMER", "NODES", "ENTRIES/NODE", "AFTER", "DELTA", "AGENT MEM* AFTER"
    );
    for c in &report.consumers {
        println!(
            "{:<24} {:>6} {:>14} {:>14} {:>+10} {:>13.1} MB",
            c.cluster,
            c.nodes,
            c.entries_before,
            c.entries_after,
            c.entries_after as i64 - c.entries_before as i64,
            c.estimated_memory_after_bytes as f64 / 1e6
        );
    }
    println!(
        "* an estimate: about {} bytes of agent memory per remote endpoint (Cilium CFP-39876)",
        report.estimate_bytes_per_entry
    );
}
