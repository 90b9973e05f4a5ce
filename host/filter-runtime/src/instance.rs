//! A filter instance: one module with one config, its warm stores and its memos.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use wasmtime::Store;

use crate::bindings::current as wit;
use crate::decision::{ExportDecision, Hook, ImportDecision, MissDecision, SyncScope};
use crate::engine::FilterEngine;
use crate::error::{CallFailure, LoadError};
use crate::host_side::FilterBindings;
use crate::host_state::HostState;
use crate::input::{EndpointInput, Locality, MissInput};
use crate::memo::{Insert, Memo, Readable};
use crate::memory::MemoryRefused;
use crate::metrics::FilterMetrics;
use crate::module::LoadedModule;
use crate::store::{GuestLog, StoreLimitsConfig, StoreState};
use crate::truncate::{TextKind, bound};
use crate::wasi::BlockingCall;

/// A live instance: a store and the bindings into it.
pub(crate) struct Warm {
    store: Store<HostState>,
    bindings: FilterBindings,
}

/// Largest number of decision paths remembered per instance and hook.
const MEMO_LIMIT: usize = 1 << 20;

/// One chain entry made live: module, config, warm stores and memoised decisions.
pub(crate) struct FilterInstance {
    pub(crate) module: Arc<LoadedModule>,
    /// Module file name, shared with every verdict that names it.
    pub(crate) file: Arc<str>,
    pub(crate) config_json: String,
    pub(crate) memoize: bool,
    engine: Arc<FilterEngine>,
    local: Arc<Locality>,
    log: Arc<GuestLog>,
    metrics: FilterMetrics,
    warm: Mutex<Vec<Warm>>,
    max_warm: usize,
    memo_broken: AtomicBool,
    guest_calls: [AtomicU64; 3],
    /// Prometheus counters per hook: (guest calls, memo hits).
    counters: [(
        prometheus_client::metrics::counter::Counter,
        prometheus_client::metrics::counter::Counter,
    ); 3],
    export_memo: Memo<Option<ExportDecision>>,
    import_memo: Memo<Option<ImportDecision>>,
    miss_memo: Memo<Option<MissDecision>>,
}

/// A hook's call convention, so one code path serves all three.
pub(crate) trait HookCall {
    type Input: Readable + Send + Sync + 'static;
    type Decision: Clone + Send + Sync + 'static;
    const HOOK: Hook;
    fn memo(instance: &FilterInstance) -> &Memo<Option<Self::Decision>>;
    /// Runs the hook in `warm`; reasons pass through [`FilterInstance::reason`].
    fn invoke(
        instance: &FilterInstance,
        warm: &mut Warm,
        input: &Arc<Self::Input>,
    ) -> wasmtime::Result<Option<Self::Decision>>;
}

pub(crate) struct ExportCall;
pub(crate) struct ImportCall;
pub(crate) struct MissCall;

fn scope_from_wit(scope: wit::Scope) -> SyncScope {
    match scope {
        wit::Scope::Cluster => SyncScope::Cluster,
        wit::Scope::Zone => SyncScope::Zone,
        wit::Scope::Region => SyncScope::Region,
        wit::Scope::Global => SyncScope::Global,
        wit::Scope::Regions(r) => SyncScope::Regions(r),
    }
}

impl HookCall for ExportCall {
    type Input = EndpointInput;
    type Decision = ExportDecision;
    const HOOK: Hook = Hook::Export;
    fn memo(instance: &FilterInstance) -> &Memo<Option<ExportDecision>> {
        &instance.export_memo
    }
    fn invoke(
        instance: &FilterInstance,
        warm: &mut Warm,
        input: &Arc<EndpointInput>,
    ) -> wasmtime::Result<Option<ExportDecision>> {
        let handle = warm.store.data_mut().set_endpoint(input.clone())?;
        let result = warm.bindings.on_export(&mut warm.store, handle);
        warm.store.data_mut().clear_inputs();
        Ok(match result? {
            wit::ExportDecision::Abstain => None,
            wit::ExportDecision::Skip(reason) => Some(ExportDecision::Skip {
                reason: instance.reason(&reason),
            }),
            wit::ExportDecision::Sync(s) => Some(ExportDecision::Sync {
                scope: scope_from_wit(s.scope),
                reason: instance.reason(&s.reason),
            }),
        })
    }
}

