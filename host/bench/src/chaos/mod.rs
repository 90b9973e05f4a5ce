//! The chaos soak behind `meshfilter bench chaos`: the proof of "nothing lost, nothing
//! stale".
//!
//! It runs the real thing: one etcd per remote cluster, written the way
//! clustermesh-apiserver writes (config, nodes, identities, services, endpoints, then the
//! sync canaries), the first remote fed through a `meshfilter export` process into an
//! export etcd; two `meshfilter mesh` replicas (leader and standby) writing one local etcd
//! with short lease and lock TTLs; a TCP proxy between the mesh and every remote; and a
//! filters directory updated like a mounted ConfigMap.
//!
//! While the sources churn, faults are dealt from a shuffled deck (every kind once before
//! any repeats, so a short run still sees them all), each real: `kill -9`, SIGTERM,
//! SIGSTOP/SIGCONT, etcd processes killed, restarted or replaced by empty ones and refilled
//! (with the same or a new Cilium cluster ID), compactions, partitions, leases revoked
//! behind the writer's back, filter modules that sleep or trap. Resolves of mirrored,
//! filtered and unknown addresses go to the leader all along.
//!
//! Then everything heals, the soak waits until every lease a dead or deposed writer held
//! has run out, and compares the local cache and the export etcd with [`model`], an
//! independent computation of what the filters allow of the final source content: every
//! expected key with the expected bytes, no other key, every key on a live lease of the
//! current writer.

mod check;
mod filters;
mod model;
mod report;
mod wire;
mod world;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::Client;
use fastrand::Rng;
use meshfilter_api::{MeshStatus, ResolveError};
use meshfilter_local_etcd::{ConfigMapDir, EtcdServer, TcpProxy};

pub use check::{Comparison, Difference};
pub use report::ChaosReport;

use crate::error::BenchError;
use crate::process::Process;
use filters::FilterSet;
use model::{Expected, Want};
use world::{ClusterWorld, ResolveTarget, SourceWrite};

/// The local cluster's name.
pub(crate) const LOCAL_CLUSTER: &str = "local";
/// The local cluster's region: regional endpoints of nodes elsewhere stay out.
pub(crate) const LOCAL_REGION: &str = "eu-west-1";

/// Lease TTL of every writer: short, so a dead writer's leases run out within the soak.
const LEASE_TTL: Duration = Duration::from_secs(6);
/// Leader lock TTL: a frozen leader loses the lock after this.
const LOCK_TTL: Duration = Duration::from_secs(3);
/// How often the mesh rewrites each cached cluster config.
const CONFIG_ENFORCE: Duration = Duration::from_secs(5);
/// How long a resolved (filtered) endpoint stays pinned; shorter than the lease TTL, so
/// the wait for old leases covers the last pins too.
const PIN_TTL: Duration = Duration::from_secs(4);
/// One round of the soak loop.
const TICK: Duration = Duration::from_millis(100);
/// Source writes per round.
const WRITES_PER_TICK: usize = 2;
/// Time between two resolves.
const RESOLVE_EVERY: Duration = Duration::from_millis(500);
/// Time between two faults, in milliseconds.
const FAULT_GAP_MS: std::ops::Range<u64> = 3_000..6_000;
/// How long the system may take to be ready at start, and again after healing.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the etcds may take to match the model once old leases are gone.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a replica may take to stop on SIGTERM before it counts as hung.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for one write to a source etcd.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The mesh's lock keys (on the lock's own lease, not the writer's).
const MESH_LOCK: &str = "cilium/kvstoremesh-lock/";
/// The exporter's lock keys.
const EXPORT_LOCK: &str = "cilium/meshfilter-export-lock/";
/// The mesh leader's heartbeat (kvstoremesh's `--enable-heartbeat`).
const HEARTBEAT: &str = "cilium/.heartbeat";
/// How soon a key whose lease was revoked must be back: the writer notices a lost lease
/// within a third of the lease TTL; a change of leader on the way costs a lock TTL.
const REWRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// How a soak runs.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// The `meshfilter` binary to start as mesh replicas and exporter.
    pub binary: PathBuf,
    /// Minutes of churn and faults.
    pub minutes: f64,
    /// Remote clusters (the first is fed through `meshfilter export`).
    pub remotes: usize,
    /// Endpoints per remote cluster at start.
    pub endpoints: usize,
    /// Seed of the fault sequence and the churn.
    pub seed: u64,
    /// Where to keep configs and process logs; a temporary directory removed at the end
    /// when not given.
    pub logs: Option<PathBuf>,
}

/// Runs a soak: set up, churn with faults, heal, wait out old leases, check.
pub fn run(options: &ChaosOptions) -> Result<ChaosReport, BenchError> {
    if options.remotes == 0 || options.remotes > 200 {
        return Err(BenchError::fixture("--remotes")(format!(
            "{} is not between 1 and 200",
            options.remotes
        )));
    }
    let rt = crate::runtime()?;
    let mut soak = Soak::start(options, rt)?;
    soak.wait_ready("the first leader to sync every remote")?;
    let churn = soak.churn()?;
    soak.heal()?;
    let mut report = soak.check()?;
    report.churn = churn;
    Ok(report)
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    LeaderKill,
    LeaderHandover,
    LeaderPause,
    LeaderPauseLong,
    LeaseRevoke,
    ExporterKill,
    EtcdRestart,
    WipeSameId,
    WipeNewId,
    Compaction,
    Partition,
    SleepingFilter,
    TrappingFilter,
}

