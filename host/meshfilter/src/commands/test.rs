//! `meshfilter filter test`: run a module, or a filters directory's whole chain, over a
//! table of cases and print its decisions.
//!
//! The command must not lie to a CI gate: a call that fails (trap, deadline, memory,
//! blocking call) is a failed case with the module's own message, never the decision a
//! failure policy would have applied; an abstaining module shows `abstain`, not the
//! chain's `otherwise`; and the cases file is checked strictly (unknown keys, unknown
//! `expect` values and `expect` values the hook cannot decide are errors naming the case).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use meshfilter_contract::scope::SyncScope;
use meshfilter_filter_runtime::{
    Decided, EndpointInput, ExportDecision, FilterMetrics, FilterRuntime, Hook, ImportDecision,
    Locality, MissDecision, MissInput, ModuleSource, Verdict,
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

/// One case: an input for one hook and, optionally, the decision it must get.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    hook: Hook,
    /// The endpoint of an `export` or `import` case.
    #[serde(default)]
    endpoint: Option<EndpointInput>,
    /// The miss request of a `miss` case.
    #[serde(default)]
    request: Option<MissInput>,
    #[serde(default)]
    expect: Option<Expect>,
}

/// What a case expects, checked when the file is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
enum Expect {
    /// The module has no opinion (single-module runs only).
    Abstain,
    /// Export or import: keep the endpoint out.
    Skip,
    /// Export with any scope, or with this one.
    Sync(Option<SyncScope>),
    /// Import: mirror the endpoint.
    Keep,
    /// Miss: do not resolve, for any time or for this many milliseconds.
    Ignore(Option<u64>),
    /// Miss: resolve from any clusters, or from exactly these, in this order.
    Resolve(Option<Vec<String>>),
}

/// Every form `expect` accepts, for error messages and the guide.
const ACCEPTED: &str = "abstain, skip, sync, sync:<scope> (cluster, zone, regional, global or \
                        a list of regions), keep, ignore, ignore:<ms>ms, resolve, \
                        resolve:<cluster,...>";

impl TryFrom<String> for Expect {
    type Error = String;

    fn try_from(text: String) -> Result<Expect, String> {
        let bad = |why: String| format!("invalid expect {text:?}: {why}; accepted: {ACCEPTED}");
        let (word, arg) = match text.split_once(':') {
            Some((w, a)) => (w.trim(), Some(a.trim())),
            None => (text.trim(), None),
        };
        Ok(match (word, arg) {
            ("abstain", None) => Expect::Abstain,
            ("skip", None) => Expect::Skip,
            ("keep", None) => Expect::Keep,
            ("sync", None) => Expect::Sync(None),
            ("sync", Some(scope)) if !scope.is_empty() => Expect::Sync(Some(
                SyncScope::parse(Some(scope)).map_err(|e| bad(e.to_string()))?,
            )),
            ("ignore", None) => Expect::Ignore(None),
            ("ignore", Some(ttl)) => {
                let ms = ttl.strip_suffix("ms").unwrap_or(ttl);
                Expect::Ignore(Some(ms.parse().map_err(|_| {
                    bad(format!(
                        "{ttl:?} is not a time in milliseconds like 30000ms"
                    ))
                })?))
            }
            ("resolve", None) => Expect::Resolve(None),
            ("resolve", Some(list)) => Expect::Resolve(Some(
                list.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
            )),
            _ => return Err(bad("unknown value".to_string())),
        })
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Abstain => f.write_str("abstain"),
            Expect::Skip => f.write_str("skip"),
            Expect::Keep => f.write_str("keep"),
            Expect::Sync(None) => f.write_str("sync"),
            Expect::Sync(Some(scope)) => write!(f, "sync:{scope}"),
            Expect::Ignore(None) => f.write_str("ignore"),
            Expect::Ignore(Some(ms)) => write!(f, "ignore:{ms}ms"),
            Expect::Resolve(None) => f.write_str("resolve"),
            Expect::Resolve(Some(clusters)) => write!(f, "resolve:{}", clusters.join(",")),
        }
    }
}

impl Expect {
    /// The expectations a hook can meet (`abstain` only when one module runs alone).
    fn fits(&self, hook: Hook, chain: bool) -> bool {
        match self {
            Expect::Abstain => !chain,
            Expect::Skip => matches!(hook, Hook::Export | Hook::Import),
            Expect::Sync(_) => hook == Hook::Export,
            Expect::Keep => hook == Hook::Import,
            Expect::Ignore(_) | Expect::Resolve(_) => hook == Hook::Miss,
        }
    }

