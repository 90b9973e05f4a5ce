//! `misbehave`: a filter that fails on purpose, for the host's fault and reload tests.
//!
//! Config (every field optional):
//!
//! ```json
//! {"onExport": "sync-global", "onImport": "trap", "onMiss": "loop",
//!  "configure": "ok", "selfTest": "ok", "version": "v2"}
//! ```
//!
//! Each hook mode is one of:
//! - `sync-global` (the default): behave. Export syncs globally, import keeps, miss
//!   resolves from every candidate in order. The reason is `version` when set, else
//!   `misbehave`.
//! - `abstain`: abstain.
//! - `trap`: panic, which traps the module.
//! - `loop`: spin forever (the host's deadline must stop it).
//! - `oom`: allocate and touch 1 MiB chunks until the allocator fails, then panic (the
//!   host's memory limit must stop it).
//! - `sleep`: `std::thread::sleep` for 30 s, then behave (the host must refuse the
//!   blocking WASI call at once: a deadline cannot interrupt a host call).
//! - `grow:<MiB>`: allocate and touch `<MiB>` MiB, free it and behave. Wasm memory never
//!   shrinks, so the instance keeps holding that much while it lives.
//! - `huge-reason`: behave with a 100 000-byte reason of two-byte characters (the host
//!   must cut it on a character boundary).
//! - `huge-log`: log a 100 000-byte line through the host and print another to stdout,
//!   then behave (the host must cut both, and stdout must keep working).
//! - `read-label:<key>`: behave, with the value of label `<key>` (or `<unset>`) as the
//!   reason, prefixed by `<version>:` when `version` is set, so memoisation tests can see
//!   which input and which generation a decision came from. Miss requests have no labels:
//!   there it behaves like `sync-global`.
//! - `read-annotations`: behave, with the pod's annotations (`key=value`, comma-separated,
//!   or `<none>`) as the reason: reads `Endpoint::annotations`, new in interface 0.2.
//!   Miss requests have none: there it behaves like `sync-global`.
//! - `trap-if-label:<key>`, `loop-if-label:<key>`, `oom-if-label:<key>`,
//!   `sleep-if-label:<key>`: fail that way only for endpoints carrying label `<key>`,
//!   behave otherwise (so the module passes the host's probe and fails at call time).
//!
//! `configure` is `ok`, `reject` (return an error), `huge-error` (return an 8 MiB error)
//! or `trap` (panic); `selfTest` is `ok` or `fail`.

use meshfilter_guest_sdk::{
    Config, Endpoint, ExportDecision, Filter, ImportDecision, MissDecision, MissRequest, Scope,
    export_filter, warn,
};
use serde::Deserialize;
use std::time::Duration;

/// How long `sleep` sleeps: far past any deadline, so only a host that refuses the call
/// returns in time.
const SLEEP: Duration = Duration::from_secs(30);

/// Length of the `huge-reason` reason and of each `huge-log` line, in bytes.
const HUGE: usize = 100_000;

/// Length of the `huge-error` configure error, in bytes.
const HUGE_ERROR: usize = 8 << 20;

/// What one hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    SyncGlobal,
    Abstain,
    Trap,
    Loop,
    Oom,
    Sleep,
    /// Touch this many MiB, then behave.
    Grow(usize),
    HugeReason,
    HugeLog,
    ReadLabel(String),
    ReadAnnotations,
    /// Fail with the inner mode when the endpoint has this label.
    IfLabel(Box<Mode>, String),
}

