//! Two filter sets over one snapshot: what changes, and what it costs each consumer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use meshfilter_filter_runtime::{
    Decided, EndpointInput, ExportDecision, FilterRuntime, LoadError, Locality,
};
use serde::Serialize;

use crate::error::WhatIfError;
use crate::snapshot::Snapshot;

/// Agent memory per remote endpoint, for the estimate: "about 5 KB", the figure Cilium's
/// CFP-39876 measured. An estimate, labelled as one wherever it is shown.
pub const AGENT_BYTES_PER_REMOTE_ENDPOINT: u64 = 5_000;

/// Builds one side's runtime for a cluster (the filters see it as `local`).
pub type SideLoader<'a> = dyn Fn(Locality) -> Result<Arc<FilterRuntime>, LoadError> + Sync + 'a;

/// How a diff runs.
#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Example endpoints kept per change group.
    pub examples: usize,
    /// Worker threads (each evaluates whole clusters).
    pub threads: usize,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            examples: 3,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// What happens to an endpoint at one hook.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Fate {
    /// Export: not published.
    Skip,
    /// Export: published with this scope (`SyncScope` field value).
    Sync(Arc<str>),
    /// Import: mirrored.
    Keep,
    /// Import: published but not mirrored here.
    Drop,
    /// Import: not published, so never seen here.
    Unseen,
}

impl std::fmt::Display for Fate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fate::Skip => f.write_str("skip"),
            Fate::Sync(scope) => write!(f, "sync:{scope}"),
            Fate::Keep => f.write_str("keep"),
            Fate::Drop => f.write_str("drop"),
            Fate::Unseen => f.write_str("unseen"),
        }
    }
}

/// Endpoints whose fate changes the same way, for the same reason, in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeGroup {
    /// `export` or `import`.
    pub hook: &'static str,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Fate under the old filters.
    pub from: Fate,
    /// Fate under the new filters.
    pub to: Fate,
    /// The reason the deciding side gave (the new filters', or the old ones' when the new
    /// ones never saw the endpoint).
    pub reason: String,
    /// Decisions in the group (an import change counts once per consuming cluster).
    pub count: usize,
    /// A few of them: `cluster/namespace/pod` (and `-> consumer` for import).
    pub examples: Vec<String>,
}

/// Totals of one hook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookTotals {
    /// Decisions compared.
    pub compared: usize,
    /// Of those, decisions whose effect changes.
    pub changed: usize,
    /// Changes from out to in (skip -> sync, drop or unseen -> keep).
    pub started: usize,
    /// Changes from in to out: endpoints that would stop syncing.
    pub stopped: usize,
    /// Export only: still published, with another scope.
    pub rescoped: usize,
    /// Decisions the old filters made through their failure policy (a failed call).
    pub old_failures: usize,
    /// The same for the new filters.
    pub new_failures: usize,
}

/// The consequence for one consuming cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerImpact {
    /// The consuming cluster.
    pub cluster: String,
    /// Its nodes: each holds every mirrored entry in its ipcache.
    pub nodes: usize,
    /// Remote ipcache entries on each node under the old filters.
    pub entries_before: usize,
    /// The same under the new filters.
    pub entries_after: usize,
    /// Estimated agent memory for them, per node, old filters (an estimate:
    /// [`AGENT_BYTES_PER_REMOTE_ENDPOINT`] per entry).
    pub estimated_memory_before_bytes: u64,
    /// The same, new filters.
    pub estimated_memory_after_bytes: u64,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiffReport {
    /// Clusters in the snapshot.
    pub clusters: usize,
    /// Endpoints in the snapshot.
    pub endpoints: usize,
    /// Totals per hook (`export`, `import`).
    pub hooks: BTreeMap<&'static str, HookTotals>,
    /// Every change, grouped, largest groups first.
    pub changes: Vec<ChangeGroup>,
    /// Per consuming cluster.
    pub consumers: Vec<ConsumerImpact>,
    /// What the memory figures assume per remote endpoint.
    pub estimate_bytes_per_entry: u64,
    /// Wall time of the evaluation, in milliseconds.
    pub elapsed_ms: u64,
}

impl DiffReport {
    /// The largest number of entries any consumer would lose.
    pub fn max_removed(&self) -> usize {
        self.consumers
            .iter()
            .map(|c| c.entries_before.saturating_sub(c.entries_after))
            .max()
            .unwrap_or(0)
    }

    /// Endpoints that would stop being exported.
    pub fn stopped_exports(&self) -> usize {
        self.hooks.get("export").map_or(0, |h| h.stopped)
    }
}

