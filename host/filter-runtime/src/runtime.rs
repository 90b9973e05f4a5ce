//! The runtime: the generation serving decisions, and reloads that replace it atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use meshfilter_api::{RollbackStatus, RolloutStatus};
use parking_lot::Mutex;
use sha2::Digest;

use crate::decision::{ExportDecision, Hook, ImportDecision, MissDecision};
use crate::engine::{EngineConfig, FilterEngine};
use crate::error::LoadError;
use crate::input::{CandidateCluster, EndpointInput, Locality, MissInput};
use crate::instance::{ExportCall, FilterInstance, ImportCall, MissCall};
use crate::manifest::{FilterManifest, MANIFEST_FILE};
use crate::metrics::FilterMetrics;
use crate::module::{LoadedModule, ModuleInfo};
use crate::rollout::{Canaried, Candidate, RollbackCause, RolloutPolicy, SameEffect, failed};
use crate::set::{Chain, FilterGeneration, FilterSet, Verdict};
use crate::truncate::{MAX_ERROR_BYTES, TextKind, truncate};

/// Modules compiled into the binary, with the manifest that runs them.
#[derive(Debug, Clone)]
pub struct BuiltinSet {
    /// `(file name, bytes)` of each module.
    pub modules: Vec<(String, Arc<[u8]>)>,
    /// Which modules run where.
    pub manifest: FilterManifest,
}

/// Where modules and the manifest come from.
#[derive(Debug, Clone)]
pub enum ModuleSource {
    /// A directory holding `filters.yaml` and the modules it names (a mounted ConfigMap).
    Directory(PathBuf),
    /// Modules built into the binary.
    Builtin(BuiltinSet),
}

/// Everything the runtime needs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Engine limits.
    pub engine: EngineConfig,
    /// Module source.
    pub source: ModuleSource,
    /// Required sha256 (hex) per module file name; a module that differs is refused.
    pub pins: BTreeMap<String, String>,
    /// This host's cluster, zone and region.
    pub local: Locality,
}

/// Status of the serving generation, for `meshfilter status` and the CLI.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationInfo {
    /// Generation number.
    pub generation: u64,
    /// When it went live (seconds since the Unix epoch).
    pub loaded_at_unix: u64,
    /// Modules it runs.
    pub modules: Vec<ModuleInfo>,
    /// Chain of each hook.
    pub chains: BTreeMap<Hook, Vec<String>>,
    /// The error of the last failed reload, if the last reload failed.
    pub last_reload_error: Option<String>,
    /// Canary rollout: the stable generation, the candidate, the last rollback.
    pub rollout: RolloutStatus,
}

/// Serves decisions from the current filter generation and reloads it.
pub struct FilterRuntime {
    engine: Arc<FilterEngine>,
    source: ModuleSource,
    pins: BTreeMap<String, String>,
    local: Arc<Locality>,
    metrics: FilterMetrics,
    /// The stable generation: decides everything outside a candidate's share.
    current: ArcSwap<FilterGeneration>,
    /// A new generation on probation, when a rollout policy is set.
    candidate: ArcSwapOption<Candidate>,
    rollout: ArcSwapOption<RolloutPolicy>,
    /// Fingerprint of the last generation rolled back: not loaded again until the files
    /// change.
    rejected: Mutex<Option<[u8; 32]>>,
    last_rollback: Mutex<Option<RollbackStatus>>,
    promotions: AtomicU64,
    /// The highest generation number given out: numbers are never reused, not even
    /// after a rollback.
    numbered: AtomicU64,
    loaded: Mutex<HashMap<[u8; 32], Arc<LoadedModule>>>,
    /// Held by reloads, promotions and rollbacks: one change of generations at a time.
    reloading: Mutex<()>,
    last_error: Mutex<Option<String>>,
    generations: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for FilterRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterRuntime")
            .field("generation", &self.current().number)
            .finish_non_exhaustive()
    }
}

impl FilterRuntime {
    /// Builds the engine and loads the first generation. Unlike a reload, a failure here
    /// is fatal: there is nothing to keep serving.
    pub fn new(
        config: RuntimeConfig,
        metrics: FilterMetrics,
    ) -> Result<Arc<FilterRuntime>, LoadError> {
        let engine = FilterEngine::new(config.engine)?;
        FilterRuntime::with_engine(engine, config.source, config.pins, config.local, metrics)
    }