impl Mode {
    fn parse(field: &str, text: &str) -> Result<Mode, String> {
        Ok(match text {
            "sync-global" => Mode::SyncGlobal,
            "abstain" => Mode::Abstain,
            "trap" => Mode::Trap,
            "loop" => Mode::Loop,
            "oom" => Mode::Oom,
            "sleep" => Mode::Sleep,
            "huge-reason" => Mode::HugeReason,
            "huge-log" => Mode::HugeLog,
            "read-annotations" => Mode::ReadAnnotations,
            _ if text.starts_with("grow:") => match text["grow:".len()..].parse::<usize>() {
                Ok(mib) if mib > 0 => Mode::Grow(mib),
                _ => {
                    return Err(format!(
                        "{field}: {text:?} wants a positive number of MiB after grow:"
                    ));
                }
            },
            _ => {
                let conditional = [
                    ("trap-if-label:", Mode::Trap),
                    ("loop-if-label:", Mode::Loop),
                    ("oom-if-label:", Mode::Oom),
                    ("sleep-if-label:", Mode::Sleep),
                ]
                .into_iter()
                .find_map(|(prefix, mode)| text.strip_prefix(prefix).map(|key| (mode, key)));
                match (conditional, text.strip_prefix("read-label:")) {
                    (Some((mode, key)), _) if !key.is_empty() => {
                        Mode::IfLabel(Box::new(mode), key.to_string())
                    }
                    (None, Some(key)) if !key.is_empty() => Mode::ReadLabel(key.to_string()),
                    _ => {
                        return Err(format!(
                            "{field}: unknown mode {text:?} (want sync-global, abstain, trap, loop, oom, \
                             sleep, grow:<MiB>, huge-reason, huge-log, read-label:<key> or \
                             trap|loop|oom|sleep-if-label:<key>)"
                        ));
                    }
                }
            }
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Settings {
    on_export: Option<String>,
    on_import: Option<String>,
    on_miss: Option<String>,
    configure: Option<String>,
    self_test: Option<String>,
    version: Option<String>,
}

/// The configured filter.
#[derive(Debug)]
pub struct Misbehave {
    on_export: Mode,
    on_import: Mode,
    on_miss: Mode,
    self_test_fails: bool,
    reason: String,
    version: Option<String>,
}

/// What a hook that did not fail decides.
enum Outcome {
    Abstain,
    Behave(String),
}

impl Misbehave {
    /// Runs `mode`: fails as asked, or says what to decide.
    fn act(
        &self,
        mode: &Mode,
        label: impl FnOnce(&str) -> Option<String>,
        annotations: impl FnOnce() -> Vec<(String, String)>,
    ) -> Outcome {
        match mode {
            Mode::SyncGlobal => Outcome::Behave(self.reason.clone()),
            Mode::Abstain => Outcome::Abstain,
            Mode::Trap | Mode::Loop | Mode::Oom | Mode::Sleep => self.fail(mode),
            Mode::Grow(mib) => {
                touch_memory(*mib);
                Outcome::Behave(self.reason.clone())
            }
            Mode::HugeReason => Outcome::Behave("é".repeat(HUGE / 2)),
            Mode::HugeLog => {
                warn!("{}", "l".repeat(HUGE));
                println!("{}", "p".repeat(HUGE));
                Outcome::Behave(self.reason.clone())
            }
            Mode::ReadLabel(key) => {
                let value = label(key).unwrap_or_else(|| "<unset>".to_string());
                Outcome::Behave(match &self.version {
                    Some(v) => format!("{v}:{value}"),
                    None => value,
                })
            }
            Mode::ReadAnnotations => {
                let all: Vec<String> = annotations()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                Outcome::Behave(if all.is_empty() {
                    "<none>".to_string()
                } else {
                    all.join(",")
                })
            }
            Mode::IfLabel(fail, key) => match label(key) {
                Some(_) => self.fail(fail),
                None => Outcome::Behave(self.reason.clone()),
            },
        }
    }
}

impl Misbehave {
    /// The failing modes; anything else behaves.
    fn fail(&self, mode: &Mode) -> Outcome {
        match mode {
            Mode::Trap => panic!("misbehave: trap as configured"),
            Mode::Loop => spin(),
            Mode::Oom => exhaust_memory(),
            Mode::Sleep => {
                std::thread::sleep(SLEEP);
                Outcome::Behave(self.reason.clone())
            }
            _ => Outcome::Behave(self.reason.clone()),
        }
    }
}

/// Never returns, and the optimiser cannot prove it does nothing.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = core::hint::black_box(n.wrapping_add(1));
    }
}

/// Allocates and touches `mib` MiB, then frees it.
fn touch_memory(mib: usize) {
    let block = vec![0x5au8; mib << 20];
    core::hint::black_box(&block);
}

/// Allocates and touches 1 MiB chunks until an allocation fails, then panics.
fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = Vec::new();
        if chunk.try_reserve_exact(CHUNK).is_err() || held.try_reserve(1).is_err() {
            panic!("misbehave: out of memory after {} MiB", held.len());
        }
        chunk.resize(CHUNK, 0xa5);
        held.push(core::hint::black_box(chunk));
    }
}