impl Fault {
    const ALL: [Fault; 13] = [
        Fault::LeaderKill,
        Fault::LeaderHandover,
        Fault::LeaderPause,
        Fault::LeaderPauseLong,
        Fault::LeaseRevoke,
        Fault::ExporterKill,
        Fault::EtcdRestart,
        Fault::WipeSameId,
        Fault::WipeNewId,
        Fault::Compaction,
        Fault::Partition,
        Fault::SleepingFilter,
        Fault::TrappingFilter,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::LeaderKill => "leader kill -9, restarted",
            Fault::LeaderHandover => "leader SIGTERM (handover), restarted",
            Fault::LeaderPause => "leader SIGSTOP past the lock TTL",
            Fault::LeaderPauseLong => "leader SIGSTOP past the lease TTL",
            Fault::LeaseRevoke => "writer lease revoked behind its back",
            Fault::ExporterKill => "exporter kill -9, restarted",
            Fault::EtcdRestart => "remote etcd kill -9, restarted",
            Fault::WipeSameId => "remote etcd wiped, refilled (same cluster ID)",
            Fault::WipeNewId => "remote etcd wiped, refilled (new cluster ID)",
            Fault::Compaction => "etcd compaction",
            Fault::Partition => "remote partitioned (TCP proxy cut)",
            Fault::SleepingFilter => "filter reload: a module that sleeps",
            Fault::TrappingFilter => "filter reload: a module that traps",
        }
    }
}

/// A step that ends a fault (or continues one) at a given time.
#[derive(Debug, Clone)]
enum Action {
    /// SIGCONT a paused replica.
    Resume(usize),
    /// Start a killed replica again.
    StartMesh(usize),
    /// Start a replica sent SIGTERM once it exited; past the deadline it is hung.
    StartMeshAfterExit { replica: usize, deadline: Instant },
    /// Start the killed exporter again.
    StartExporter,
    /// Heal a remote's partition.
    HealPartition(usize),
    /// Start a remote's killed etcd again (its export etcd when `export`).
    StartEtcd { remote: usize, export: bool },
    /// Write a wiped remote's data again, before its canaries.
    Refill(usize),
    /// Write a refilled remote's canaries.
    Canaries(usize),
    /// The remote is free for other faults again.
    Release(usize),
    /// Put the good filters back.
    RestoreFilters,
    /// `key`, whose lease was revoked, must be written again by `deadline` (in the
    /// export etcd when `export`, unless it was replaced meanwhile).
    ExpectBack {
        export: bool,
        key: String,
        deadline: Instant,
        export_wipes: u32,
    },
}

/// What kind of key a lease revocation hits.
fn key_kind(key: &str) -> &'static str {
    if key == HEARTBEAT {
        "heartbeat"
    } else if key.starts_with("cilium/synced/") {
        "canary"
    } else if key.starts_with("cilium/cluster-config/") {
        "cluster config"
    } else {
        "entry"
    }
}

/// One remote cluster and its etcds.
struct Remote {
    world: ClusterWorld,
    /// The clustermesh-apiserver's etcd (for the exported cluster: the exporter's source).
    source: EtcdServer,
    source_client: Client,
    /// For the exported cluster: the etcd `meshfilter export` writes and the mesh reads.
    export: Option<(EtcdServer, Client)>,
    /// Between the mesh and the etcd it reads.
    proxy: TcpProxy,
    /// The source etcd is down or refilling: no churn into it.
    source_down: bool,
    /// A fault holds this remote (partition, restart, wipe).
    busy: bool,
}

impl Remote {
    /// The etcd the mesh reads: the export etcd for the exported cluster, else the source.
    fn mesh_reads(&mut self) -> &mut EtcdServer {
        match &mut self.export {
            Some((export, _)) => export,
            None => &mut self.source,
        }
    }
}

/// What happened, for the report.
#[derive(Default)]
struct Tally {
    faults: BTreeMap<&'static str, u32>,
    writes: u64,
    write_failures: u64,
    resolves: BTreeMap<String, u32>,
    exporter_exits: u32,
    unexpected_exits: Vec<String>,
    hangs: Vec<String>,
    not_rewritten: Vec<String>,
    notes: Vec<String>,
}

/// Faults holding a process or the filters.
#[derive(Default)]
struct Busy {
    mesh: bool,
    exporter: bool,
    filters: bool,
}

/// A running soak. Fields drop in order: processes first, then etcds and proxies, the
/// runtime last (the etcd clients need it until they are gone).
struct Soak {
    meshes: Vec<Process>,
    exporter: Process,
    remotes: Vec<Remote>,
    /// The local etcd the mesh writes: kept alive here, killed on drop.
    _local: EtcdServer,
    local_client: Client,
    filters: ConfigMapDir,
    rng: Rng,
    timeline: Vec<(Instant, Action)>,
    deck: Vec<Fault>,
    busy: Busy,
    tally: Tally,
    /// Times the export etcd was replaced by an empty one.
    export_wipes: u32,
    options: ChaosOptions,
    started: Instant,
    /// When every fault had healed.
    healed: Option<Instant>,
    _work: Option<tempfile::TempDir>,
    rt: tokio::runtime::Runtime,
}

fn free_port() -> Result<u16, BenchError> {
    meshfilter_local_etcd::try_free_port()
        .map_err(|e| BenchError::fixture("a free port")(e.to_string()))
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(BenchError::io(path))
}

/// A client of `etcd`.
fn connect(
    rt: &tokio::runtime::Runtime,
    etcd: &EtcdServer,
    name: &str,
) -> Result<Client, BenchError> {
    rt.block_on(Client::connect([etcd.endpoint()], None))
        .map_err(|e| BenchError::etcd(name)(e.to_string()))
}

fn start_etcd(name: &str) -> Result<EtcdServer, BenchError> {
    EtcdServer::try_start(name).map_err(BenchError::fixture(format!("etcd {name}")))
}