    /// Like [`FilterRuntime::new`] on an existing engine, so several runtimes (one per
    /// cluster in a local demo, say) share compiled modules and one epoch thread.
    pub fn with_engine(
        engine: Arc<FilterEngine>,
        source: ModuleSource,
        pins: BTreeMap<String, String>,
        local: Locality,
        metrics: FilterMetrics,
    ) -> Result<Arc<FilterRuntime>, LoadError> {
        let local = Arc::new(local);
        let (generations, _) = tokio::sync::watch::channel(0);
        let mut loaded = HashMap::new();
        let first = build_generation(&engine, &source, &pins, &local, &metrics, None, &mut loaded)
            .map_err(|e| bounded(e, &metrics))?
            .expect("a first load always builds a generation");
        let first_number = first.number;
        metrics.set_generation(first_number);
        metrics.reload("loaded");
        tracing::info!(generation = first.number, modules = ?first.modules.iter().map(|m| &m.file).collect::<Vec<_>>(),
            "filter generation loaded");
        Ok(Arc::new(FilterRuntime {
            engine,
            source,
            pins,
            local,
            metrics,
            current: ArcSwap::from_pointee(first),
            candidate: ArcSwapOption::empty(),
            rollout: ArcSwapOption::empty(),
            rejected: Mutex::new(None),
            last_rollback: Mutex::new(None),
            promotions: AtomicU64::new(0),
            numbered: AtomicU64::new(first_number),
            loaded: Mutex::new(loaded),
            reloading: Mutex::new(()),
            last_error: Mutex::new(None),
            generations,
        }))
    }

    /// The stable generation. Holding it keeps it alive: a caller that loads it once for
    /// a batch of decisions sees one consistent filter set even across a reload (a
    /// candidate on probation is not part of it: it decides only through the
    /// `decide_*` methods of the runtime).
    pub fn current(&self) -> Arc<FilterGeneration> {
        self.current.load_full()
    }

    /// The engine (for tools that load single modules, such as `filter check`).
    pub fn engine(&self) -> &Arc<FilterEngine> {
        &self.engine
    }

    /// This host's locality.
    pub fn local(&self) -> &Locality {
        &self.local
    }

    /// Rolls new generations out through a canary under `policy` (`None`: a new
    /// generation decides everything as soon as it is loaded). Checked by the caller
    /// ([`RolloutPolicy::validate`]).
    pub fn set_rollout(&self, policy: Option<RolloutPolicy>) {
        self.rollout.store(policy.map(Arc::new));
    }

    /// Source-side decision: the candidate's for its share of endpoints, the stable
    /// generation's for the rest.
    pub fn decide_export(
        &self,
        endpoint: &Arc<EndpointInput>,
        previous: Option<&ExportDecision>,
    ) -> Verdict<ExportDecision> {
        self.decide(&**endpoint, |g| g.decide_export(endpoint, previous))
    }

    /// Consumer-side decision, as [`FilterRuntime::decide_export`].
    pub fn decide_import(
        &self,
        endpoint: &Arc<EndpointInput>,
        previous: Option<&ImportDecision>,
    ) -> Verdict<ImportDecision> {
        self.decide(&**endpoint, |g| g.decide_import(endpoint, previous))
    }

    /// Node-side decision, as [`FilterRuntime::decide_export`].
    pub fn decide_miss(&self, request: &Arc<MissInput>) -> Verdict<MissDecision> {
        self.decide(&**request, |g| g.decide_miss(request))
    }

    /// Decides with the stable generation, or with the candidate when the input falls
    /// in its share; then the stable generation decides too, so the candidate's failures
    /// and changed decisions are counted, and acted on, as they happen.
    fn decide<I: Canaried + ?Sized, D: SameEffect>(
        &self,
        input: &I,
        decide: impl Fn(&FilterGeneration) -> Verdict<D>,
    ) -> Verdict<D> {
        let candidate = self.candidate.load();
        let (Some(candidate), Some(policy)) = (candidate.as_ref(), self.rollout.load_full()) else {
            return decide(&self.current.load());
        };
        if candidate.due(&policy) {
            self.promote(candidate);
            return decide(&self.current.load());
        }
        if !candidate.covers(input) {
            return decide(&self.current.load());
        }
        let mine = decide(&candidate.generation);
        let stable = decide(&self.current.load());
        let did_fail = failed(&mine.decided_by);
        let changed = !mine.decision.same_effect(&stable.decision);
        self.metrics.canary_decision(match (did_fail, changed) {
            (true, _) => "failed",
            (false, true) => "changed",
            (false, false) => "same",
        });
        match candidate.record(did_fail, changed, &policy) {
            Some(cause) => {
                self.roll_back(candidate, cause);
                stable
            }
            None => mine,
        }
    }

