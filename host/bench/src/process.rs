//! The meshfilter processes a soak or a benchmark runs (mesh replicas, an exporter):
//! started from the binary under test, signalled for real (SIGKILL, SIGTERM, SIGSTOP,
//! SIGCONT), and killed when the run ends, panics included.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use meshfilter_api::{MeshClient, MeshStatus};

use crate::error::BenchError;

/// One meshfilter process, started again as often as the soak wants.
pub(crate) struct Process {
    /// Its name in the report and the log file name (`mesh-a`, `exporter`).
    pub(crate) name: String,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Sent SIGTERM: it is expected to exit.
    stopping: bool,
    /// `host:port` of its admin endpoint (`/status`, `/readyz`, `/resolve`).
    pub(crate) admin: String,
    /// Times started.
    pub(crate) starts: u32,
}

/// Quiet enough for long runs, enough to tell what happened after a failure.
const CHILD_LOG: &str = "warn,meshfilter=info,meshfilter_sync=info";

impl Process {
    /// A process running `binary args`, logging into `log`, serving on `admin`; not started.
    pub(crate) fn new(
        name: &str,
        binary: &Path,
        args: Vec<String>,
        log: PathBuf,
        admin: String,
    ) -> Process {
        Process {
            name: name.to_string(),
            binary: binary.to_path_buf(),
            args,
            log,
            child: None,
            paused: false,
            stopping: false,
            admin,
            starts: 0,
        }
    }

    /// Starts it (it must not be running). Its standard error goes to the log, appended.
    pub(crate) fn start(&mut self) -> Result<(), BenchError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(BenchError::io(&self.log))?;
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", CHILD_LOG);
        }
        let child = command.spawn().map_err(|source| BenchError::Spawn {
            process: self.name.clone(),
            source,
        })?;
        tracing::debug!(process = %self.name, pid = child.id(), "started");
        self.child = Some(child);
        self.paused = false;
        self.stopping = false;
        self.starts += 1;
        Ok(())
    }

    /// Its process ID while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until `/readyz` says ready; fails if it exits or `timeout` passes first.
    pub(crate) fn wait_ready(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        let url = format!("http://{}/readyz", self.admin);
        loop {
            if let Ok(r) = ureq::get(&url).timeout(Duration::from_secs(1)).call()
                && r.into_string().unwrap_or_default() == "ready"
            {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                return Err(BenchError::Exited {
                    process: self.name.clone(),
                    status: status.to_string(),
                    log: self.log.clone(),
                });
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout {
                    what: format!(
                        "{} to become ready (log: {})",
                        self.name,
                        self.log.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether it was started and not reaped since (it may be paused or exiting).
    pub(crate) fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// Whether it runs and answers: started, not paused, not stopping.
    pub(crate) fn is_serving(&self) -> bool {
        self.child.is_some() && !self.paused && !self.stopping
    }

    fn signal(&self, signal: libc::c_int) {
        let Some(child) = &self.child else { return };
        let Ok(pid) = libc::pid_t::try_from(child.id()) else {
            return;
        };
        // SAFETY: kill(2) has no memory-safety preconditions. The pid is our own child's,
        // not reaped yet (we hold its `Child` and reap only through it), so it cannot
        // have been reused by another process.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// `kill -9` and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
        self.stopping = false;
    }

    /// SIGTERM: a graceful stop; [`Process::exited`] tells when it is over.
    pub(crate) fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        self.stopping = true;
    }

    /// SIGSTOP: frozen, holding its leases and lock without renewing them.
    pub(crate) fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// SIGCONT.
    pub(crate) fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// Whether it was sent SIGTERM and has not been reaped.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping && self.child.is_some()
    }

    /// If it has exited, reaps it and says how.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        self.paused = false;
        self.stopping = false;
        Some(status)
    }

    /// `/status`, if it is a serving mesh replica that answers within a second.
    pub(crate) fn mesh_status(&self) -> Option<MeshStatus> {
        if !self.is_serving() {
            return None;
        }
        MeshClient::new(&self.admin, Duration::from_secs(1))
            .status()
            .ok()
    }

    /// `/status` as JSON, for the exporter (its status is not a [`MeshStatus`]).
    pub(crate) fn json_status(&self) -> Option<serde_json::Value> {
        if !self.is_serving() {
            return None;
        }
        let resp = ureq::get(&format!("http://{}/status", self.admin))
            .timeout(Duration::from_secs(1))
            .call()
            .ok()?;
        serde_json::from_str(&resp.into_string().ok()?).ok()
    }

    /// A client of its API.
    pub(crate) fn client(&self) -> MeshClient {
        MeshClient::new(&self.admin, Duration::from_secs(1))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.kill();
    }
}
