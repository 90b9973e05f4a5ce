//! Network namespaces for tests that send real packets: two pods, one per emulated
//! cluster, bridged through the test's own (root) namespace, which plays cluster A's
//! node. Everything made is deleted on drop, and again before it is made (a killed run
//! leaves nothing in the way of the next).
//!
//! Pod A is 203.0.113.1 in `ns_a`, reached from the root namespace through `host_a`;
//! pod B is 203.0.113.2 in `ns_b` and also answers on 198.51.100.7 and .8 (cluster B's
//! pod addresses), which pod A routes through it, as 198.18.0.0/15.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The port [`Server`] listens on.
pub const PORT: u16 = 8080;

/// Runs a command; panics with its stderr on failure, returns its stdout.
pub fn sh(args: &[&str]) -> Vec<u8> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Two pods bridged through the root namespace. Deleted on drop.
pub struct Pods {
    pub ns_a: String,
    pub ns_b: String,
    pub bridge: String,
    pub host_a: String,
    pub host_b: String,
}

impl Pods {
    /// Makes the namespaces, links and routes; `tag` keeps names of concurrent tests apart.
    pub fn new(tag: &str) -> Pods {
        let id = std::process::id() % 10_000;
        let p = Pods {
            ns_a: format!("mf-{tag}{id}-a"),
            ns_b: format!("mf-{tag}{id}-b"),
            bridge: format!("mf{tag}{id}br"),
            host_a: format!("mf{tag}{id}a"),
            host_b: format!("mf{tag}{id}b"),
        };
        p.cleanup();
        for ns in [&p.ns_a, &p.ns_b] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "link", "add", &p.bridge, "type", "bridge"]);
        sh(&["ip", "link", "set", &p.bridge, "up"]);
        for (host, ns, addr) in [
            (&p.host_a, &p.ns_a, "203.0.113.1/24"),
            (&p.host_b, &p.ns_b, "203.0.113.2/24"),
        ] {
            sh(&[
                "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            sh(&["ip", "link", "set", host, "master", &p.bridge, "up"]);
            sh(&["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"]);
            sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        }
        for addr in ["198.51.100.7/32", "198.51.100.8/32"] {
            sh(&["ip", "-n", &p.ns_b, "addr", "add", addr, "dev", "lo"]);
        }
        for net in ["198.51.100.0/24", "198.18.0.0/15"] {
            sh(&[
                "ip",
                "-n",
                &p.ns_a,
                "route",
                "add",
                net,
                "via",
                "203.0.113.2",
            ]);
        }
        p
    }

    fn cleanup(&self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        for link in [&self.host_a, &self.host_b, &self.bridge] {
            let _ = Command::new("ip")
                .args(["link", "del", link])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
}

/// A TCP echo-once server in pod B on both addresses.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &str) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = in_netns(ns, move || {
            let listener = TcpListener::bind(("0.0.0.0", PORT)).expect("bind in pod B");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let _ = stream.write_all(b"hello from cluster B\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server ready");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from pod A; returns how long establishing took, or the error.
pub fn connect_from(ns: &str, to: Ipv4Addr, timeout: Duration) -> Result<Duration, String> {
    in_netns(ns, move || {
        let started = Instant::now();
        let mut stream = TcpStream::connect_timeout(&SocketAddr::from((to, PORT)), timeout)
            .map_err(|e| format!("{e} after {:?}", started.elapsed()))?;
        let took = started.elapsed();
        let mut greeting = String::new();
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        stream
            .read_to_string(&mut greeting)
            .map_err(|e| e.to_string())?;
        assert_eq!(greeting, "hello from cluster B\n");
        Ok(took)
    })
    .join()
    .expect("client thread")
}