impl HookCall for ImportCall {
    type Input = EndpointInput;
    type Decision = ImportDecision;
    const HOOK: Hook = Hook::Import;
    fn memo(instance: &FilterInstance) -> &Memo<Option<ImportDecision>> {
        &instance.import_memo
    }
    fn invoke(
        instance: &FilterInstance,
        warm: &mut Warm,
        input: &Arc<EndpointInput>,
    ) -> wasmtime::Result<Option<ImportDecision>> {
        let handle = warm.store.data_mut().set_endpoint(input.clone())?;
        let result = warm.bindings.on_import(&mut warm.store, handle);
        warm.store.data_mut().clear_inputs();
        Ok(match result? {
            wit::ImportDecision::Abstain => None,
            wit::ImportDecision::Keep(reason) => Some(ImportDecision::Keep {
                reason: instance.reason(&reason),
            }),
            wit::ImportDecision::Skip(reason) => Some(ImportDecision::Skip {
                reason: instance.reason(&reason),
            }),
        })
    }
}

impl HookCall for MissCall {
    type Input = MissInput;
    type Decision = MissDecision;
    const HOOK: Hook = Hook::Miss;
    fn memo(instance: &FilterInstance) -> &Memo<Option<MissDecision>> {
        &instance.miss_memo
    }
    fn invoke(
        instance: &FilterInstance,
        warm: &mut Warm,
        input: &Arc<MissInput>,
    ) -> wasmtime::Result<Option<MissDecision>> {
        let handle = warm.store.data_mut().set_miss(input.clone())?;
        let result = warm.bindings.on_miss(&mut warm.store, handle);
        warm.store.data_mut().clear_inputs();
        Ok(match result? {
            wit::MissDecision::Abstain => None,
            wit::MissDecision::Ignore(i) => Some(MissDecision::Ignore {
                ttl: Duration::from_millis(u64::from(i.ttl_ms)),
                reason: instance.reason(&i.reason),
            }),
            wit::MissDecision::Resolve(r) => Some(MissDecision::Resolve {
                clusters: r.clusters,
                reason: instance.reason(&r.reason),
            }),
        })
    }
}

/// Result of one instance call.
pub(crate) struct Called<D> {
    /// The decision, `None` for abstain.
    pub(crate) decision: Option<D>,
    pub(crate) memo_hit: bool,
}

