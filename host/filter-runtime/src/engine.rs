//! The wasmtime engine shared by every module: configuration, the epoch ticker that
//! enforces call deadlines, the linker, and the compiled-artifact caches.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use crate::error::LoadError;
use crate::host_state::HostState;
use crate::memory::MemoryBudget;

/// Engine-wide limits and knobs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Deadline of one decision call.
    pub call_timeout: Duration,
    /// Deadline of `configure` and `self-test`, which may do one-time work.
    pub setup_timeout: Duration,
    /// Granularity of deadlines: how often the epoch advances.
    pub epoch_tick: Duration,
    /// Linear memory one store (one warm instance) may grow to.
    pub memory_bytes: usize,
    /// Linear memory all live stores of this engine may hold together, across modules,
    /// hooks, warm pools and generations. Growth past it fails the call as out of memory
    /// instead of growing the process. The default, 512 MiB, holds eight instances at
    /// their full `memory_bytes` while typical filters use a few MiB each.
    pub memory_budget_bytes: usize,
    /// Wasm stack limit.
    pub max_wasm_stack: usize,
    /// Concurrent component instances the pooling allocator reserves slots for.
    pub max_instances: u32,
    /// Guest log lines per second per module.
    pub log_lines_per_second: u32,
    /// Largest module accepted, by default the 1 MiB Kubernetes ConfigMap limit.
    pub max_module_bytes: usize,
    /// Directory for compiled artifacts the host writes and later reuses.
    pub disk_cache: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            call_timeout: Duration::from_millis(50),
            setup_timeout: Duration::from_secs(2),
            epoch_tick: Duration::from_millis(1),
            memory_bytes: 64 << 20,
            memory_budget_bytes: 512 << 20,
            max_wasm_stack: 512 << 10,
            max_instances: 128,
            log_lines_per_second: 20,
            max_module_bytes: meshfilter_contract::MAX_MODULE_BYTES,
            disk_cache: None,
        }
    }
}

/// Advances the engine's epoch until dropped.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Result<EpochTicker, LoadError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("meshfilter-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .map_err(|e| LoadError::Setup(format!("cannot start the epoch thread: {e}")))?;
        Ok(EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The engine, linker and caches. One per process.
pub struct FilterEngine {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: EngineConfig,
    pub(crate) memory_budget: Arc<MemoryBudget>,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for FilterEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FilterEngine {
    /// Builds the engine. Fails only if the platform refuses the configuration.
    pub fn new(config: EngineConfig) -> Result<Arc<FilterEngine>, LoadError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .max_memory_size(config.memory_bytes);
        let mut wasm = Config::new();
        // Component-model async is off by construction: wasmtime is built without its
        // `component-model-async` feature, so no guest can suspend a host call.
        wasm.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .cranelift_opt_level(OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine =
            Engine::new(&wasm).map_err(|e| LoadError::Setup(format!("wasmtime engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        crate::wasi::add_to_linker(&mut linker)
            .map_err(|e| LoadError::Setup(format!("linking WASI: {e:#}")))?;
        crate::host_side::add_to_linker(&mut linker)
            .map_err(|e| LoadError::Setup(format!("linking the filter interface: {e:#}")))?;
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        if let Some(dir) = &config.disk_cache {
            prepare_cache_dir(dir)?;
        }
        Ok(Arc::new(FilterEngine {
            engine,
            linker,
            memory_budget: MemoryBudget::new(config.memory_budget_bytes),
            config,
            compiled: Mutex::new(HashMap::new()),
            _ticker: ticker,
        }))
    }

    /// Bytes of linear memory held by the live stores of this engine now, out of
    /// [`EngineConfig::memory_budget_bytes`].
    pub fn memory_reserved_bytes(&self) -> usize {
        self.memory_budget.reserved()
    }

    /// Epoch ticks that make up `timeout`.
    pub(crate) fn ticks(&self, timeout: Duration) -> u64 {
        let tick = self.config.epoch_tick.as_nanos().max(1);
        (timeout.as_nanos().div_ceil(tick) as u64).max(1)
    }

    /// Compiles a component, reusing an artifact compiled earlier from the same bytes.
    pub(crate) fn compile(
        &self,
        module: &str,
        sha256: &[u8; 32],
        bytes: &[u8],
    ) -> Result<Component, LoadError> {
        if let Some(c) = self.compiled.lock().get(sha256) {
            return Ok(c.clone());
        }
        let component = match self.load_cached(sha256) {
            Some(c) => c,
            None => {
                let c = Component::new(&self.engine, bytes).map_err(|e| LoadError::Link {
                    module: module.to_string(),
                    step: "compile",
                    reason: format!("{e:#}"),
                })?;
                self.store_cached(sha256, &c);
                c
            }
        };
        self.compiled.lock().insert(*sha256, component.clone());
        Ok(component)
    }

    /// Directory of artifacts for this engine build and configuration.
    fn cache_dir(&self) -> Option<PathBuf> {
        let dir = self.config.disk_cache.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        Some(dir.join(format!("{:016x}", h.finish())))
    }

    fn load_cached(&self, sha256: &[u8; 32]) -> Option<Component> {
        let dir = self.cache_dir()?;
        let artifact = std::fs::read(dir.join(format!("{}.cwasm", hex::encode(sha256)))).ok()?;
        let recorded =
            std::fs::read_to_string(dir.join(format!("{}.cwasm.sha256", hex::encode(sha256))))
                .ok()?;
        if recorded.trim() != hex::encode(sha2_digest(&artifact)) {
            tracing::warn!(dir = %dir.display(), "cached artifact does not match the digest the host recorded; recompiling");
            return None;
        }
        // SAFETY: the artifact was written by this host (the directory is created 0700 and
        // owned by us, see `prepare_cache_dir`), under a directory keyed by the engine's
        // compatibility hash, and its digest matches the one recorded when it was written.
        unsafe { Component::deserialize(&self.engine, &artifact) }.ok()
    }

    fn store_cached(&self, sha256: &[u8; 32], component: &Component) {
        let Some(dir) = self.cache_dir() else { return };
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let bytes = component.serialize().map_err(std::io::Error::other)?;
            let name = hex::encode(sha256);
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, &bytes)?;
            std::fs::write(
                dir.join(format!("{name}.cwasm.sha256")),
                hex::encode(sha2_digest(&bytes)),
            )?;
            std::fs::rename(tmp, dir.join(format!("{name}.cwasm")))
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write compiled artifact to the disk cache");
        }
    }
}

pub(crate) fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The disk cache holds native code the host will map and run, so it must be ours alone.
fn prepare_cache_dir(dir: &Path) -> Result<(), LoadError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let err =
        |e: std::io::Error| LoadError::Setup(format!("artifact cache {}: {e}", dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let meta = std::fs::metadata(dir).map_err(err)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc_geteuid() };
    if meta.uid() != euid || meta.permissions().mode() & 0o022 != 0 {
        return Err(LoadError::Setup(format!(
            "artifact cache {} must be owned by this user and not writable by others",
            dir.display()
        )));
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