/// The directory for configs and logs: the one asked for, kept, or a temporary one.
fn work_dir(options: &ChaosOptions) -> Result<(Option<tempfile::TempDir>, PathBuf), BenchError> {
    if let Some(dir) = &options.logs {
        std::fs::create_dir_all(dir).map_err(BenchError::io(dir))?;
        return Ok((None, dir.clone()));
    }
    let work = tempfile::Builder::new()
        .prefix("meshfilter-chaos-")
        .tempdir()
        .map_err(|e| BenchError::fixture("work directory")(e.to_string()))?;
    let dir = work.path().to_path_buf();
    Ok((Some(work), dir))
}

/// Remote cluster `index` (1-based; the first is exported): its etcds, filled as
/// clustermesh-apiserver fills them, the proxy the mesh reaches it through, and its
/// connection file in `clusters_dir`.
fn start_remote(
    rt: &tokio::runtime::Runtime,
    index: usize,
    endpoints: usize,
    rng: &mut Rng,
    clusters_dir: &Path,
) -> Result<Remote, BenchError> {
    let name = format!("remote-{index}");
    let exported = index == 1;
    let position = u8::try_from(index).unwrap_or(u8::MAX);
    let world = ClusterWorld::new(
        &name,
        position,
        u32::from(position),
        !exported,
        endpoints,
        rng,
    );
    let source = start_etcd(&format!("{name}-apiserver"))?;
    let source_client = connect(rt, &source, &name)?;
    let export = if exported {
        let etcd = start_etcd(&format!("{name}-export"))?;
        let client = connect(rt, &etcd, &format!("{name} export"))?;
        Some((etcd, client))
    } else {
        None
    };
    let read_port = export
        .as_ref()
        .map_or(source.client_port(), |(e, _)| e.client_port());
    let proxy = TcpProxy::try_start(&format!("127.0.0.1:{read_port}"))
        .map_err(|e| BenchError::fixture(format!("proxy to {name}"))(e.to_string()))?;
    write_file(
        &clusters_dir.join(&name),
        &format!("endpoints:\n- {}\n", proxy.endpoint()),
    )?;
    let mut remote = Remote {
        world,
        source,
        source_client,
        export,
        proxy,
        source_down: false,
        busy: false,
    };
    rt.block_on(fill(&mut remote, &mut Tally::default()))?;
    Ok(remote)
}

/// The config sections every process shares: short TTLs, the mounted filters.
fn shared_config(filters: &Path) -> String {
    format!(
        "filters:\n  directory: {}\nsync: {{leaseTtl: {}s, lockTtl: {}s, configEnforcePeriod: {}s}}\n",
        filters.display(),
        LEASE_TTL.as_secs(),
        LOCK_TTL.as_secs(),
        CONFIG_ENFORCE.as_secs()
    )
}

/// A meshfilter process `name` running `role` with the config `text`, written into `dir`.
fn process(
    options: &ChaosOptions,
    dir: &Path,
    name: &str,
    role: &str,
    text: impl FnOnce(&str) -> String,
) -> Result<Process, BenchError> {
    let admin = format!("127.0.0.1:{}", free_port()?);
    let config = dir.join(format!("{name}.yaml"));
    write_file(&config, &text(&admin))?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(BenchError::io(&logs))?;
    Ok(Process::new(
        name,
        &options.binary,
        vec![role.into(), "--config".into(), config.display().to_string()],
        logs.join(format!("{name}.log")),
        admin,
    ))
}

impl Soak {
    /// Starts every etcd, fills the sources, starts the exporter and both replicas.
    fn start(options: &ChaosOptions, rt: tokio::runtime::Runtime) -> Result<Soak, BenchError> {
        let started = Instant::now();
        let (work, dir) = work_dir(options)?;
        let mut rng = Rng::with_seed(options.seed);
        let mut filters = ConfigMapDir::try_new()
            .map_err(|e| BenchError::fixture("filters directory")(e.to_string()))?;
        filters
            .try_update(&FilterSet::Good.files())
            .map_err(BenchError::io(filters.path()))?;
        let local = start_etcd("local")?;
        let local_client = connect(&rt, &local, "local")?;
        let clusters_dir = dir.join("clustermesh");
        std::fs::create_dir_all(&clusters_dir).map_err(BenchError::io(&clusters_dir))?;
        let remotes = (1..=options.remotes)
            .map(|index| start_remote(&rt, index, options.endpoints, &mut rng, &clusters_dir))
            .collect::<Result<Vec<Remote>, BenchError>>()?;

        let shared = shared_config(filters.path());
        let exported = &remotes[0];
        let Some((export, _)) = &exported.export else {
            return Err(BenchError::fixture("exporter")(
                "the first remote has no export etcd".into(),
            ));
        };
        let exporter = process(options, &dir, "exporter", "export", |admin| {
            format!(
                "cluster: {{name: {}, zone: {LOCAL_REGION}a, region: {LOCAL_REGION}}}\n\
                 sourceEtcd:\n  endpoints: [{}]\nexportEtcd:\n  endpoints: [{}]\n\
                 listen: {admin}\n{shared}",
                exported.world.name,
                exported.source.endpoint(),
                export.endpoint()
            )
        })?;
        let meshes = ["mesh-a", "mesh-b"]
            .iter()
            .map(|name| {
                process(options, &dir, name, "mesh", |admin| {
                    format!(
                        "cluster: {{name: {LOCAL_CLUSTER}, zone: {LOCAL_REGION}a, region: {LOCAL_REGION}}}\n\
                         localEtcd:\n  endpoints: [{}]\nclustersDir: {}\nlisten: {admin}\n\
                         resolve: {{pinTtl: {}s, negativeTtl: 1s}}\n{shared}",
                        local.endpoint(),
                        clusters_dir.display(),
                        PIN_TTL.as_secs()
                    )
                })
            })
            .collect::<Result<Vec<Process>, BenchError>>()?;
        let mut soak = Soak {
            meshes,
            exporter,
            remotes,
            _local: local,
            local_client,
            filters,
            rng,
            timeline: Vec::new(),
            deck: Vec::new(),
            busy: Busy::default(),
            tally: Tally::default(),
            export_wipes: 0,
            options: options.clone(),
            started,
            healed: None,
            _work: work,
            rt,
        };
        soak.exporter.start()?;
        for mesh in &mut soak.meshes {
            mesh.start()?;
        }
        tracing::info!(dir = %dir.display(), seed = options.seed, "soak set up");
        Ok(soak)
    }