impl FilterInstance {
    /// Creates the instance: instantiates it once, configures it and runs its self-test,
    /// so a module that cannot serve is refused before it goes live.
    pub(crate) fn new(
        engine: Arc<FilterEngine>,
        module: Arc<LoadedModule>,
        config_json: String,
        memoize: bool,
        local: Arc<Locality>,
        metrics: FilterMetrics,
    ) -> Result<FilterInstance, LoadError> {
        // Everything said while configuring and self-testing (guest log lines included)
        // carries the module.
        let _module = tracing::info_span!("module", module = %module.info.file, sha256 = %&module.info.sha256[..12]).entered();
        let log = Arc::new(GuestLog::new(
            module.info.file.as_str().into(),
            engine.config.log_lines_per_second,
            metrics.clone(),
        ));
        let max_warm = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(2);
        let file: Arc<str> = module.info.file.as_str().into();
        let counters = Hook::ALL.map(|h| metrics.call_counters(&file, h.as_str()));
        let instance = FilterInstance {
            module,
            file,
            counters,
            config_json,
            memoize,
            engine,
            local,
            log,
            metrics,
            warm: Mutex::new(Vec::new()),
            max_warm,
            memo_broken: AtomicBool::new(false),
            guest_calls: Default::default(),
            export_memo: Memo::new(MEMO_LIMIT),
            import_memo: Memo::new(MEMO_LIMIT),
            miss_memo: Memo::new(MEMO_LIMIT),
        };
        let mut warm = instance.instantiate().map_err(|e| match e {
            SetupError::Rejected(message) => LoadError::ConfigRejected {
                module: instance.file().to_string(),
                message: instance.error_text(&message),
            },
            SetupError::Failed(e) => LoadError::Link {
                module: instance.file().to_string(),
                step: "instantiate",
                reason: instance.error_text(&format!("{e:#}")),
            },
        })?;
        warm.store
            .set_epoch_deadline(instance.engine.ticks(instance.engine.config.setup_timeout));
        warm.store.data_mut().start_call();
        let self_test = warm.bindings.self_test(&mut warm.store);
        match self_test {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(LoadError::SelfTest {
                    module: instance.file().to_string(),
                    message: instance.error_text(&message),
                });
            }
            Err(e) => {
                let panic = warm.store.data().panic_message();
                return Err(LoadError::SelfTest {
                    module: instance.file().to_string(),
                    message: instance.error_text(&with_panic(panic.as_deref(), &e)),
                });
            }
        }
        instance.warm.lock().push(warm);
        Ok(instance)
    }

    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    /// Number of memoised decision paths for a hook.
    pub(crate) fn memo_len(&self, hook: Hook) -> usize {
        match hook {
            Hook::Export => self.export_memo.len(),
            Hook::Import => self.import_memo.len(),
            Hook::Miss => self.miss_memo.len(),
        }
    }

    /// Times a hook ran the module (memo hits excluded).
    pub(crate) fn guest_calls(&self, hook: Hook) -> u64 {
        self.guest_calls[hook as usize].load(Ordering::Relaxed)
    }

    fn instantiate(&self) -> Result<Warm, SetupError> {
        let limits = StoreLimitsConfig {
            memory_bytes: self.engine.config.memory_bytes,
            log_lines_per_second: self.engine.config.log_lines_per_second,
        };
        let state = HostState::new(StoreState::new(
            &limits,
            self.engine.memory_budget.clone(),
            self.local.clone(),
            self.log.clone(),
        ));
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.store.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.engine.ticks(self.engine.config.setup_timeout));
        let bindings = self
            .module
            .pre
            .instantiate(&mut store)
            .map_err(SetupError::Failed)?;
        match bindings.configure(&mut store, &self.config_json) {
            Ok(Ok(())) => Ok(Warm { store, bindings }),
            Ok(Err(message)) => Err(SetupError::Rejected(message)),
            Err(e) => {
                let context = match store.data().panic_message() {
                    Some(panic) => format!("configure trapped: {panic}"),
                    None => "configure trapped".to_string(),
                };
                Err(SetupError::Failed(e.context(context)))
            }
        }
    }

    /// Makes one decision: from the memo when the inputs the module reads were seen
    /// before, else by running the module in a warm store.
    pub(crate) fn call<H: HookCall>(
        &self,
        input: &Arc<H::Input>,
    ) -> Result<Called<H::Decision>, CallFailure> {
        let memoize = self.memoize && !self.memo_broken.load(Ordering::Relaxed);
        if memoize && let Some(decision) = H::memo(self).lookup(&**input, &self.local) {
            self.counters[H::HOOK as usize].1.inc();
            return Ok(Called {
                decision,
                memo_hit: true,
            });
        }
        // A span per guest call, not per memo hit: the hot path stays a lookup.
        let _module =
            tracing::debug_span!("module", module = %self.file, hook = %H::HOOK).entered();
        let popped = self.warm.lock().pop();
        let mut warm = match popped {
            Some(w) => w,
            None => match self.instantiate() {
                Ok(w) => w,
                Err(e) => return Err(self.failed::<H>(self.setup_failure(e))),
            },
        };
        self.counters[H::HOOK as usize].0.inc();
        self.guest_calls[H::HOOK as usize].fetch_add(1, Ordering::Relaxed);
        warm.store.data_mut().start_call();
        warm.store.data_mut().store.reads.start(memoize);
        warm.store
            .set_epoch_deadline(self.engine.ticks(self.engine.config.call_timeout));
        match H::invoke(self, &mut warm, input) {
            Ok(decision) => {
                if memoize
                    && H::memo(self).insert(&warm.store.data().store.reads, decision.clone())
                        == Insert::Conflict
                {
                    self.memo_broken.store(true, Ordering::Relaxed);
                    tracing::warn!(module = %self.file(), hook = %H::HOOK,
                        "module read different inputs for the same values: it is not deterministic; memoisation off for it");
                }
                let mut pool = self.warm.lock();
                if pool.len() < self.max_warm {
                    pool.push(warm);
                }
                Ok(Called {
                    decision,
                    memo_hit: false,
                })
            }
            Err(e) => {
                // The store may be in any state after a trap: drop it (after reading the
                // panic message the module left); the next call gets a fresh instance.
                let panic = warm.store.data().panic_message();
                drop(warm);
                Err(self.failed::<H>(self.classify(e, panic)))
            }
        }
    }

    /// Counts `failure` against this module and hook.
    fn failed<H: HookCall>(&self, failure: CallFailure) -> CallFailure {
        self.metrics
            .failure(self.file(), H::HOOK.as_str(), failure.kind());
        failure
    }

    /// Why a fresh instance for a call could not be made. Memory refused by a limit (the
    /// budget may be spent by other instances) and blocking calls keep their kind.
    fn setup_failure(&self, e: SetupError) -> CallFailure {
        let message = match e {
            SetupError::Failed(e) if e.is::<MemoryRefused>() || e.is::<BlockingCall>() => {
                return self.classify(e, None);
            }
            SetupError::Failed(e) => format!("{e:#}"),
            SetupError::Rejected(m) => format!("configure rejected the config: {m}"),
        };
        CallFailure::Instantiate {
            module: self.file().to_string(),
            message: self.error_text(&message),
        }
    }

    /// What a failed call was, by the type of its error, with the panic message the
    /// module left (if any) before the trap; messages are bounded.
    fn classify(&self, e: wasmtime::Error, panic: Option<String>) -> CallFailure {
        let module = self.file().to_string();
        if let Some(wasmtime::Trap::Interrupt) = e.downcast_ref::<wasmtime::Trap>() {
            return CallFailure::Timeout {
                module,
                deadline_ms: self.engine.config.call_timeout.as_millis() as u64,
            };
        }
        if let Some(blocking) = e.downcast_ref::<BlockingCall>() {
            return CallFailure::Blocked {
                module,
                function: blocking.function.to_string(),
            };
        }
        if let Some(refused) = e.downcast_ref::<MemoryRefused>() {
            return CallFailure::OutOfMemory {
                module,
                message: refused.to_string(),
            };
        }
        CallFailure::Trap {
            module,
            message: self.error_text(&with_panic(panic.as_deref(), &e)),
        }
    }

    /// A decision reason as the host keeps it: at most
    /// [`MAX_REASON_BYTES`](crate::MAX_REASON_BYTES), a cut counted.
    pub(crate) fn reason(&self, reason: &str) -> Arc<str> {
        bound(reason, TextKind::Reason, self.file(), &self.metrics).into()
    }

    /// An error message from or about this module as the host keeps it: at most
    /// [`MAX_ERROR_BYTES`](crate::MAX_ERROR_BYTES), a cut counted.
    pub(crate) fn error_text(&self, message: &str) -> String {
        bound(message, TextKind::Error, self.file(), &self.metrics).into_owned()
    }
}

/// A trap as the host reports it: the module's panic message first, when it left one,
/// then wasmtime's account of the trap.
fn with_panic(panic: Option<&str>, e: &wasmtime::Error) -> String {
    match panic {
        Some(panic) => format!("{panic}; {e:#}"),
        None => format!("{e:#}"),
    }
}

/// Why instantiating and configuring a store failed.
enum SetupError {
    /// `configure` returned this error.
    Rejected(String),
    /// Instantiation or `configure` trapped.
    Failed(wasmtime::Error),
}
