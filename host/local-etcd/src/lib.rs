//! Throwaway fixtures for the demo, the benchmarks, the chaos soak and the tests:
//! - [`EtcdServer`]: real `etcd` processes started on free loopback ports with their own
//!   data directory (on tmpfs when there is one), killed and removed on drop;
//! - [`TcpProxy`]: a proxy in front of one, to partition its clients from it and heal;
//! - [`ConfigMapDir`]: a directory updated the way the kubelet updates a mounted
//!   ConfigMap, for what hot-reloads one (filters).

mod configmap;
pub mod proxy;

pub use configmap::ConfigMapDir;
pub use proxy::TcpProxy;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One etcd member.
pub struct EtcdServer {
    child: Option<Child>,
    data: tempfile::TempDir,
    name: String,
    client_port: u16,
    peer_port: u16,
    tls: Option<TlsFiles>,
    /// Bumped by [`EtcdServer::replace_with_fresh`]: part of the cluster token, so the
    /// fresh cluster gets a new cluster ID (etcd derives it from the token and members).
    generation: u32,
}

/// Certificates for an etcd that requires mutual TLS, made with the `openssl` command.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificate that signed both sides.
    pub ca: PathBuf,
    /// Server certificate (for 127.0.0.1) and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// Makes a CA, a server certificate for 127.0.0.1 and a client certificate in `dir`.
    pub fn generate(dir: &std::path::Path) -> Result<TlsFiles, String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| format!("openssl: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=meshfilter-test-ca",
        ])?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
            .map_err(|e| e.to_string())?;
        for (who, subject) in [("server", "/CN=etcd"), ("client", "/CN=meshfilter")] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                subject,
            ])?;
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ])?;
        }
        Ok(TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        })
    }
}

/// A loopback port nothing listens on right now: the one place every fixture, test and
/// soak gets its ports from.
pub fn try_free_port() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// [`try_free_port`], panicking when the machine has none (for tests).
pub fn free_port() -> u16 {
    try_free_port().expect("a free port")
}

/// Where data directories go: `MESHFILTER_ETCD_DATA_ROOT` if set (to measure on disk),
/// else tmpfs when the machine has one, else the temp dir.
pub fn data_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESHFILTER_ETCD_DATA_ROOT") {
        return PathBuf::from(dir);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

impl EtcdServer {
    /// Starts a fresh single-member cluster and waits until it answers; panics on failure
    /// (for tests).
    pub fn start(name: &str) -> EtcdServer {
        EtcdServer::try_start(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a fresh single-member cluster and waits until it answers.
    pub fn try_start(name: &str) -> Result<EtcdServer, String> {
        EtcdServer::try_start_with(name, false)
    }

    /// Starts a server that only accepts clients with a certificate signed by its CA;
    /// panics on failure (for tests).
    pub fn start_tls(name: &str) -> EtcdServer {
        EtcdServer::try_start_with(name, true).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A fresh data directory, with generated certificates when `tls`, and the server
    /// started on it.
    fn try_start_with(name: &str, tls: bool) -> Result<EtcdServer, String> {
        let data = tempfile::Builder::new()
            .prefix("meshfilter-etcd-")
            .tempdir_in(data_root())
            .map_err(|e| format!("etcd data dir: {e}"))?;
        let tls = if tls {
            Some(TlsFiles::generate(data.path())?)
        } else {
            None
        };
        let mut server = EtcdServer {
            child: None,
            data,
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            generation: 0,
        };
        server.try_spawn()?;
        Ok(server)
    }

    /// The certificates of a server started with [`EtcdServer::start_tls`].
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.data.path().join("etcd.log"))
            .map_err(|e| format!("etcd log: {e}"))?;
        let child = Command::new("etcd")
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("{}={peer}", self.name)])
            .args([
                "--initial-cluster-token",
                &format!(
                    "meshfilter-{}-{}-{}",
                    self.name, self.client_port, self.generation
                ),
            ])
            .args(["--log-level", "error", "--logger", "zap"])
            .args(self.tls_args())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start etcd ({e}); install the etcd-server package (scripts/setup.sh)"
                )
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn tls_args(&self) -> Vec<std::ffi::OsString> {
        let Some(t) = &self.tls else {
            return Vec::new();
        };
        vec![
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            t.ca.clone().into(),
            "--cert-file".into(),
            t.server_cert.clone().into(),
            "--key-file".into(),
            t.server_key.clone().into(),
        ]
    }

    fn etcdctl_tls_args(&self) -> Vec<std::ffi::OsString> {
        let Some(t) = &self.tls else {
            return Vec::new();
        };
        vec![
            "--cacert".into(),
            t.ca.clone().into(),
            "--cert".into(),
            t.client_cert.clone().into(),
            "--key".into(),
            t.client_key.clone().into(),
        ]
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = self.endpoint();
        while Instant::now() < deadline {
            if let Ok(out) = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &addr,
                    "--command-timeout=1s",
                    "endpoint",
                    "health",
                ])
                .args(self.etcdctl_tls_args())
                .output()
                && out.status.success()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "etcd {} did not become healthy; log: {}",
            self.name,
            self.log()
        ))
    }

    /// The etcd log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default()
    }

    /// Client URL, e.g. `http://127.0.0.1:23790` (`https` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// Kills the server with SIGKILL, keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// [`EtcdServer::try_restart`], panicking on failure (for tests).
    pub fn restart(&mut self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Restarts a killed server on the same ports and data (same cluster ID) and waits
    /// until it answers.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        self.try_spawn()
    }

    /// [`EtcdServer::try_replace_with_fresh`], panicking on failure (for tests).
    pub fn replace_with_fresh(&mut self) {
        self.try_replace_with_fresh()
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Restarts on the same ports with an empty data directory: a new etcd cluster with
    /// a new cluster ID, as when a clustermesh-apiserver pod with its ephemeral etcd is
    /// replaced. Waits until it answers.
    pub fn try_replace_with_fresh(&mut self) -> Result<(), String> {
        self.kill();
        let _ = std::fs::remove_dir_all(self.data.path().join("data"));
        self.generation += 1;
        self.try_spawn()
    }

    /// Whether the server process runs (it was not killed, or was started again).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
