//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// meshfilter: Cilium Cluster Mesh sync with workload-controlled scope, on-demand
/// resolution of datapath misses, and decisions made by WebAssembly filters.
#[derive(Debug, Parser)]
#[command(name = "meshfilter", version, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with filter modules: validate, try on endpoints, benchmark.
    #[command(subcommand)]
    Filter(FilterCommand),
    /// Mirror remote clusters into the local kvstoremesh cache through the import hook
    /// (a drop-in kvstoremesh).
    Mesh(MeshArgs),
    /// Benchmarks that need a running system (scale runs; never part of the tests).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Why an endpoint is (not) in this cluster's cache: the hook, the filter generation,
    /// the decision applied and the one the current filters make, and their inputs.
    Explain(ExplainArgs),
    /// Source-side filtering: copy this cluster's unfiltered clustermesh state into the
    /// etcd remote clusters read, with only the endpoints the export hook lets out.
    Export(ExportArgs),
    /// The per-node agent: attach the eBPF miss classifier, resolve the remote pod
    /// addresses it reports through the miss hook and the mesh, and install them.
    Node(NodeArgs),
    /// Show the status of a running `meshfilter mesh`: per remote cluster, connected,
    /// synced, entries mirrored and filtered out (and why), retries, last error.
    Status(StatusArgs),
    /// Capture what filters see (endpoints with labels, node topology, identities) of
    /// every cluster a mesh reads, or of given etcds, into one file for `filter diff`.
    Snapshot(SnapshotArgs),
    /// Start a local mesh on real etcd (one etcd per cluster of a bundled sample of four
    /// clusters in three regions), export each cluster's endpoints through the default
    /// filter, mirror every cluster into every other through meshfilter's sync engine, and
    /// print what each cluster exported, imported and filtered, and why.
    Demo(DemoArgs),
}

/// `meshfilter filter ...`
#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Validate a module: metadata, interface version, config, self-test and one probe
    /// call per hook.
    Check(ModuleArgs),
    /// Run a module (or with `--manifest`, a filters directory's whole chain) over cases
    /// from a YAML file and print a table of decisions and reasons; cases with `expect`
    /// are checked, and a case whose call fails (trap, deadline, memory) fails: exit code
    /// 1 on any failed case.
    Test(TestArgs),
    /// Measure decisions per second and latency, Wasm against native Rust, with and
    /// without memoisation.
    Bench(BenchArgs),
    /// What changing the filters would do, before rolling it out: run the old and the new
    /// filters over a snapshot (`meshfilter snapshot`) the way the pipeline does, and
    /// print every endpoint whose fate changes, grouped by namespace and reason, totals
    /// per hook, and per consuming cluster the ipcache entries on each node before and
    /// after with an estimate of the agents' memory. Exit code 1 when a `--max-*` gate
    /// is crossed.
    Diff(DiffArgs),
    /// Write a filter module shipped inside this binary to a file (or every one into a
    /// directory with --all), and print its sha256 pin.
    Get(GetArgs),
    /// Create a filter crate: the guest SDK as a dependency, a filter with all three
    /// hooks, native tests, an example config, a cases file and a README.
    New(NewArgs),
}

/// `filter diff`
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The filters running now: a filters directory (with `filters.yaml`), a module file,
    /// or `builtin:<name>`.
    pub old: String,
    /// The filters to roll out, in the same forms.
    pub new: String,
    /// The snapshot to run them over (`meshfilter snapshot -o FILE`).
    #[arg(long)]
    pub snapshot: PathBuf,
    /// Config of OLD when it is a single module: JSON or YAML text, or `@file`.
    #[arg(long)]
    pub old_config: Option<String>,
    /// Config of NEW when it is a single module.
    #[arg(long)]
    pub new_config: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Change groups to print (all are in the JSON).
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Gate: fail when more than this many endpoints would stop being exported.
    #[arg(long)]
    pub max_stopped: Option<usize>,
    /// Gate: fail when any consuming cluster would lose more than this many entries.
    #[arg(long)]
    pub max_removed: Option<usize>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `meshfilter snapshot`
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Every remote of a `meshfilter mesh` config (its `clustersDir`: Cilium's
    /// clustermesh config directory, one etcd config file per cluster).
    #[arg(long)]
    pub mesh_config: Option<PathBuf>,
    /// Every cluster of a clustermesh config directory.
    #[arg(long)]
    pub clusters_dir: Option<PathBuf>,
    /// One cluster's clustermesh etcd, as `NAME=URL` (plain text; repeatable).
    #[arg(long, value_name = "NAME=URL")]
    pub etcd: Vec<String>,
    /// The file to write.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// `filter get`
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Shipped filter: cfp-scope, namespace-allowlist or region-pairs.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub name: Option<String>,
    /// Output file (`-` or omitted: stdout, unless it is a terminal).
    #[arg(short, long)]
    pub output: Option<String>,
    /// Write every shipped module into this directory, as `<name>.wasm`.
    #[arg(long, value_name = "DIR")]
    pub all: Option<PathBuf>,
}