    /// Promotes a candidate that stayed within its bounds for its probation time. The
    /// decision path calls it lazily; [`FilterRuntime::poll_rollout`] calls it when no
    /// decisions come.
    fn promote(&self, candidate: &Arc<Candidate>) {
        let _one_at_a_time = self.reloading.lock();
        if !self.is_candidate(candidate) {
            return;
        }
        let number = candidate.generation.number;
        self.current.store(candidate.generation.clone());
        self.candidate.store(None);
        self.promotions.fetch_add(1, Ordering::Relaxed);
        self.metrics.promoted(number);
        tracing::info!(generation = number, "canary generation promoted to stable");
        self.retain_loaded();
        self.generations.send_replace(number);
    }

    fn roll_back(&self, candidate: &Arc<Candidate>, cause: RollbackCause) {
        let _one_at_a_time = self.reloading.lock();
        if !self.is_candidate(candidate) {
            return;
        }
        self.candidate.store(None);
        let status = candidate.rollback_status(cause);
        tracing::error!(generation = status.generation, cause = cause.as_str(), reason = %status.reason,
            "canary generation rolled back; the stable generation decides everything again");
        *self.rejected.lock() = Some(candidate.generation.fingerprint);
        *self.last_rollback.lock() = Some(status);
        let stable = self.current.load().number;
        self.metrics.rolled_back(cause.as_str(), stable);
        self.retain_loaded();
        self.generations.send_replace(stable);
    }

    /// Whether `candidate` is still the one on probation (another thread may have
    /// promoted or rolled it back, or a reload replaced it).
    fn is_candidate(&self, candidate: &Arc<Candidate>) -> bool {
        self.candidate
            .load()
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, candidate))
    }

    /// Promotes a candidate whose probation ended although no decision came to do it.
    pub fn poll_rollout(&self) {
        let candidate = self.candidate.load_full();
        if let (Some(candidate), Some(policy)) = (candidate, self.rollout.load_full())
            && candidate.due(&policy)
        {
            self.promote(&candidate);
        }
    }

    /// Keeps only the compiled modules the stable generation and the candidate use.
    fn retain_loaded(&self) {
        let stable = self.current.load_full();
        let candidate = self.candidate.load_full();
        self.loaded.lock().retain(|_, m| {
            std::iter::once(&*stable)
                .chain(candidate.as_ref().map(|c| &*c.generation))
                .any(|g| g.modules.iter().any(|i| i.sha256 == m.info.sha256))
        });
    }

    /// Notified with the new generation number after every successful reload, so owners
    /// of decided state (the sync pipeline) can re-decide it.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generations.subscribe()
    }

    /// Reloads from the source. `Ok(None)` when nothing changed. On error the serving
    /// generation stays as it was.
    pub fn reload(&self) -> Result<Option<u64>, LoadError> {
        let _one_at_a_time = self.reloading.lock();
        let stable = self.current();
        let candidate = self.candidate.load_full();
        // The newest generation, whether on probation or not, is what a reload compares
        // with and numbers after.
        let newest = candidate
            .as_ref()
            .map_or_else(|| stable.clone(), |c| c.generation.clone());
        let mut loaded = self.loaded.lock().clone();
        let result = build_generation(
            &self.engine,
            &self.source,
            &self.pins,
            &self.local,
            &self.metrics,
            Some(&newest),
            &mut loaded,
        );
        match result {
            Ok(None) => Ok(None),
            Ok(Some(next)) if *self.rejected.lock() == Some(next.fingerprint) => {
                tracing::debug!(
                    "the filters are those of the generation rolled back; not loading them again"
                );
                Ok(None)
            }
            Ok(Some(mut next)) => {
                next.number = self.numbered.fetch_add(1, Ordering::Relaxed) + 1;
                let number = next.number;
                *self.loaded.lock() = loaded;
                *self.last_error.lock() = None;
                self.metrics.reload("loaded");
                match self.rollout.load_full() {
                    Some(_) if next.fingerprint == stable.fingerprint => {
                        tracing::info!(
                            stable = stable.number,
                            "the filters are back to the stable generation's; canary ended"
                        );
                        self.candidate.store(None);
                        self.retain_loaded();
                        self.generations.send_replace(stable.number);
                        return Ok(Some(stable.number));
                    }
                    Some(policy) => {
                        tracing::info!(generation = number, stable = stable.number, canary_percent = policy.canary_percent,
                            modules = ?next.modules.iter().map(|m| format!("{}@{}", m.file, &m.sha256[..12])).collect::<Vec<_>>(),
                            "filter generation loaded as canary");
                        self.candidate
                            .store(Some(Arc::new(Candidate::new(Arc::new(next), &policy))));
                        self.metrics.set_candidate(number);
                    }
                    None => {
                        tracing::info!(generation = number, previous = stable.number,
                            modules = ?next.modules.iter().map(|m| format!("{}@{}", m.file, &m.sha256[..12])).collect::<Vec<_>>(),
                            "filter generation swapped in");
                        self.current.store(Arc::new(next));
                        self.metrics.set_generation(number);
                    }
                }
                // Keep only artifacts the live generations use, so replaced modules are
                // freed.
                self.retain_loaded();
                self.generations.send_replace(number);
                Ok(Some(number))
            }
            Err(e) => {
                let e = bounded(e, &self.metrics);
                tracing::error!(error = %e, serving = newest.number, "filter reload failed; the serving generation stays");
                *self.last_error.lock() =
                    Some(truncate(&e.to_string(), MAX_ERROR_BYTES).into_owned());
                self.metrics.reload("failed");
                Err(e)
            }
        }
    }

    /// Where modules come from.
    pub(crate) fn source(&self) -> &ModuleSource {
        &self.source
    }

    /// What is serving, for status output.
    pub fn info(&self) -> GenerationInfo {
        let g = self.current();
        GenerationInfo {
            generation: g.number,
            loaded_at_unix: g
                .loaded_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            modules: g.modules.clone(),
            chains: Hook::ALL.into_iter().map(|h| (h, g.chain(h))).collect(),
            last_reload_error: self.last_error.lock().clone(),
            rollout: crate::rollout::status(
                self.rollout.load().as_deref(),
                &g,
                self.candidate.load().as_deref(),
                self.last_rollback.lock().clone(),
                self.promotions.load(Ordering::Relaxed),
            ),
        }
    }
}

