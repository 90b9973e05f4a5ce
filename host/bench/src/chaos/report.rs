//! What a soak injected and what the check found, as `meshfilter bench chaos` prints it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::check::Comparison;

/// Differences listed when the check fails.
const LISTED: usize = 20;

/// The outcome of one soak.
#[derive(Debug, Clone, Default)]
pub struct ChaosReport {
    /// The seed of the fault sequence and the churn (`--seed` reproduces them).
    pub seed: u64,
    /// Remote clusters.
    pub remotes: usize,
    /// Endpoints per remote at start.
    pub endpoints: usize,
    /// How long churn and faults ran.
    pub churn: Duration,
    /// The whole run, set-up and check included.
    pub total: Duration,
    /// Faults injected, per kind (every kind listed, in a fixed order).
    pub faults: Vec<(&'static str, u32)>,
    /// Writes to the source etcds (puts and deletes).
    pub writes: u64,
    /// Writes that failed (an etcd was down or refilling).
    pub write_failures: u64,
    /// Resolves asked of the leader, by what was asked and the answer.
    pub resolves: BTreeMap<String, u32>,
    /// Times each process was started.
    pub starts: Vec<(String, u32)>,
    /// Times the exporter exited on its own (by design after losing its lock).
    pub exporter_exits: u32,
    /// Mesh replicas that exited without being told to: a crash.
    pub unexpected_exits: Vec<String>,
    /// Things that did not happen in time: a process that did not stop on SIGTERM, no
    /// ready leader after the faults healed.
    pub hangs: Vec<String>,
    /// Keys that were not written again after their lease was revoked (lost during the
    /// soak, whatever the end looked like).
    pub not_rewritten: Vec<String>,
    /// Observations that are not failures.
    pub notes: Vec<String>,
    /// The local cache against the model.
    pub cache: Comparison,
    /// The export etcd against the model.
    pub export: Comparison,
    /// How long after the check began the etcds matched the model; `None`: they never did.
    pub converged_after: Option<Duration>,
}

impl ChaosReport {
    /// Whether nothing was lost, nothing stale, every key on a live lease of its writer,
    /// and no process crashed or hung.
    pub fn passed(&self) -> bool {
        self.cache.is_clean()
            && self.export.is_clean()
            && self.unexpected_exits.is_empty()
            && self.hangs.is_empty()
            && self.not_rewritten.is_empty()
    }
}

/// `1m 5.2s`-style durations, to a tenth of a second.
fn secs(d: Duration) -> String {
    let tenths = d.as_millis() / 100;
    let (m, s) = (tenths / 600, (tenths % 600) as f64 / 10.0);
    if m > 0 {
        format!("{m}m {s:.1}s")
    } else {
        format!("{s:.1}s")
    }
}

impl fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chaos soak, seed {} (--seed {} replays the same faults and churn)",
            self.seed, self.seed
        )?;
        writeln!(
            f,
            "  {} remote clusters (remote-1 through meshfilter export), {} endpoints each; {} of churn, {} in all",
            self.remotes,
            self.endpoints,
            secs(self.churn),
            secs(self.total)
        )?;
        let injected: u32 = self.faults.iter().map(|(_, n)| n).sum();
        writeln!(f, "faults injected: {injected}")?;
        for (kind, n) in &self.faults {
            writeln!(f, "  {kind:<44} {n:>4}")?;
        }
        writeln!(
            f,
            "churn: {} source writes ({} failed while an etcd was down)",
            self.writes, self.write_failures
        )?;
        let asked: u32 = self.resolves.values().sum();
        writeln!(f, "resolves: {asked}")?;
        for (what, n) in &self.resolves {
            writeln!(f, "  {what:<44} {n:>4}")?;
        }
        let starts: Vec<String> = self
            .starts
            .iter()
            .map(|(p, n)| format!("{p} started {n}x"))
            .collect();
        writeln!(
            f,
            "processes: {}; exporter exits after losing its lock: {}",
            starts.join(", "),
            self.exporter_exits
        )?;
        for exit in &self.unexpected_exits {
            writeln!(f, "  CRASH: {exit}")?;
        }
        for hang in &self.hangs {
            writeln!(f, "  HANG: {hang}")?;
        }
        for lost in &self.not_rewritten {
            writeln!(f, "  LOST: {lost}")?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        writeln!(f, "check, after every lease of a dead writer expired:")?;
        writeln!(f, "  {}", self.cache)?;
        writeln!(f, "  {}", self.export)?;
        match self.converged_after {
            Some(d) => writeln!(f, "  matched the model {} into the check", secs(d))?,
            None => writeln!(f, "  never matched the model")?,
        }
        if !self.cache.is_clean() || !self.export.is_clean() {
            writeln!(f, "first differences:")?;
            for (etcd, (kind, d)) in [&self.cache, &self.export]
                .iter()
                .flat_map(|c| c.differences().map(move |d| (&c.etcd, d)))
                .take(LISTED)
            {
                writeln!(f, "  {etcd}: {kind}: {}: {}", d.key, d.detail)?;
            }
        }
        write!(f, "result: {}", if self.passed() { "PASS" } else { "FAIL" })
    }
}