/// `filter new`
#[derive(Debug, Args)]
pub struct NewArgs {
    /// Crate name (lowercase letters, digits and '-'); the module is `<name>.wasm` with
    /// '-' as '_'.
    pub name: String,
    /// Directory to create the crate in (default: `./NAME`).
    #[arg(long, value_name = "PATH")]
    pub dir: Option<PathBuf>,
    /// The guest SDK crate directory (default: the first `guest-sdk/` in the current
    /// directory or above it).
    #[arg(long, value_name = "PATH")]
    pub sdk: Option<PathBuf>,
}

/// `meshfilter bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Bootstrap time and peak RSS of one `meshfilter mesh` against many remote clusters
    /// on real etcd, next to the raw batched etcd write rate.
    Mesh(BenchMeshArgs),
    /// The miss path: per-packet cost of the classifier, miss-to-installed latency from
    /// the local cache and from a remote cluster through `meshfilter mesh`, and the
    /// event rate at which the node agent saturates. Needs root.
    Node(BenchNodeArgs),
    /// `filter diff` at scale: a synthetic mesh (default 100 clusters x 5,000 endpoints)
    /// written as a snapshot, then stock Cilium (cfp-scope opt-out) diffed against the
    /// CFP (opt-in); prints the report and the time to read and evaluate it.
    Diff(BenchDiffArgs),
    /// Chaos soak: remote clusters (one through `meshfilter export`) and two `meshfilter
    /// mesh` replicas on real etcd, under churn and faults (kill -9, SIGTERM, SIGSTOP,
    /// etcd restarts and wipes, compaction, partitions, revoked leases, bad filters), then
    /// the local cache and the export etcd checked against a model. Exit code 1 on any
    /// difference.
    Chaos(BenchChaosArgs),
}