/// Group key and accumulated group.
type GroupKey = (&'static str, String, Fate, Fate, Arc<str>);

#[derive(Default)]
struct Tally {
    totals: BTreeMap<&'static str, HookTotals>,
    groups: HashMap<GroupKey, (usize, Vec<String>)>,
}

impl Tally {
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per hook; a struct would only rename the arguments"
    )]
    fn record(
        &mut self,
        hook: &'static str,
        endpoint: &EndpointInput,
        consumer: Option<&str>,
        from: &Fate,
        to: &Fate,
        reason: impl FnOnce() -> Arc<str>,
        failures: (bool, bool),
        examples: usize,
    ) {
        let t = self.totals.entry(hook).or_default();
        t.compared += 1;
        t.old_failures += usize::from(failures.0);
        t.new_failures += usize::from(failures.1);
        if from == to {
            return;
        }
        t.changed += 1;
        match (is_in(from), is_in(to)) {
            (false, true) => t.started += 1,
            (true, false) => t.stopped += 1,
            _ => t.rescoped += 1,
        }
        let key = (
            hook,
            endpoint.namespace.clone(),
            from.clone(),
            to.clone(),
            reason(),
        );
        let group = self.groups.entry(key).or_default();
        group.0 += 1;
        if group.1.len() < examples {
            let name = format!(
                "{}/{}/{}",
                endpoint.origin.cluster,
                endpoint.namespace,
                if endpoint.pod_name.is_empty() {
                    &endpoint.ip
                } else {
                    &endpoint.pod_name
                }
            );
            group.1.push(match consumer {
                Some(c) => format!("{name} -> {c}"),
                None => name,
            });
        }
    }

    fn merge(&mut self, other: Tally) {
        for (hook, t) in other.totals {
            let mine = self.totals.entry(hook).or_default();
            mine.compared += t.compared;
            mine.changed += t.changed;
            mine.started += t.started;
            mine.stopped += t.stopped;
            mine.rescoped += t.rescoped;
            mine.old_failures += t.old_failures;
            mine.new_failures += t.new_failures;
        }
        for (key, (count, examples)) in other.groups {
            let mine = self.groups.entry(key).or_default();
            mine.0 += count;
            mine.1.extend(examples);
        }
    }
}

fn is_in(fate: &Fate) -> bool {
    matches!(fate, Fate::Sync(_) | Fate::Keep)
}

/// One endpoint's export under both sides, and the input its consumers' import hooks
/// would see (none when that side does not publish it).
struct Exported {
    old: Option<Arc<EndpointInput>>,
    new: Option<Arc<EndpointInput>>,
}

