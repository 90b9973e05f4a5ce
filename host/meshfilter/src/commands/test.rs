//! `meshfilter filter test`: run a module over a table of cases and print its decisions.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use meshfilter_filter_runtime::{
    Decided, EndpointInput, ExportDecision, FilterRuntime, Hook, ImportDecision, Locality,
    MissDecision, MissInput,
};
use serde::Deserialize;

use crate::cli::TestArgs;

/// The cases file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    /// This host's locality (overrides `--cluster/--zone/--region`).
    #[serde(default)]
    local: Option<Locality>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    hook: Hook,
    #[serde(default)]
    endpoint: Option<EndpointInput>,
    #[serde(default)]
    request: Option<MissInput>,
    /// `skip`, `sync`, `sync:<scope>`, `keep`, `ignore`, `resolve`, `resolve:<a,b>`.
    #[serde(default)]
    expect: Option<String>,
}

/// One printed row.
#[derive(Debug, serde::Serialize)]
struct Row {
    case: String,
    hook: Hook,
    decision: String,
    reason: String,
    decided_by: String,
    expected: Option<String>,
    ok: bool,
}

pub fn run(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.endpoints)
        .with_context(|| format!("reading {}", args.endpoints.display()))?;
    let file: CasesFile = serde_yaml::from_str(&text)
        .with_context(|| format!("parsing {}", args.endpoints.display()))?;
    let local = file
        .local
        .clone()
        .unwrap_or_else(|| super::locality(&args.module));
    let engine = super::engine()?;
    let runtime = super::load_single(&engine, &args.module, local, true)?;
    let mut rows = Vec::new();
    for (i, case) in file.cases.into_iter().enumerate() {
        rows.push(evaluate(&runtime, i, case)?);
    }
    let failed = rows.iter().filter(|r| !r.ok).count();
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print_table(&rows);
        println!("{} passed, {} failed", rows.len() - failed, failed);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn evaluate(runtime: &FilterRuntime, index: usize, case: Case) -> anyhow::Result<Row> {
    let need_endpoint = || {
        case.endpoint
            .clone()
            .map(Arc::new)
            .with_context(|| format!("case {index}: hook {} needs `endpoint`", case.hook))
    };
    let (label, decision, reason, decided_by) = match case.hook {
        Hook::Export => {
            let ep = need_endpoint()?;
            let v = runtime.decide_export(&ep, None);
            let d = match &v.decision {
                ExportDecision::Skip { .. } => "skip".to_string(),
                ExportDecision::Sync { scope, .. } => format!("sync:{scope}"),
            };
            (
                ep.display_name(),
                d,
                v.decision.reason().to_string(),
                who(&v.decided_by),
            )
        }
        Hook::Import => {
            let ep = need_endpoint()?;
            let v = runtime.decide_import(&ep, None);
            let d = match &v.decision {
                ImportDecision::Keep { .. } => "keep".to_string(),
                ImportDecision::Skip { .. } => "skip".to_string(),
            };
            (
                format!("{} from {}", ep.display_name(), ep.origin.cluster),
                d,
                v.decision.reason().to_string(),
                who(&v.decided_by),
            )
        }
        Hook::Miss => {
            let req = case
                .request
                .clone()
                .map(Arc::new)
                .with_context(|| format!("case {index}: hook miss needs `request`"))?;
            let v = runtime.decide_miss(&req);
            let d = match &v.decision {
                MissDecision::Ignore { ttl, .. } => format!("ignore:{}ms", ttl.as_millis()),
                MissDecision::Resolve { clusters, .. } => format!("resolve:{}", clusters.join(",")),
            };
            (
                req.address.clone(),
                d,
                v.decision.reason().to_string(),
                who(&v.decided_by),
            )
        }
    };
    let ok = case
        .expect
        .as_deref()
        .is_none_or(|e| matches_expectation(&decision, e));
    Ok(Row {
        case: case.name.unwrap_or(label),
        hook: case.hook,
        decision,
        reason,
        decided_by,
        expected: case.expect,
        ok,
    })
}

/// `expect: sync` matches any scope; `expect: sync:regional` only that one; the same for
/// `resolve` and `ignore`.
fn matches_expectation(decision: &str, expect: &str) -> bool {
    decision == expect || decision.split(':').next() == Some(expect)
}

fn who(d: &Decided) -> String {
    match d {
        Decided::Filter {
            module,
            position,
            memo_hit,
        } => {
            format!(
                "{module}#{position}{}",
                if *memo_hit { " (memo)" } else { "" }
            )
        }
        Decided::Otherwise { otherwise } => format!("otherwise:{otherwise:?}").to_lowercase(),
        Decided::FailurePolicy { policy, failure } => format!("{policy} after {}", failure.kind()),
    }
}

fn print_table(rows: &[Row]) {
    let w_case = rows
        .iter()
        .map(|r| r.case.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 48);
    let w_dec = rows
        .iter()
        .map(|r| r.decision.len())
        .max()
        .unwrap_or(8)
        .clamp(8, 32);
    println!(
        "{:<3} {:<6} {:<w_case$} {:<w_dec$} {:<4} REASON",
        "#", "HOOK", "CASE", "DECISION", "OK"
    );
    for (i, r) in rows.iter().enumerate() {
        let ok = match (&r.expected, r.ok) {
            (None, _) => "-",
            (Some(_), true) => "yes",
            (Some(_), false) => "NO",
        };
        let mut case = r.case.clone();
        case.truncate(w_case);
        println!(
            "{:<3} {:<6} {:<w_case$} {:<w_dec$} {:<4} {} [{}]",
            i,
            r.hook.as_str(),
            case,
            r.decision,
            ok,
            r.reason,
            r.decided_by
        );
        if !r.ok {
            println!("    expected {}", r.expected.as_deref().unwrap_or(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches_expectation;

    #[test]
    fn expectations_match_by_prefix() {
        assert!(matches_expectation("sync:regional", "sync"));
        assert!(matches_expectation("sync:regional", "sync:regional"));
        assert!(!matches_expectation("sync:global", "sync:regional"));
        assert!(!matches_expectation("skip", "sync"));
        assert!(matches_expectation("resolve:a,b", "resolve"));
    }
}