impl Filter for Misbehave {
    fn configure(config: &Config) -> Result<Self, String> {
        let s: Settings = config.parse()?;
        let mode = |field: &str, value: &Option<String>| {
            Mode::parse(field, value.as_deref().unwrap_or("sync-global"))
        };
        let filter = Misbehave {
            on_export: mode("onExport", &s.on_export)?,
            on_import: mode("onImport", &s.on_import)?,
            on_miss: mode("onMiss", &s.on_miss)?,
            self_test_fails: match s.self_test.as_deref() {
                None | Some("ok") => false,
                Some("fail") => true,
                Some(other) => {
                    return Err(format!(
                        "selfTest: unknown value {other:?} (want ok or fail)"
                    ));
                }
            },
            reason: s.version.clone().unwrap_or_else(|| "misbehave".to_string()),
            version: s.version,
        };
        match s.configure.as_deref() {
            None | Some("ok") => Ok(filter),
            Some("reject") => Err("configure: rejected as configured".to_string()),
            Some("huge-error") => Err("e".repeat(HUGE_ERROR)),
            Some("trap") => panic!("misbehave: configure traps as configured"),
            Some(other) => Err(format!(
                "configure: unknown value {other:?} (want ok, reject, huge-error or trap)"
            )),
        }
    }

    fn self_test(&self) -> Result<(), String> {
        if self.self_test_fails {
            Err("self-test fails as configured".to_string())
        } else {
            Ok(())
        }
    }

    fn export(&self, endpoint: &Endpoint) -> ExportDecision {
        match self.act(
            &self.on_export,
            |key| endpoint.label(key),
            || endpoint.annotations(),
        ) {
            Outcome::Abstain => ExportDecision::Abstain,
            Outcome::Behave(reason) => ExportDecision::sync(Scope::Global).because(reason),
        }
    }

    fn import(&self, endpoint: &Endpoint) -> ImportDecision {
        match self.act(
            &self.on_import,
            |key| endpoint.label(key),
            || endpoint.annotations(),
        ) {
            Outcome::Abstain => ImportDecision::Abstain,
            Outcome::Behave(reason) => ImportDecision::keep(reason),
        }
    }

    fn miss(&self, request: &MissRequest) -> MissDecision {
        match self.act(&self.on_miss, |_| Some(self.reason.clone()), Vec::new) {
            Outcome::Abstain => MissDecision::Abstain,
            Outcome::Behave(reason) => {
                MissDecision::resolve(request.candidates().into_iter().map(|c| c.locality.cluster))
                    .because(reason)
            }
        }
    }
}

export_filter!(Misbehave);

#[cfg(test)]
mod tests {
    use super::*;
    use meshfilter_guest_sdk::{Locality, testing};
    use std::panic::{AssertUnwindSafe, catch_unwind};