/// Runs `old` and `new` over `snapshot` the way the pipeline does: export at each
/// endpoint's cluster, then import at every other cluster of the snapshot.
pub fn diff(
    snapshot: &Snapshot,
    old: &SideLoader<'_>,
    new: &SideLoader<'_>,
    options: &DiffOptions,
) -> Result<DiffReport, WhatIfError> {
    let started = Instant::now();
    let clusters = &snapshot.clusters;
    let tally = Mutex::new(Tally::default());

    // Export, cluster by cluster, on every worker.
    let exported: Vec<Mutex<Vec<Exported>>> =
        clusters.iter().map(|_| Mutex::new(Vec::new())).collect();
    parallel(clusters.len(), options.threads, |i| {
        let cluster = &clusters[i];
        let (rt_old, rt_new) = load(old, new, cluster.locality())?;
        let mut local = Tally::default();
        let mut out = Vec::with_capacity(cluster.endpoints.len());
        let mut scopes = Interner::default();
        for endpoint in &cluster.endpoints {
            // The export hook never sees a recorded scope; copy only an endpoint that
            // carries one.
            let input = if endpoint.sync_scope.is_none() {
                endpoint.clone()
            } else {
                Arc::new(EndpointInput {
                    sync_scope: None,
                    ..(**endpoint).clone()
                })
            };
            let o = rt_old.decide_export(&input, None);
            let n = rt_new.decide_export(&input, None);
            let (from, to) = (
                export_fate(&o.decision, &mut scopes),
                export_fate(&n.decision, &mut scopes),
            );
            local.record(
                "export",
                endpoint,
                None,
                &from,
                &to,
                || reason_of(n.decision.reason()),
                (failed(&o.decided_by), failed(&n.decided_by)),
                options.examples,
            );
            let published = |fate: &Fate| match fate {
                Fate::Sync(scope) => Some(import_input(endpoint, scope)),
                _ => None,
            };
            let old_input = published(&from);
            let new_input = if from == to {
                old_input.clone()
            } else {
                published(&to)
            };
            out.push(Exported {
                old: old_input,
                new: new_input,
            });
        }
        *exported[i].lock().expect("not poisoned") = out;
        tally.lock().expect("not poisoned").merge(local);
        Ok(())
    })?;
    let exported: Vec<Vec<Exported>> = exported
        .into_iter()
        .map(|m| m.into_inner().expect("not poisoned"))
        .collect();

    // Import, consumer by consumer.
    let consumers: Mutex<Vec<ConsumerImpact>> = Mutex::new(Vec::new());
    parallel(clusters.len(), options.threads, |c| {
        let consumer = &clusters[c];
        let (rt_old, rt_new) = load(old, new, consumer.locality())?;
        let mut local = Tally::default();
        let (mut before, mut after) = (0, 0);
        for (s, source) in clusters.iter().enumerate() {
            if s == c {
                continue;
            }
            for (endpoint, e) in source.endpoints.iter().zip(&exported[s]) {
                if e.old.is_none() && e.new.is_none() {
                    continue;
                }
                let o = e.old.as_ref().map(|i| rt_old.decide_import(i, None));
                let n = e.new.as_ref().map(|i| rt_new.decide_import(i, None));
                let fate = |v: &Option<meshfilter_filter_runtime::Verdict<_>>| match v {
                    None => Fate::Unseen,
                    Some(v) if keeps(v) => Fate::Keep,
                    Some(_) => Fate::Drop,
                };
                let (from, to) = (fate(&o), fate(&n));
                before += usize::from(from == Fate::Keep);
                after += usize::from(to == Fate::Keep);
                let reason = || {
                    n.as_ref()
                        .or(o.as_ref())
                        .map(|v| reason_of(v.decision.reason()))
                        .unwrap_or_else(|| Arc::from(""))
                };
                local.record(
                    "import",
                    endpoint,
                    Some(&consumer.name),
                    &from,
                    &to,
                    reason,
                    (
                        o.as_ref().is_some_and(|v| failed(&v.decided_by)),
                        n.as_ref().is_some_and(|v| failed(&v.decided_by)),
                    ),
                    options.examples,
                );
            }
        }
        tally.lock().expect("not poisoned").merge(local);
        consumers
            .lock()
            .expect("not poisoned")
            .push(ConsumerImpact {
                cluster: consumer.name.clone(),
                nodes: consumer.nodes,
                entries_before: before,
                entries_after: after,
                estimated_memory_before_bytes: before as u64 * AGENT_BYTES_PER_REMOTE_ENDPOINT,
                estimated_memory_after_bytes: after as u64 * AGENT_BYTES_PER_REMOTE_ENDPOINT,
            });
        Ok(())
    })?;

    let tally = tally.into_inner().expect("not poisoned");
    let mut changes: Vec<ChangeGroup> = tally
        .groups
        .into_iter()
        .map(
            |((hook, namespace, from, to, reason), (count, mut examples))| {
                examples.sort();
                examples.truncate(options.examples);
                ChangeGroup {
                    hook,
                    namespace,
                    from,
                    to,
                    reason: reason.to_string(),
                    count,
                    examples,
                }
            },
        )
        .collect();
    changes.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| {
                (a.hook, &a.namespace, &a.from, &a.to).cmp(&(b.hook, &b.namespace, &b.from, &b.to))
            })
            .then_with(|| a.reason.cmp(&b.reason))
    });
    let mut consumers = consumers.into_inner().expect("not poisoned");
    consumers.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    let mut hooks = tally.totals;
    for hook in ["export", "import"] {
        hooks.entry(hook).or_default();
    }
    Ok(DiffReport {
        clusters: clusters.len(),
        endpoints: snapshot.endpoint_count(),
        hooks,
        changes,
        consumers,
        estimate_bytes_per_entry: AGENT_BYTES_PER_REMOTE_ENDPOINT,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

fn load(
    old: &SideLoader<'_>,
    new: &SideLoader<'_>,
    local: Locality,
) -> Result<(Arc<FilterRuntime>, Arc<FilterRuntime>), WhatIfError> {
    let rt_old = old(local.clone()).map_err(|error| WhatIfError::Load { side: "old", error })?;
    let rt_new = new(local).map_err(|error| WhatIfError::Load { side: "new", error })?;
    Ok((rt_old, rt_new))
}

/// Runs `work(i)` for `i in 0..n` on `threads` workers; the first error wins.
fn parallel(
    n: usize,
    threads: usize,
    work: impl Fn(usize) -> Result<(), WhatIfError> + Sync,
) -> Result<(), WhatIfError> {
    let next = AtomicUsize::new(0);
    let error: Mutex<Option<WhatIfError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, n.max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || error.lock().expect("not poisoned").is_some() {
                        return;
                    }
                    if let Err(e) = work(i) {
                        error.lock().expect("not poisoned").get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    match error.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What an importing cluster's filters see of a published endpoint: the scope recorded
/// as the exporter records it; no annotations (they do not travel through etcd).
fn import_input(endpoint: &EndpointInput, scope: &Arc<str>) -> Arc<EndpointInput> {
    Arc::new(EndpointInput {
        sync_scope: Some(scope.to_string()),
        annotations: BTreeMap::new(),
        namespace_annotations: BTreeMap::new(),
        ..endpoint.clone()
    })
}

fn export_fate(decision: &ExportDecision, scopes: &mut Interner) -> Fate {
    match decision.scope() {
        None => Fate::Skip,
        Some(scope) => Fate::Sync(scopes.get(&scope.to_field_value())),
    }
}

fn keeps(
    v: &meshfilter_filter_runtime::Verdict<meshfilter_filter_runtime::ImportDecision>,
) -> bool {
    v.decision.keeps()
}

fn failed(decided_by: &Decided) -> bool {
    matches!(decided_by, Decided::FailurePolicy { .. })
}

/// A reason as a group key (only changed decisions need one).
fn reason_of(reason: &str) -> Arc<str> {
    Arc::from(reason)
}

/// One shared string per distinct scope.
#[derive(Default)]
struct Interner(HashMap<String, Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(s.to_string(), a.clone());
        a
    }
}