    /// What a hook accepts, for the error when [`Expect::fits`] is false.
    fn accepted_for(hook: Hook, chain: bool) -> String {
        let abstain = if chain { "" } else { "abstain, " };
        let own = match hook {
            Hook::Export => "skip, sync, sync:<scope>",
            Hook::Import => "keep, skip",
            Hook::Miss => "ignore, ignore:<ms>ms, resolve, resolve:<cluster,...>",
        };
        format!("{abstain}{own}")
    }

    /// Whether `shown` meets this expectation.
    fn met_by(&self, shown: &Shown) -> bool {
        match (self, shown) {
            (Expect::Abstain, Shown::Abstain) => true,
            (Expect::Skip, Shown::Export(ExportDecision::Skip { .. }))
            | (Expect::Skip, Shown::Import(ImportDecision::Skip { .. }))
            | (Expect::Keep, Shown::Import(ImportDecision::Keep { .. })) => true,
            (Expect::Sync(want), Shown::Export(ExportDecision::Sync { scope, .. })) => {
                want.as_ref().is_none_or(|w| w == scope)
            }
            (Expect::Ignore(want), Shown::Miss(MissDecision::Ignore { ttl, .. })) => {
                want.is_none_or(|ms| u128::from(ms) == ttl.as_millis())
            }
            (Expect::Resolve(want), Shown::Miss(MissDecision::Resolve { clusters, .. })) => {
                want.as_ref().is_none_or(|w| w == clusters)
            }
            _ => false,
        }
    }
}

/// A decision as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shown {
    /// The module abstained (single-module runs).
    Abstain,
    Export(ExportDecision),
    Import(ImportDecision),
    Miss(MissDecision),
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Abstain => f.write_str("abstain"),
            Shown::Export(ExportDecision::Skip { .. }) => f.write_str("skip"),
            Shown::Export(ExportDecision::Sync { scope, .. }) => write!(f, "sync:{scope}"),
            Shown::Import(ImportDecision::Keep { .. }) => f.write_str("keep"),
            Shown::Import(ImportDecision::Skip { .. }) => f.write_str("skip"),
            Shown::Miss(MissDecision::Ignore { ttl, .. }) => {
                write!(f, "ignore:{}ms", ttl.as_millis())
            }
            Shown::Miss(MissDecision::Resolve { clusters, .. }) => {
                write!(f, "resolve:{}", clusters.join(","))
            }
        }
    }
}

/// What runs the cases: one module alone, or a directory's chains.
enum Subject {
    Module(Arc<FilterRuntime>),
    Chain(Arc<FilterRuntime>),
}

impl Subject {
    fn runtime(&self) -> &FilterRuntime {
        match self {
            Subject::Module(r) | Subject::Chain(r) => r,
        }
    }

    fn is_chain(&self) -> bool {
        matches!(self, Subject::Chain(_))
    }
}

/// One printed row.
#[derive(Debug, serde::Serialize)]
struct Row {
    case: String,
    hook: Hook,
    /// The decision, `abstain`, or `FAILED` when the call failed.
    decision: String,
    reason: String,
    decided_by: String,
    expected: Option<String>,
    /// Why the call failed, with the module's panic message when it left one.
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
    ok: bool,
}

pub fn run(args: &TestArgs) -> anyhow::Result<ExitCode> {
    let file = read_cases(&args.endpoints, args.manifest.is_some())?;
    let local = file
        .local
        .clone()
        .unwrap_or_else(|| super::locality_of(&args.local));
    let engine = super::engine()?;
    let subject = match (&args.manifest, &args.module) {
        (Some(dir), _) => Subject::Chain(
            FilterRuntime::with_engine(
                engine,
                ModuleSource::Directory(dir.clone()),
                BTreeMap::new(),
                local,
                FilterMetrics::default(),
            )
            .with_context(|| format!("loading the filters directory {}", dir.display()))?,
        ),
        (None, Some(module)) => Subject::Module(super::load_module(
            &engine,
            module,
            args.config.as_deref(),
            local,
            true,
        )?),
        (None, None) => anyhow::bail!("name a module, or a filters directory with --manifest"),
    };
    let rows: Vec<Row> = file
        .cases
        .into_iter()
        .map(|case| evaluate(&subject, case))
        .collect();
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

/// Reads and checks a cases file: every key known, every case complete, every `expect`
/// one its hook can meet (`chain`: the cases run on a manifest's chains).
fn read_cases(path: &Path, chain: bool) -> anyhow::Result<CasesFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_cases(&text, chain).with_context(|| format!("invalid cases file {}", path.display()))
}