/// Reads the manifest and modules, loads what changed, reuses instances whose module and
/// config did not change, and probes new ones. `None` when the fingerprint is unchanged.
fn build_generation(
    engine: &Arc<FilterEngine>,
    source: &ModuleSource,
    pins: &BTreeMap<String, String>,
    local: &Arc<Locality>,
    metrics: &FilterMetrics,
    current: Option<&FilterGeneration>,
    loaded: &mut HashMap<[u8; 32], Arc<LoadedModule>>,
) -> Result<Option<FilterGeneration>, LoadError> {
    let (manifest, manifest_bytes) = read_manifest(source)?;
    let mut fingerprint = sha2::Sha256::new();
    fingerprint.update(&manifest_bytes);
    let mut modules: BTreeMap<String, Arc<LoadedModule>> = BTreeMap::new();
    for hook in Hook::ALL {
        for entry in &manifest.hook(hook).chain {
            if modules.contains_key(&entry.module) {
                continue;
            }
            let bytes = read_module(source, &entry.module)?;
            let digest = crate::engine::sha2_digest(&bytes);
            let module = match loaded.get(&digest) {
                // Same bytes as a module loaded before: its checks passed; pins are by
                // content, so only the pin needs rechecking for a new file name.
                Some(m)
                    if pin_ok(pins, &entry.module, &m.info.sha256)
                        && m.info.file == entry.module =>
                {
                    m.clone()
                }
                _ => {
                    let m = LoadedModule::load(
                        engine,
                        &entry.module,
                        &bytes,
                        pins.get(&entry.module).map(String::as_str),
                    )?;
                    loaded.insert(digest, m.clone());
                    m
                }
            };
            modules.insert(entry.module.clone(), module);
        }
    }
    for (file, module) in &modules {
        fingerprint.update(file.as_bytes());
        fingerprint.update(module.digest);
    }
    let fingerprint: [u8; 32] = fingerprint.finalize().into();
    if current.is_some_and(|c| c.fingerprint == fingerprint) {
        return Ok(None);
    }
    let reusable: Vec<Arc<FilterInstance>> = current
        .map(|c| {
            [&c.set.export, &c.set.import, &c.set.miss]
                .into_iter()
                .flat_map(|ch| ch.entries.iter().cloned())
                .collect()
        })
        .unwrap_or_default();
    let mut built: Vec<Arc<FilterInstance>> = Vec::new();
    let mut chains = Vec::new();
    for hook in Hook::ALL {
        let hm = manifest.hook(hook);
        let mut entries = Vec::new();
        for entry in &hm.chain {
            let module = &modules[&entry.module];
            let config_json = entry.config.to_string();
            let same = |i: &&Arc<FilterInstance>| {
                i.module.digest == module.digest
                    && i.config_json == config_json
                    && i.memoize == entry.memoize
            };
            let instance = match reusable
                .iter()
                .find(same)
                .or_else(|| built.iter().find(same))
            {
                Some(i) => i.clone(),
                None => {
                    let i = Arc::new(FilterInstance::new(
                        engine.clone(),
                        module.clone(),
                        config_json,
                        entry.memoize,
                        local.clone(),
                        metrics.clone(),
                    )?);
                    built.push(i.clone());
                    i
                }
            };
            probe(hook, &instance)?;
            entries.push(instance);
        }
        chains.push(Chain {
            entries,
            on_failure: hm.on_failure,
            otherwise: hm.otherwise,
        });
    }
    let [export, import, miss]: [Chain; 3] = chains.try_into().ok().expect("three hooks");
    Ok(Some(FilterGeneration {
        number: current.map_or(1, |c| c.number + 1),
        loaded_at: SystemTime::now(),
        modules: modules.values().map(|m| m.info.clone()).collect(),
        fingerprint,
        set: FilterSet {
            export,
            import,
            miss,
        },
    }))
}