    #[test]
    fn behaves_by_default_and_echoes_the_version() {
        let endpoint = Endpoint::builder().label("app", "web").build();
        let request = MissRequest::builder()
            .candidate(Locality::new("c1"), true)
            .candidate(Locality::new("c2"), false)
            .build();
        for (config, reason) in [("null", "misbehave"), (r#"{"version": "v2"}"#, "v2")] {
            let filter: Misbehave = testing::load(config).unwrap();
            assert_eq!(
                filter.export(&endpoint),
                ExportDecision::sync(Scope::Global).because(reason)
            );
            assert_eq!(filter.import(&endpoint), ImportDecision::keep(reason));
            assert_eq!(
                filter.miss(&request),
                MissDecision::resolve(["c1", "c2"]).because(reason)
            );
        }
        assert!(endpoint.reads().is_empty(), "sync-global reads nothing");
    }

    #[test]
    fn read_label_reports_the_value() {
        let filter: Misbehave =
            testing::load(r#"{"onExport": "read-label:app", "onImport": "read-label:tier", "onMiss": "read-label:x"}"#).unwrap();
        let endpoint = Endpoint::builder().label("app", "web").build();
        assert_eq!(
            filter.export(&endpoint),
            ExportDecision::sync(Scope::Global).because("web")
        );
        assert_eq!(filter.import(&endpoint), ImportDecision::keep("<unset>"));
        assert_eq!(endpoint.reads(), ["label(app)", "label(tier)"]);
        assert_eq!(
            filter.miss(&MissRequest::builder().build()),
            MissDecision::resolve(Vec::<String>::new()).because("misbehave")
        );
    }

    #[test]
    fn read_annotations_lists_them_all() {
        let filter: Misbehave =
            testing::load(r#"{"onExport": "read-annotations", "onImport": "read-annotations"}"#)
                .unwrap();
        let endpoint = Endpoint::builder()
            .annotation("b", "2")
            .annotation("a", "1")
            .build();
        assert_eq!(
            filter.export(&endpoint),
            ExportDecision::sync(Scope::Global).because("a=1,b=2")
        );
        assert_eq!(endpoint.reads(), ["annotations()"]);
        let bare = Endpoint::builder().build();
        assert_eq!(filter.import(&bare), ImportDecision::keep("<none>"));
    }

    #[test]
    fn abstains_and_traps_per_hook() {
        let filter: Misbehave =
            testing::load(r#"{"onExport": "abstain", "onImport": "trap", "onMiss": "abstain"}"#)
                .unwrap();
        let endpoint = Endpoint::builder().build();
        assert_eq!(filter.export(&endpoint), ExportDecision::Abstain);
        assert_eq!(
            filter.miss(&MissRequest::builder().build()),
            MissDecision::Abstain
        );
        assert!(catch_unwind(AssertUnwindSafe(|| filter.import(&endpoint))).is_err());
    }

    #[test]
    fn conditional_sleep_behaves_without_its_label() {
        let filter: Misbehave = testing::load(
            r#"{"onExport": "sleep-if-label:slow", "onImport": "sleep-if-label:slow"}"#,
        )
        .unwrap();
        let endpoint = Endpoint::builder().label("app", "web").build();
        assert_eq!(
            filter.export(&endpoint),
            ExportDecision::sync(Scope::Global).because("misbehave")
        );
        assert_eq!(filter.import(&endpoint), ImportDecision::keep("misbehave"));
        assert_eq!(endpoint.reads(), ["label(slow)", "label(slow)"]);
    }

    #[test]
    fn oversized_output_modes() {
        let filter: Misbehave = testing::load(
            r#"{"onExport": "huge-reason", "onImport": "huge-log", "onMiss": "grow:3"}"#,
        )
        .unwrap();
        let endpoint = Endpoint::builder().build();
        let ExportDecision::Sync { reason, .. } = filter.export(&endpoint) else {
            panic!("huge-reason syncs");
        };
        assert_eq!(reason.len(), HUGE);
        assert!(reason.chars().all(|c| c == 'é'));
        testing::take_logs();
        assert_eq!(filter.import(&endpoint), ImportDecision::keep("misbehave"));
        let logs = testing::take_logs();
        assert_eq!(logs.len(), 1, "one line through the host log");
        assert_eq!(logs[0].1.len(), HUGE);
        assert_eq!(
            filter.miss(&MissRequest::builder().build()),
            MissDecision::resolve(Vec::<String>::new()).because("misbehave")
        );
        let Err(error) = Misbehave::configure(&Config::new(r#"{"configure": "huge-error"}"#))
        else {
            panic!("huge-error rejects the config");
        };
        assert_eq!(error.len(), HUGE_ERROR);
    }

    #[test]
    fn configure_and_self_test_modes() {
        testing::assert_rejects::<Misbehave>(
            r#"{"configure": "reject"}"#,
            "configure: rejected as configured",
        );
        assert!(catch_unwind(|| testing::load::<Misbehave>(r#"{"configure": "trap"}"#)).is_err());
        testing::assert_rejects::<Misbehave>(
            r#"{"selfTest": "fail"}"#,
            "self-test fails as configured",
        );
        assert!(testing::load::<Misbehave>(r#"{"configure": "ok", "selfTest": "ok"}"#).is_ok());
    }

    #[test]
    fn bad_config_names_the_field() {
        let cases = [
            (
                r#"{"onExport": "explode"}"#,
                r#"onExport: unknown mode "explode""#,
            ),
            (
                r#"{"onMiss": "read-label:"}"#,
                r#"onMiss: unknown mode "read-label:""#,
            ),
            (
                r#"{"onExport": "sleep-if-label:"}"#,
                r#"onExport: unknown mode "sleep-if-label:""#,
            ),
            (
                r#"{"onImport": "grow:0"}"#,
                r#"onImport: "grow:0" wants a positive number of MiB"#,
            ),
            (
                r#"{"configure": "maybe"}"#,
                r#"configure: unknown value "maybe""#,
            ),
            (
                r#"{"selfTest": "flaky"}"#,
                r#"selfTest: unknown value "flaky""#,
            ),
            (
                r#"{"onexport": "trap"}"#,
                "invalid config at onexport: unknown field `onexport`",
            ),
        ];
        for (config, want) in cases {
            testing::assert_rejects::<Misbehave>(config, want);
        }
    }
}