fn parse_cases(text: &str, chain: bool) -> anyhow::Result<CasesFile> {
    let file: CasesFile = serde_yaml::from_str(text)?;
    for (i, case) in file.cases.iter().enumerate() {
        let name = case_label(i, case);
        let (needed, stray) = match case.hook {
            Hook::Export | Hook::Import => (case.endpoint.is_some(), case.request.is_some()),
            Hook::Miss => (case.request.is_some(), case.endpoint.is_some()),
        };
        let (want, other) = match case.hook {
            Hook::Miss => ("request", "endpoint"),
            _ => ("endpoint", "request"),
        };
        anyhow::ensure!(needed, "{name}: hook {} needs `{want}`", case.hook);
        anyhow::ensure!(
            !stray,
            "{name}: hook {} takes `{want}`, not `{other}`",
            case.hook
        );
        if let Some(expect) = &case.expect {
            anyhow::ensure!(
                expect.fits(case.hook, chain),
                "{name}: expect {expect:?} is not a decision of the {} hook{}; accepted: {}",
                case.hook,
                if chain && *expect == Expect::Abstain {
                    " run as a chain (with --manifest, `otherwise` decides when every filter abstains)"
                } else {
                    ""
                },
                Expect::accepted_for(case.hook, chain),
                expect = expect.to_string(),
            );
        }
    }
    Ok(file)
}

/// `case 3 ("name")`, or `case 3`.
fn case_label(index: usize, case: &Case) -> String {
    match &case.name {
        Some(name) => format!("case {index} ({name:?})"),
        None => format!("case {index}"),
    }
}

fn evaluate(subject: &Subject, case: Case) -> Row {
    let runtime = subject.runtime();
    // `parse_cases` checked that each case has the input its hook needs.
    let (label, outcome) = match (case.hook, &case.endpoint, &case.request) {
        (Hook::Export, Some(ep), _) => {
            let ep = Arc::new(ep.clone());
            let v = runtime.decide_export(&ep, None);
            (ep.display_name(), outcome(subject, v, Shown::Export))
        }
        (Hook::Import, Some(ep), _) => {
            let ep = Arc::new(ep.clone());
            let v = runtime.decide_import(&ep, None);
            (
                format!("{} from {}", ep.display_name(), ep.origin.cluster),
                outcome(subject, v, Shown::Import),
            )
        }
        (Hook::Miss, _, Some(req)) => {
            let req = Arc::new(req.clone());
            let v = runtime.decide_miss(&req);
            (req.address.clone(), outcome(subject, v, Shown::Miss))
        }
        _ => unreachable!("parse_cases checks every case's input"),
    };
    let expected = case.expect.as_ref().map(Expect::to_string);
    let name = case.name.unwrap_or(label);
    match outcome {
        Outcome::Decided {
            shown,
            reason,
            decided_by,
        } => Row {
            ok: case.expect.as_ref().is_none_or(|e| e.met_by(&shown)),
            case: name,
            hook: case.hook,
            decision: shown.to_string(),
            reason,
            decided_by,
            expected,
            failure: None,
        },
        Outcome::Failed { module, failure } => Row {
            case: name,
            hook: case.hook,
            decision: "FAILED".to_string(),
            reason: String::new(),
            decided_by: module,
            expected,
            failure: Some(failure),
            ok: false,
        },
    }
}

/// What one case came to.
enum Outcome {
    Decided {
        shown: Shown,
        reason: String,
        decided_by: String,
    },
    /// A filter call failed: the failure, not the decision a failure policy made of it.
    Failed { module: String, failure: String },
}