    /// The replica holding the leader lock, with its status.
    fn leader(&self) -> Option<(usize, MeshStatus)> {
        self.meshes
            .iter()
            .enumerate()
            .find_map(|(i, m)| m.mesh_status().filter(|s| s.leader).map(|s| (i, s)))
    }

    /// Waits until a leader has synced every remote and the exporter has synced.
    fn wait_ready(&mut self, what: &str) -> Result<(), BenchError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let remotes = self.remotes.len();
        loop {
            let leader_ready = self.leader().is_some_and(|(_, s)| {
                s.remotes.len() == remotes && s.remotes.iter().all(|r| r.synced)
            });
            let exporter_ready = self
                .exporter
                .json_status()
                .is_some_and(|s| s["synced"] == serde_json::Value::Bool(true));
            if leader_ready && exporter_ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout { what: what.into() });
            }
            self.supervise()?;
            std::thread::sleep(TICK);
        }
    }

    /// Churn and faults for the configured time; returns how long they ran.
    fn churn(&mut self) -> Result<Duration, BenchError> {
        let began = Instant::now();
        let end = began + Duration::from_secs_f64(self.options.minutes.max(0.0) * 60.0);
        let mut next_fault = began + Duration::from_millis(self.rng.u64(FAULT_GAP_MS));
        let mut next_resolve = began;
        while Instant::now() < end {
            let round = Instant::now() + TICK;
            self.run_due(Instant::now(), false)?;
            self.supervise()?;
            for _ in 0..WRITES_PER_TICK {
                self.write_once();
            }
            if Instant::now() >= next_resolve {
                self.resolve_once();
                next_resolve = Instant::now() + RESOLVE_EVERY;
            }
            if Instant::now() >= next_fault {
                self.inject()?;
                next_fault = Instant::now() + Duration::from_millis(self.rng.u64(FAULT_GAP_MS));
            }
            std::thread::sleep(round.saturating_duration_since(Instant::now()));
        }
        Ok(began.elapsed())
    }

    /// Ends every fault in progress, in the order it would have ended.
    fn heal(&mut self) -> Result<(), BenchError> {
        self.run_due(Instant::now() + Duration::from_secs(3600), true)?;
        for mesh in &mut self.meshes {
            if !mesh.is_up() {
                mesh.start()?;
            }
        }
        if !self.exporter.is_up() {
            self.exporter.start()?;
        }
        self.supervise()?;
        self.healed = Some(Instant::now());
        tracing::info!("every fault healed");
        Ok(())
    }

    /// Restarts processes that exited on their own: a mesh replica never should (a
    /// crash); the exporter does after losing its lock, and comes back as a pod would.
    fn supervise(&mut self) -> Result<(), BenchError> {
        for mesh in &mut self.meshes {
            if mesh.is_stopping() {
                continue;
            }
            if let Some(status) = mesh.exited() {
                let crash = format!(
                    "{} exited on its own ({status}) {:.1}s into the run",
                    mesh.name,
                    self.started.elapsed().as_secs_f64()
                );
                tracing::error!("{crash}");
                self.tally.unexpected_exits.push(crash);
                mesh.start()?;
            }
        }
        if let Some(status) = self.exporter.exited() {
            tracing::info!(%status, "the exporter exited; starting it again");
            self.tally.exporter_exits += 1;
            self.exporter.start()?;
        }
        Ok(())
    }

    /// One random change to one remote whose source etcd is up.
    fn write_once(&mut self) {
        let up: Vec<usize> = (0..self.remotes.len())
            .filter(|i| !self.remotes[*i].source_down)
            .collect();
        if up.is_empty() {
            return;
        }
        let i = up[self.rng.usize(0..up.len())];
        let writes = self.remotes[i].world.churn(&mut self.rng);
        let client = self.remotes[i].source_client.clone();
        for write in writes {
            let done = self.rt.block_on(async {
                let mut kv = client.kv_client();
                let sent = async {
                    match &write {
                        SourceWrite::Put(k, v) => {
                            kv.put(k.as_str(), v.as_str(), None).await.map(|_| ())
                        }
                        SourceWrite::Delete(k) => kv.delete(k.as_str(), None).await.map(|_| ()),
                    }
                };
                matches!(tokio::time::timeout(WRITE_TIMEOUT, sent).await, Ok(Ok(())))
            });
            self.tally.writes += 1;
            if !done {
                self.tally.write_failures += 1;
            }
        }
    }

    /// Asks the leader to resolve a mirrored, a filtered or an unknown address.
    fn resolve_once(&mut self) {
        let Some((leader, _)) = self.leader() else {
            return;
        };
        let (target, label) = match self.rng.u8(0..4) {
            0 | 1 => (ResolveTarget::Existing, "existing endpoint"),
            2 => (ResolveTarget::Filtered, "filtered-out endpoint"),
            _ => (ResolveTarget::Unknown, "unknown address"),
        };
        let i = self.rng.usize(0..self.remotes.len());
        let Some(ip) = self.remotes[i].world.resolve_target(&mut self.rng, target) else {
            return;
        };
        let Ok(ip) = ip.parse() else { return };
        let answer = match self.meshes[leader].client().resolve(ip) {
            Ok(Ok(_)) => "resolved",
            Ok(Err(ResolveError::NotFound { .. })) => "not found",
            Ok(Err(ResolveError::NegativeCached { .. })) => "negative-cached",
            Ok(Err(ResolveError::RateLimited)) => "rate-limited",
            Ok(Err(ResolveError::Invalid { .. })) => "invalid",
            Ok(Err(ResolveError::NotInstalled { .. })) => "not installed",
            Ok(Err(ResolveError::Standby)) => "standby",
            Err(_) => "no answer",
        };
        *self
            .tally
            .resolves
            .entry(format!("{label}: {answer}"))
            .or_default() += 1;
    }

    fn schedule(&mut self, after: Duration, action: Action) {
        self.timeline.push((Instant::now() + after, action));
    }

    fn jitter(&mut self, ms: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(self.rng.u64(ms))
    }

    /// Deals the next fault that applies now (a busy target puts the card back under
    /// the deck).
    fn inject(&mut self) -> Result<(), BenchError> {
        for _ in 0..Fault::ALL.len() {
            if self.deck.is_empty() {
                self.deck = Fault::ALL.to_vec();
                self.rng.shuffle(&mut self.deck);
            }
            let Some(fault) = self.deck.pop() else { break };
            match self.try_inject(fault)? {
                Some(detail) => {
                    tracing::info!(fault = fault.name(), detail, at = ?self.started.elapsed(), "fault injected");
                    *self.tally.faults.entry(fault.name()).or_default() += 1;
                    return Ok(());
                }
                None => self.deck.insert(0, fault),
            }
        }
        Ok(())
    }

    /// A remote no fault holds, at random.
    fn free_remote(&mut self) -> Option<usize> {
        let free: Vec<usize> = (0..self.remotes.len())
            .filter(|i| !self.remotes[*i].busy)
            .collect();
        (!free.is_empty()).then(|| free[self.rng.usize(0..free.len())])
    }

    /// Injects `fault`; `None` when its target is busy or absent right now.
    fn try_inject(&mut self, fault: Fault) -> Result<Option<String>, BenchError> {
        match fault {
            Fault::LeaderKill
            | Fault::LeaderHandover
            | Fault::LeaderPause
            | Fault::LeaderPauseLong => {
                if self.busy.mesh {
                    return Ok(None);
                }
                let Some((leader, _)) = self.leader() else {
                    return Ok(None);
                };
                self.busy.mesh = true;
                let name = self.meshes[leader].name.clone();
                match fault {
                    Fault::LeaderKill => {
                        self.meshes[leader].kill();
                        let after = self.jitter(300..2_000);
                        self.schedule(after, Action::StartMesh(leader));
                        Ok(Some(format!("{name} killed, back in {after:?}")))
                    }
                    Fault::LeaderHandover => {
                        self.meshes[leader].terminate();
                        let deadline = Instant::now() + STOP_TIMEOUT;
                        self.schedule(
                            TICK,
                            Action::StartMeshAfterExit {
                                replica: leader,
                                deadline,
                            },
                        );
                        Ok(Some(format!("{name} sent SIGTERM")))
                    }
                    _ => {
                        let ttl = if fault == Fault::LeaderPause {
                            LOCK_TTL
                        } else {
                            LEASE_TTL
                        };
                        let after = ttl + self.jitter(1_000..2_500);
                        self.meshes[leader].pause();
                        self.schedule(after, Action::Resume(leader));
                        Ok(Some(format!("{name} stopped for {after:?}")))
                    }
                }
            }
            Fault::LeaseRevoke => {
                let (client, owner, leases) = if self.rng.u8(0..3) == 0 {
                    let Some(status) = self.exporter.json_status() else {
                        return Ok(None);
                    };
                    let leases = serde_json::from_value::<meshfilter_api::WriterStatus>(
                        status["writer"].clone(),
                    )
                    .map(|w| w.leases)
                    .unwrap_or_default();
                    let Some((export, client)) = &self.remotes[0].export else {
                        return Ok(None);
                    };
                    if !export.is_running() || self.remotes[0].busy {
                        return Ok(None);
                    }
                    (client.clone(), "exporter".to_string(), leases)
                } else {
                    let Some((leader, status)) = self.leader() else {
                        return Ok(None);
                    };
                    (
                        self.local_client.clone(),
                        self.meshes[leader].name.clone(),
                        status.writer.leases,
                    )
                };
                // The victim is a key, of a kind picked first: entries are rewritten all
                // the time anyway; canaries, cluster configs and the heartbeat are written
                // rarely, and a writer that forgets them after a lost lease loses them.
                let own: HashSet<i64> = leases.iter().map(|l| l.id).collect();
                let Ok(listing) = self.rt.block_on(check::list(&client, &owner)) else {
                    return Ok(None);
                };
                let mut kinds: BTreeMap<&'static str, Vec<(String, i64)>> = BTreeMap::new();
                for (key, (_, lease)) in listing {
                    if own.contains(&lease) {
                        kinds.entry(key_kind(&key)).or_default().push((key, lease));
                    }
                }
                let kinds: Vec<(&'static str, Vec<(String, i64)>)> = kinds.into_iter().collect();
                if kinds.is_empty() {
                    return Ok(None);
                }
                let (kind, keys) = &kinds[self.rng.usize(0..kinds.len())];
                let (key, lease) = keys[self.rng.usize(0..keys.len())].clone();
                let revoked = self
                    .rt
                    .block_on(async { client.lease_client().revoke(lease).await.is_ok() });
                if !revoked {
                    return Ok(None);
                }
                // Nothing deletes canaries, cluster configs or the heartbeat while the
                // remotes stay configured: every one the lease held must be back soon, on
                // a new lease (entries may be deleted at the source meanwhile; the final
                // check covers them).
                let export = owner == "exporter";
                let mut expected = 0;
                for (_, keys) in kinds.iter().filter(|(kind, _)| *kind != "entry") {
                    for (gone, _) in keys.iter().filter(|(_, l)| *l == lease) {
                        expected += 1;
                        self.schedule(
                            TICK,
                            Action::ExpectBack {
                                export,
                                key: gone.clone(),
                                deadline: Instant::now() + REWRITE_TIMEOUT,
                                export_wipes: self.export_wipes,
                            },
                        );
                    }
                }
                Ok(Some(format!(
                    "lease {lease:x} of {owner}, holding the {kind} {key} and {expected} canaries, configs or heartbeats in all"
                )))
            }
            Fault::ExporterKill => {
                if self.busy.exporter || !self.exporter.is_up() {
                    return Ok(None);
                }
                self.busy.exporter = true;
                self.exporter.kill();
                let after = self.jitter(300..2_000);
                self.schedule(after, Action::StartExporter);
                Ok(Some(format!("back in {after:?}")))
            }
            Fault::EtcdRestart => {
                let Some(i) = self.free_remote() else {
                    return Ok(None);
                };
                let export = self.remotes[i].export.is_some() && self.rng.bool();
                let remote = &mut self.remotes[i];
                remote.busy = true;
                if export {
                    remote.mesh_reads().kill();
                } else {
                    remote.source.kill();
                    remote.source_down = true;
                }
                let after = self.jitter(1_000..4_000);
                self.schedule(after, Action::StartEtcd { remote: i, export });
                let which = if export { "export" } else { "source" };
                Ok(Some(format!(
                    "{} {which} etcd, back in {after:?}",
                    self.remotes[i].world.name
                )))
            }
            Fault::WipeSameId | Fault::WipeNewId => {
                let Some(i) = self.free_remote() else {
                    return Ok(None);
                };
                let name = self.remotes[i].world.name.clone();
                // The exporter writes the export etcd: wiping it leaves the exporter
                // fenced, to exit and be started again, and to refill it.
                if fault == Fault::WipeSameId && self.remotes[i].export.is_some() && self.rng.bool()
                {
                    self.remotes[i].busy = true;
                    self.export_wipes += 1;
                    self.remotes[i]
                        .mesh_reads()
                        .try_replace_with_fresh()
                        .map_err(BenchError::fixture(format!("{name} export etcd")))?;
                    let after = self.jitter(2_000..4_000);
                    self.schedule(after, Action::Release(i));
                    return Ok(Some(format!(
                        "{name} export etcd (the exporter refills it)"
                    )));
                }
                let new_id = if fault == Fault::WipeNewId {
                    let taken: HashSet<u32> = self.remotes.iter().map(|r| r.world.id).collect();
                    let mut id = self.rng.u32(10..=250);
                    while taken.contains(&id) {
                        id = self.rng.u32(10..=250);
                    }
                    Some(id)
                } else {
                    None
                };
                let remote = &mut self.remotes[i];
                remote.busy = true;
                remote.source_down = true;
                remote
                    .source
                    .try_replace_with_fresh()
                    .map_err(BenchError::fixture(format!("{name} source etcd")))?;
                let old = remote.world.id;
                if let Some(id) = new_id {
                    remote.world.renumber(id);
                }
                let after = self.jitter(1_000..2_500);
                self.schedule(after, Action::Refill(i));
                Ok(Some(match new_id {
                    Some(id) => format!("{name} source etcd, cluster ID {old} -> {id}"),
                    None => format!("{name} source etcd, cluster ID {old}"),
                }))
            }
            Fault::Compaction => {
                let mut targets: Vec<(String, Client)> =
                    vec![("local".into(), self.local_client.clone())];
                for r in &self.remotes {
                    if r.source.is_running() {
                        targets.push((format!("{} source", r.world.name), r.source_client.clone()));
                    }
                    if let Some((etcd, client)) = &r.export
                        && etcd.is_running()
                    {
                        targets.push((format!("{} export", r.world.name), client.clone()));
                    }
                }
                let (name, client) = targets.swap_remove(self.rng.usize(0..targets.len()));
                let compacted = self.rt.block_on(async {
                    let mut kv = client.kv_client();
                    let head = kv.get("cilium", None).await.ok()?.header()?.revision();
                    kv.compact(head, None).await.ok().map(|_| head)
                });
                Ok(compacted.map(|rev| format!("{name} etcd up to revision {rev}")))
            }
            Fault::Partition => {
                let Some(i) = self.free_remote() else {
                    return Ok(None);
                };
                self.remotes[i].busy = true;
                self.remotes[i].proxy.cut();
                let after = self.jitter(2_000..6_000);
                self.schedule(after, Action::HealPartition(i));
                Ok(Some(format!(
                    "{} for {after:?}",
                    self.remotes[i].world.name
                )))
            }
            Fault::SleepingFilter | Fault::TrappingFilter => {
                if self.busy.filters {
                    return Ok(None);
                }
                let set = if fault == Fault::SleepingFilter {
                    FilterSet::Sleeping
                } else {
                    FilterSet::Trapping
                };
                self.busy.filters = true;
                self.filters
                    .try_update(&set.files())
                    .map_err(BenchError::io(self.filters.path()))?;
                let after = self.jitter(3_000..6_000);
                self.schedule(after, Action::RestoreFilters);
                Ok(Some(format!("for {after:?}")))
            }
        }
    }

    /// Runs every action due by `now`, including those they schedule. `healing`: the
    /// faults end now, so waits (for a replica to exit) block instead of rescheduling.
    fn run_due(&mut self, now: Instant, healing: bool) -> Result<(), BenchError> {
        loop {
            let due = self
                .timeline
                .iter()
                .enumerate()
                .filter(|(_, (at, _))| healing || *at <= now)
                .min_by_key(|(_, (at, _))| *at)
                .map(|(i, _)| i);
            let Some(i) = due else { return Ok(()) };
            let (_, action) = self.timeline.remove(i);
            self.act(action, healing)?;
        }
    }

    fn act(&mut self, action: Action, healing: bool) -> Result<(), BenchError> {
        match action {
            Action::Resume(r) => {
                self.meshes[r].resume();
                self.busy.mesh = false;
            }
            Action::StartMesh(r) => {
                self.meshes[r].start()?;
                self.busy.mesh = false;
            }
            Action::StartMeshAfterExit { replica, deadline } => {
                loop {
                    if self.meshes[replica].exited().is_some() {
                        break;
                    }
                    if Instant::now() >= deadline {
                        let hang = format!(
                            "{} did not stop within {STOP_TIMEOUT:?} of SIGTERM",
                            self.meshes[replica].name
                        );
                        tracing::error!("{hang}");
                        self.tally.hangs.push(hang);
                        self.meshes[replica].kill();
                        break;
                    }
                    if !healing {
                        self.schedule(TICK, Action::StartMeshAfterExit { replica, deadline });
                        return Ok(());
                    }
                    std::thread::sleep(TICK);
                }
                self.meshes[replica].start()?;
                self.busy.mesh = false;
            }
            Action::StartExporter => {
                self.exporter.start()?;
                self.busy.exporter = false;
            }
            Action::HealPartition(i) => {
                self.remotes[i].proxy.heal();
                self.remotes[i].busy = false;
            }
            Action::StartEtcd { remote: i, export } => {
                let r = &mut self.remotes[i];
                let name = r.world.name.clone();
                if export {
                    r.mesh_reads().try_restart()
                } else {
                    r.source.try_restart()
                }
                .map_err(BenchError::fixture(format!("restarting an etcd of {name}")))?;
                r.source_down = false;
                r.busy = false;
            }
            Action::Refill(i) => {
                let r = &mut self.remotes[i];
                let data = r.world.initial_data();
                let client = r.source_client.clone();
                let name = r.world.name.clone();
                self.rt
                    .block_on(put_all(&client, &name, data, &mut self.tally))?;
                let after = self.jitter(500..1_500);
                self.schedule(after, Action::Canaries(i));
            }
            Action::Canaries(i) => {
                let r = &mut self.remotes[i];
                let canaries = r.world.canaries();
                let client = r.source_client.clone();
                let name = r.world.name.clone();
                self.rt
                    .block_on(put_all(&client, &name, canaries, &mut self.tally))?;
                r.source_down = false;
                r.busy = false;
            }
            Action::Release(i) => self.remotes[i].busy = false,
            Action::RestoreFilters => {
                self.filters
                    .try_update(&FilterSet::Good.files())
                    .map_err(BenchError::io(self.filters.path()))?;
                self.busy.filters = false;
            }
            Action::ExpectBack {
                export,
                key,
                deadline,
                export_wipes,
            } => loop {
                let client = match (export, &self.remotes[0].export) {
                    (true, Some((_, client))) => client.clone(),
                    _ => self.local_client.clone(),
                };
                let present = self.rt.block_on(async {
                    let mut kv = client.kv_client();
                    let get = kv.get(key.as_str(), None);
                    matches!(tokio::time::timeout(Duration::from_secs(2), get).await,
                        Ok(Ok(resp)) if !resp.kvs().is_empty())
                });
                if present || (export && self.export_wipes != export_wipes) {
                    break;
                }
                if Instant::now() >= deadline {
                    let etcd = if export { "export etcd" } else { "local cache" };
                    let lost = format!(
                        "{key} ({etcd}) not written again within {REWRITE_TIMEOUT:?} of its lease being revoked"
                    );
                    tracing::error!("{lost}");
                    self.tally.not_rewritten.push(lost);
                    break;
                }
                if !healing {
                    self.schedule(
                        Duration::from_millis(500),
                        Action::ExpectBack {
                            export,
                            key,
                            deadline,
                            export_wipes,
                        },
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            },
        }
        Ok(())
    }

    /// Waits for the system to be ready again and for every lease of a dead or deposed
    /// writer to run out, then compares until the etcds match the model or time is up.
    fn check(&mut self) -> Result<ChaosReport, BenchError> {
        if let Err(e) = self.wait_ready("a leader to sync every remote after the faults healed") {
            self.tally.hangs.push(e.to_string());
        }
        // A writer that died (or was deposed) at the latest when everything healed stops
        // renewing within a lock-TTL round; its leases run out one lease TTL later. Pins
        // (shorter than a lease) expire meanwhile.
        let healed = self.healed.unwrap_or_else(Instant::now);
        let settled = healed + LEASE_TTL + LOCK_TTL + Duration::from_secs(1);
        std::thread::sleep(settled.saturating_duration_since(Instant::now()));
        self.note_leftover_leases();

        let began = Instant::now();
        let (cache, export, converged_after) = loop {
            let (cache, export) = self.compare()?;
            if cache.is_clean() && export.is_clean() {
                break (cache, export, Some(began.elapsed()));
            }
            if began.elapsed() > CONVERGE_TIMEOUT {
                break (cache, export, None);
            }
            let first = cache
                .differences()
                .chain(export.differences())
                .next()
                .map(|(kind, d)| format!("{kind}: {}: {}", d.key, d.detail));
            tracing::info!(%cache, %export, first, "not matching the model yet");
            std::thread::sleep(Duration::from_secs(1));
        };
        let tally = std::mem::take(&mut self.tally);
        let mut starts: Vec<(String, u32)> = self
            .meshes
            .iter()
            .map(|m| (m.name.clone(), m.starts))
            .collect();
        starts.push((self.exporter.name.clone(), self.exporter.starts));
        Ok(ChaosReport {
            seed: self.options.seed,
            remotes: self.remotes.len(),
            endpoints: self.options.endpoints,
            churn: Duration::ZERO,
            total: self.started.elapsed(),
            faults: Fault::ALL
                .iter()
                .map(|f| (f.name(), tally.faults.get(f.name()).copied().unwrap_or(0)))
                .collect(),
            writes: tally.writes,
            write_failures: tally.write_failures,
            resolves: tally.resolves,
            starts,
            exporter_exits: tally.exporter_exits,
            unexpected_exits: tally.unexpected_exits,
            hangs: tally.hangs,
            not_rewritten: tally.not_rewritten,
            notes: tally.notes,
            cache,
            export,
            converged_after,
        })
    }

    /// Notes leases still alive in the local etcd that hold nothing of the leader's and
    /// no lock: a writer that keeps a lease it no longer uses (not a failure: nothing
    /// depends on it).
    fn note_leftover_leases(&mut self) {
        let Some((_, status)) = self.leader() else {
            return;
        };
        let client = self.local_client.clone();
        let leftover = self.rt.block_on(async {
            let listed = client.lease_client().leases().await.ok()?;
            let locks = check::list(&client, "local").await.ok()?;
            let lock_leases: HashSet<i64> = locks
                .iter()
                .filter(|(k, _)| k.starts_with(MESH_LOCK))
                .map(|(_, (_, l))| *l)
                .collect();
            let own: HashSet<i64> = status.writer.leases.iter().map(|l| l.id).collect();
            Some(
                listed
                    .leases()
                    .iter()
                    .map(|l| l.id())
                    .filter(|id| !own.contains(id) && !lock_leases.contains(id))
                    .count(),
            )
        });
        if let Some(n) = leftover.filter(|n| *n > 0) {
            self.tally.notes.push(format!(
                "{n} lease(s) in the local etcd belong neither to the leader's writer nor to a lock"
            ));
        }
    }

    /// Reads every source, computes the model, and compares the local cache and the
    /// export etcd with it.
    fn compare(&mut self) -> Result<(Comparison, Comparison), BenchError> {
        let mut expected_cache = Expected::new();
        expected_cache.insert(HEARTBEAT.to_string(), Want::Timestamp);
        let mut expected_export = Expected::new();
        for remote in &self.remotes {
            let name = remote.world.name.clone();
            let source = check::snapshot(
                &self
                    .rt
                    .block_on(check::list(&remote.source_client, &name))?,
            );
            let mesh_reads = if remote.export.is_some() {
                expected_export = model::export(&name, &source);
                model::as_snapshot(&expected_export)
            } else {
                source
            };
            expected_cache.extend(model::import(&name, &mesh_reads, LOCAL_REGION));
        }

        let leader_leases: HashSet<i64> = self
            .leader()
            .map(|(_, s)| s.writer.leases.iter().map(|l| l.id).collect())
            .unwrap_or_default();
        let exporter_leases: HashSet<i64> = self
            .exporter
            .json_status()
            .and_then(|s| {
                serde_json::from_value::<meshfilter_api::WriterStatus>(s["writer"].clone()).ok()
            })
            .map(|w| w.leases.iter().map(|l| l.id).collect())
            .unwrap_or_default();
        let local_client = self.local_client.clone();
        let export_client = self.remotes[0].export.as_ref().map(|(_, c)| c.clone());
        self.rt.block_on(async {
            let local = check::list(&local_client, "local").await?;
            let owner: HashSet<i64> =
                check::alive(&local_client, check::leases_used(&local, &[MESH_LOCK]))
                    .await
                    .intersection(&leader_leases)
                    .copied()
                    .collect();
            let cache =
                check::compare("local cache", &expected_cache, &local, &[MESH_LOCK], &owner);
            let export = match export_client {
                Some(client) => {
                    let listing = check::list(&client, "export").await?;
                    let owner: HashSet<i64> =
                        check::alive(&client, check::leases_used(&listing, &[EXPORT_LOCK]))
                            .await
                            .intersection(&exporter_leases)
                            .copied()
                            .collect();
                    check::compare(
                        "export etcd",
                        &expected_export,
                        &listing,
                        &[EXPORT_LOCK],
                        &owner,
                    )
                }
                None => Comparison {
                    etcd: "export etcd".into(),
                    ..Default::default()
                },
            };
            Ok((cache, export))
        })
    }
}

/// Writes a remote's data, then its canaries, as clustermesh-apiserver does at start.
async fn fill(remote: &mut Remote, tally: &mut Tally) -> Result<(), BenchError> {
    let name = remote.world.name.clone();
    put_all(
        &remote.source_client,
        &name,
        remote.world.initial_data(),
        tally,
    )
    .await?;
    put_all(&remote.source_client, &name, remote.world.canaries(), tally).await
}

/// Puts `kvs` into a source etcd, in order; the etcd was just (re)started, so a failure
/// is the soak's own and ends it.
async fn put_all(
    client: &Client,
    name: &str,
    kvs: Vec<(String, String)>,
    tally: &mut Tally,
) -> Result<(), BenchError> {
    let mut kv = client.kv_client();
    for (key, value) in kvs {
        tokio::time::timeout(Duration::from_secs(10), kv.put(key.as_str(), value, None))
            .await
            .map_err(|_| BenchError::etcd(name)(format!("writing {key} timed out")))?
            .map_err(|e| BenchError::etcd(name)(format!("writing {key}: {e}")))?;
        tally.writes += 1;
    }
    Ok(())
}
