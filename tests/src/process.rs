//! meshfilter processes as operators run them: started from the binary under test, asked
//! over HTTP whether they are ready, stopped with SIGTERM and checked to exit cleanly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `meshfilter` binary a test runs. Only the binary crate's own tests know its path
/// (`CARGO_BIN_EXE_meshfilter`), so they make one with [`crate::meshfilter_binary!`].
#[derive(Debug, Clone)]
pub struct Binary {
    path: PathBuf,
}

/// The `meshfilter` binary of the crate whose test calls it.
#[macro_export]
macro_rules! meshfilter_binary {
    () => {
        $crate::process::Binary::new(env!("CARGO_BIN_EXE_meshfilter"))
    };
}

impl Binary {
    pub fn new(path: impl Into<PathBuf>) -> Binary {
        Binary { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A command for the binary with `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.args(args);
        cmd
    }

    /// Starts it with `args`, its output discarded.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meshfilter")
    }

    /// Starts it with `args`, its standard error appended to `log` (for the failure
    /// message of a test that waits on it).
    pub fn spawn_logged(&self, args: &[&str], log: &Path) -> Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the process log");
        self.command(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start meshfilter")
    }

    /// Runs it with `args` in `cwd` and collects its output.
    pub fn run_in(&self, args: &[&str], cwd: &Path) -> Output {
        self.command(args)
            .current_dir(cwd)
            .output()
            .expect("run meshfilter")
    }

    /// Runs it with `args` and collects its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run meshfilter")
    }

    /// Runs it with `args`: whether it succeeded, its stdout and its stderr.
    pub fn run_split(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.run(args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// The body of a GET, whatever the status; empty when nothing answers.
pub fn http_get(url: &str) -> String {
    match ureq::get(url).timeout(Duration::from_secs(5)).call() {
        Ok(r) => r.into_string().unwrap_or_default(),
        Err(ureq::Error::Status(_, r)) => r.into_string().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// `/status` of the role serving `addr`, as JSON.
pub fn status_json(addr: &str) -> serde_json::Value {
    let body = http_get(&format!("http://{addr}/status"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("status of {addr}: {e}: {body:?}"))
}

/// Waits until the role serving `addr` answers `/readyz` with `ready`; panics with `what`
/// after 30 s.
pub fn wait_ready(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&format!("http://{addr}/readyz")) != "ready" {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then waits for a clean exit.
pub fn stop(child: &mut Child, what: &str) {
    signal(child, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            assert!(code.success(), "{what}: exit status {code}");
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kill -9` and reap: the process gets no chance to clean up.
pub fn kill_9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `signal` (`-STOP`, `-CONT`, ...) with kill(1).
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {}", child.id());
}

/// Stdout and stderr of a finished process, as one text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