fn outcome<D: HasReason>(subject: &Subject, v: Verdict<D>, wrap: fn(D) -> Shown) -> Outcome {
    match v.decided_by {
        Decided::Filter {
            module,
            position,
            memo_hit,
        } => Outcome::Decided {
            reason: v.decision.reason().to_string(),
            shown: wrap(v.decision),
            decided_by: match subject {
                Subject::Module(_) => format!("{module}{}", if memo_hit { " (memo)" } else { "" }),
                Subject::Chain(_) => format!(
                    "{module}#{position}{}",
                    if memo_hit { " (memo)" } else { "" }
                ),
            },
        },
        Decided::Otherwise { .. } if !subject.is_chain() => Outcome::Decided {
            shown: Shown::Abstain,
            reason: "the module abstained".to_string(),
            decided_by: "-".to_string(),
        },
        Decided::Otherwise { otherwise } => Outcome::Decided {
            reason: v.decision.reason().to_string(),
            shown: wrap(v.decision),
            decided_by: format!("otherwise:{otherwise:?}").to_lowercase(),
        },
        Decided::FailurePolicy { failure, .. } => Outcome::Failed {
            module: failure_module(&failure),
            failure: one_line(&failure.to_string()),
        },
    }
}

/// What wasmtime puts between a trap's cause and its kind.
const WASM_BACKTRACE: &str = "error while executing at wasm backtrace:";