/// `e` with its free-text fields cut to [`MAX_ERROR_BYTES`], a cut counted: whatever a
/// module makes a load fail with, the error the runtime returns, logs and keeps for
/// status stays small.
fn bounded(mut e: LoadError, metrics: &FilterMetrics) -> LoadError {
    if e.bound() {
        metrics.truncated(e.module().unwrap_or(""), TextKind::Error.as_str());
    }
    e
}

fn pin_ok(pins: &BTreeMap<String, String>, file: &str, sha256: &str) -> bool {
    pins.get(file)
        .is_none_or(|p| p.eq_ignore_ascii_case(sha256))
}

/// One call of the hook the instance serves, on a synthetic input, before it goes live: a
/// module that traps, loops or blows its memory on an ordinary input never serves.
fn probe(hook: Hook, instance: &FilterInstance) -> Result<(), LoadError> {
    let endpoint = || {
        Arc::new(EndpointInput {
            namespace: "meshfilter-probe".into(),
            pod_name: "probe".into(),
            ip: "192.0.2.1".into(),
            node_ip: Some("192.0.2.254".into()),
            identity: 65_535,
            origin: Locality::cluster("meshfilter-probe"),
            ..Default::default()
        })
    };
    let result = match hook {
        Hook::Export => instance.call::<ExportCall>(&endpoint()).map(drop),
        Hook::Import => instance.call::<ImportCall>(&endpoint()).map(drop),
        Hook::Miss => instance
            .call::<MissCall>(&Arc::new(MissInput {
                address: "192.0.2.1".into(),
                covering_prefix: Some("192.0.2.0/24".into()),
                tunnel_endpoint: Some("192.0.2.254".into()),
                local_node: "probe".into(),
                candidates: vec![CandidateCluster {
                    locality: Locality::cluster("meshfilter-probe"),
                    owns_prefix: true,
                }],
            }))
            .map(drop),
    };
    result.map_err(|failure| LoadError::SelfTest {
        module: instance.file().to_string(),
        message: instance.error_text(&format!("probe call of the {hook} hook failed: {failure}")),
    })
}

fn read_manifest(source: &ModuleSource) -> Result<(FilterManifest, Vec<u8>), LoadError> {
    match source {
        ModuleSource::Builtin(set) => {
            let text = format!("{:?}", set.manifest);
            Ok((set.manifest.clone(), text.into_bytes()))
        }
        ModuleSource::Directory(dir) => {
            let path = dir.join(MANIFEST_FILE);
            let bytes = std::fs::read(&path).map_err(|source| LoadError::Read {
                path: path.clone(),
                error: source,
            })?;
            let text = String::from_utf8(bytes.clone()).map_err(|_| LoadError::Manifest {
                path: path.clone(),
                message: "not UTF-8".into(),
            })?;
            Ok((FilterManifest::parse(&path, &text)?, bytes))
        }
    }
}

fn read_module(source: &ModuleSource, file: &str) -> Result<Vec<u8>, LoadError> {
    match source {
        ModuleSource::Builtin(set) => set
            .modules
            .iter()
            .find(|(name, _)| name == file)
            .map(|(_, b)| b.to_vec())
            .ok_or_else(|| LoadError::Read {
                path: Path::new(file).to_path_buf(),
                error: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no builtin module of that name",
                ),
            }),
        ModuleSource::Directory(dir) => {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|error| LoadError::Read { path, error })
        }
    }
}