/// `bench diff`
#[derive(Debug, Args)]
pub struct BenchDiffArgs {
    /// Clusters.
    #[arg(long, default_value_t = 100)]
    pub clusters: usize,
    /// Endpoints per cluster.
    #[arg(long, default_value_t = 5_000)]
    pub endpoints: usize,
    /// Share of pods opted in with the sync label, in percent.
    #[arg(long, default_value_t = 5)]
    pub opted_in: u32,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// `bench chaos`
#[derive(Debug, Args)]
pub struct BenchChaosArgs {
    /// Minutes of churn and faults (fractions allowed).
    #[arg(long, default_value_t = 2.0)]
    pub minutes: f64,
    /// Remote clusters; the first is fed through `meshfilter export`.
    #[arg(long, default_value_t = 3)]
    pub remotes: usize,
    /// Endpoints per remote cluster at start.
    #[arg(long, default_value_t = 300)]
    pub endpoints: usize,
    /// Seed of the faults and the churn (random when not given; printed to replay a run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep configs and process logs in this directory (default: a temporary directory,
    /// removed at the end).
    #[arg(long)]
    pub logs: Option<PathBuf>,
}

/// `bench node`
#[derive(Debug, Args)]
pub struct BenchNodeArgs {
    /// Misses per latency phase (entries in the local cache).
    #[arg(long, default_value_t = 2_000)]
    pub addresses: u32,
    /// Misses resolved from the remote cluster (at most `--addresses`).
    #[arg(long, default_value_t = 500)]
    pub remote_addresses: u32,
    /// Time between two misses in the latency phases.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1ms")]
    pub interval: std::time::Duration,
    /// Distinct unknown addresses in the saturation phase.
    #[arg(long, default_value_t = 100_000)]
    pub flood: u32,
}

/// `bench mesh`
#[derive(Debug, Args)]
pub struct BenchMeshArgs {
    /// Remote clusters.
    #[arg(long, default_value_t = 100)]
    pub remotes: usize,
    /// Endpoints per remote cluster.
    #[arg(long, default_value_t = 5_000)]
    pub endpoints: usize,
    /// Share of endpoints exported (opted in) per cluster; 1.0 syncs everything.
    #[arg(long, default_value_t = 0.05)]
    pub opted_in: f64,
    /// Identities per remote cluster.
    #[arg(long, default_value_t = 250)]
    pub identities: usize,
    /// Nodes per remote cluster.
    #[arg(long, default_value_t = 50)]
    pub nodes: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

/// A module and its config.
#[derive(Debug, Args)]
pub struct ModuleArgs {
    /// Module file, or `builtin:<name>` for a shipped filter (e.g. `builtin:cfp-scope`).
    pub module: String,
    /// Config passed to the module's `configure`: JSON or YAML text, or `@file`.
    #[arg(long)]
    pub config: Option<String>,
    #[command(flatten)]
    pub local: LocalityArgs,
}

/// This host's locality, as a module sees it through `local()`.
#[derive(Debug, Args)]
pub struct LocalityArgs {
    /// This host's cluster name.
    #[arg(long, default_value = "local")]
    pub cluster: String,
    /// This host's zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// This host's region.
    #[arg(long)]
    pub region: Option<String>,
}

/// `filter test`
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Module file, or `builtin:<name>` for a shipped filter; not with `--manifest`.
    #[arg(required_unless_present = "manifest", conflicts_with = "manifest")]
    pub module: Option<String>,
    /// Config passed to the module's `configure`: JSON or YAML text, or `@file`.
    #[arg(long, conflicts_with = "manifest")]
    pub config: Option<String>,
    /// Run the whole chain of a filters directory (its `filters.yaml` and the modules it
    /// names, loaded as the roles load them) instead of one module.
    #[arg(long, value_name = "DIR")]
    pub manifest: Option<PathBuf>,
    #[command(flatten)]
    pub local: LocalityArgs,
    /// YAML file of cases (`local`, and `cases` with `hook`, `endpoint` or `request`,
    /// optional `name` and `expect`; the SDK guide documents every key).
    #[arg(long, visible_alias = "cases")]
    pub endpoints: PathBuf,
    /// Print the table as JSON lines instead.
    #[arg(long)]
    pub json: bool,
}

/// `filter bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub module: ModuleArgs,
    /// Decisions per measurement.
    #[arg(long, default_value_t = 200_000)]
    pub iterations: usize,
    /// Labels per synthetic endpoint.
    #[arg(long, default_value_t = 10)]
    pub labels: usize,
    /// Distinct endpoints in the memoised run.
    #[arg(long, default_value_t = 500_000)]
    pub endpoints: usize,
    /// Distinct label sets (identities) among them.
    #[arg(long, default_value_t = 25_000)]
    pub identities: usize,
}

/// `demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Sample mesh description (defaults to the bundled one).
    #[arg(long)]
    pub sample: Option<PathBuf>,
    /// Config for cfp-scope (JSON/YAML text or `@file`).
    #[arg(long)]
    pub config: Option<String>,
    /// Only run the filters over the sample, without etcd.
    #[arg(long)]
    pub filters_only: bool,
}

/// `mesh`
#[derive(Debug, Args)]
pub struct MeshArgs {
    /// Config file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// How long a removed cluster's entries stay after its config is deleted (Cilium
    /// waits 3 minutes).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3m")]
    pub drain_grace: std::time::Duration,
    /// Check the config and its filters directory (modules load, pins match, configs
    /// accepted) without connecting anywhere, then exit: 0 when it would run.
    #[arg(long)]
    pub check: bool,
}

/// `node`
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Config file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// Check the config and its filters directory (modules load, pins match, configs
    /// accepted) without connecting anywhere, then exit: 0 when it would run.
    #[arg(long)]
    pub check: bool,
}

/// `status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Address of the `meshfilter mesh` HTTP endpoint.
    #[arg(long, default_value = "127.0.0.1:9964")]
    pub addr: String,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

/// `explain`
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// `<remote cluster>/<ip>`.
    pub target: String,
    /// Address of the `meshfilter mesh` HTTP endpoint.
    #[arg(long, default_value = "127.0.0.1:9964")]
    pub addr: String,
}

/// `export`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Config file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// Check the config and its filters directory (modules load, pins match, configs
    /// accepted) without connecting anywhere, then exit: 0 when it would run.
    #[arg(long)]
    pub check: bool,
}