/// A failure message on one line (a panic message may hold newlines), without the wasm
/// backtrace of a trap: a stripped module's frames are all `<unknown>`, and the panic
/// message and the trap kind around them are what an author acts on.
fn one_line(message: &str) -> String {
    let message = match message.split_once(WASM_BACKTRACE) {
        Some((cause, frames)) => match frames.rsplit_once(": wasm trap: ") {
            Some((_, kind)) => format!("{cause}wasm trap: {kind}"),
            None => cause.trim_end().to_string(),
        },
        None => message.to_string(),
    };
    message
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The module a failure is about.
fn failure_module(failure: &meshfilter_filter_runtime::CallFailure) -> String {
    use meshfilter_filter_runtime::CallFailure as F;
    match failure {
        F::Trap { module, .. }
        | F::Timeout { module, .. }
        | F::Blocked { module, .. }
        | F::OutOfMemory { module, .. }
        | F::Instantiate { module, .. } => module.clone(),
    }
}

/// The reason of a decision of any hook.
trait HasReason {
    fn reason(&self) -> &str;
}

impl HasReason for ExportDecision {
    fn reason(&self) -> &str {
        ExportDecision::reason(self)
    }
}

impl HasReason for ImportDecision {
    fn reason(&self) -> &str {
        ImportDecision::reason(self)
    }
}

impl HasReason for MissDecision {
    fn reason(&self) -> &str {
        MissDecision::reason(self)
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
            (_, false) => "NO",
            (None, true) => "-",
            (Some(_), true) => "yes",
        };
        let case: String = r.case.chars().take(w_case).collect();
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
        if let Some(failure) = &r.failure {
            println!("    failed: {failure}");
        }
        if !r.ok
            && let Some(expected) = &r.expected
        {
            println!("    expected {expected}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(text: &str) -> Result<Expect, String> {
        Expect::try_from(text.to_string())
    }

    #[test]
    fn every_documented_expect_parses_and_prints_back() {
        for text in [
            "abstain",
            "skip",
            "sync",
            "sync:regional",
            "sync:global",
            "sync:eu-west-1,us-east-1",
            "keep",
            "ignore",
            "ignore:30000ms",
            "resolve",
            "resolve:c1,c2",
        ] {
            assert_eq!(expect(text).unwrap().to_string(), text);
        }
        assert_eq!(
            expect("sync:region"),
            Ok(Expect::Sync(Some(SyncScope::Region)))
        );
        assert_eq!(expect("ignore:5"), Ok(Expect::Ignore(Some(5))));
    }

    #[test]
    fn a_bad_expect_names_the_value_and_what_is_accepted() {
        for bad in [
            "sink",
            "sync:",
            "sync:Everywhere!",
            "ignore:soon",
            "keep:x",
            "",
        ] {
            let err = expect(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("accepted: abstain, skip, sync"), "{err}");
        }
    }

    fn sync(scope: SyncScope) -> Shown {
        Shown::Export(ExportDecision::Sync {
            scope,
            reason: "r".into(),
        })
    }

    #[test]
    fn expectations_match_the_decision() {
        let regional = sync(SyncScope::Region);
        assert!(expect("sync").unwrap().met_by(&regional));
        assert!(expect("sync:regional").unwrap().met_by(&regional));
        assert!(!expect("sync:global").unwrap().met_by(&regional));
        assert!(!expect("skip").unwrap().met_by(&regional));
        assert!(!expect("abstain").unwrap().met_by(&regional));
        assert!(expect("abstain").unwrap().met_by(&Shown::Abstain));
        assert!(!expect("sync").unwrap().met_by(&Shown::Abstain));
        let resolve = Shown::Miss(MissDecision::Resolve {
            clusters: vec!["a".into(), "b".into()],
            reason: "r".into(),
        });
        assert!(expect("resolve").unwrap().met_by(&resolve));
        assert!(expect("resolve:a,b").unwrap().met_by(&resolve));
        assert!(!expect("resolve:b,a").unwrap().met_by(&resolve));
        let ignore = Shown::Miss(MissDecision::Ignore {
            ttl: std::time::Duration::from_secs(30),
            reason: "r".into(),
        });
        assert!(expect("ignore:30000ms").unwrap().met_by(&ignore));
        assert!(!expect("ignore:1ms").unwrap().met_by(&ignore));
    }

    const ENDPOINT: &str = "{namespace: shop, podName: web-0, ip: 10.0.0.1}";

    fn case_error(yaml: &str, chain: bool) -> String {
        format!("{:#}", parse_cases(yaml, chain).unwrap_err())
    }

    #[test]
    fn unknown_keys_are_errors_at_every_level() {
        let err = case_error(
            "cases:\n  - hook: export\n    endpoint: {namespace: a, podName: b, ip: c, annotation: {x: y}}\n",
            false,
        );
        assert!(err.contains("unknown field `annotation`"), "{err}");
        let err = case_error(
            "cases:\n  - hook: miss\n    request: {address: 10.0.0.1, candidate: []}\n",
            false,
        );
        assert!(err.contains("unknown field `candidate`"), "{err}");
        let err = case_error(
            &format!("cases:\n  - hook: export\n    endpoint: {ENDPOINT}\n    expected: skip\n"),
            false,
        );
        assert!(err.contains("unknown field `expected`"), "{err}");
        let err = case_error("local: {cluster: a, zones: b}\ncases: []\n", false);
        assert!(err.contains("unknown field `zones`"), "{err}");
        let err = case_error("cases: []\nlocals: {}\n", false);
        assert!(err.contains("unknown field `locals`"), "{err}");
    }

    #[test]
    fn expect_values_are_checked_against_the_hook() {
        let err = case_error(
            &format!(
                "cases:\n  - name: web\n    hook: export\n    endpoint: {ENDPOINT}\n    expect: sink\n"
            ),
            false,
        );
        assert!(err.contains("invalid expect \"sink\""), "{err}");
        assert!(err.contains("accepted:"), "{err}");
        let err = case_error(
            &format!(
                "cases:\n  - name: web\n    hook: export\n    endpoint: {ENDPOINT}\n    expect: keep\n"
            ),
            false,
        );
        assert!(
            err.contains("case 0 (\"web\"): expect \"keep\" is not a decision of the export hook"),
            "{err}"
        );
        assert!(err.contains("accepted: abstain, skip, sync"), "{err}");
        let abstain =
            format!("cases:\n  - hook: import\n    endpoint: {ENDPOINT}\n    expect: abstain\n");
        assert!(parse_cases(&abstain, false).is_ok());
        let err = case_error(&abstain, true);
        assert!(err.contains("run as a chain"), "{err}");
    }

    #[test]
    fn failures_print_on_one_line_without_the_backtrace() {
        let trap = "module m.wasm trapped: panicked at src/lib.rs:3:5:\nboom; error while executing at wasm backtrace:\n    0:  0x13daf - <unknown>!<wasm function 346>\n    1:  0x10eb4 - <unknown>!<wasm function 272>: wasm trap: wasm `unreachable` instruction executed";
        assert_eq!(
            one_line(trap),
            "module m.wasm trapped: panicked at src/lib.rs:3:5: boom; wasm trap: wasm `unreachable` instruction executed"
        );
        assert_eq!(one_line("ran past\nits deadline"), "ran past its deadline");
    }

    #[test]
    fn a_case_needs_the_input_of_its_hook() {
        let err = case_error("cases:\n  - hook: export\n", false);
        assert!(
            err.contains("case 0: hook export needs `endpoint`"),
            "{err}"
        );
        let err = case_error(
            &format!(
                "cases:\n  - hook: miss\n    request: {{address: a}}\n    endpoint: {ENDPOINT}\n"
            ),
            false,
        );
        assert!(err.contains("takes `request`, not `endpoint`"), "{err}");
    }
}
