//! A TCP proxy in front of a server (an etcd), to cut the network between its clients and
//! it and heal it again, without touching either process: a partition as a client sees
//! it, every open connection reset and new ones refused.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One proxied connection: both sockets, so a cut can reset them, and whether the pipes
/// between them have ended (then it is forgotten, so a long run does not hold their
/// descriptors).
struct Link {
    client: TcpStream,
    server: TcpStream,
    closed: Arc<AtomicBool>,
}

impl Link {
    fn shut(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

/// What the accept thread and the handle share.
#[derive(Default)]
struct Shared {
    /// Cut: refuse new connections.
    cut: AtomicBool,
    /// Dropped: the accept thread ends.
    stop: AtomicBool,
    links: Mutex<Vec<Link>>,
}

impl Shared {
    /// The links; a panic elsewhere while holding them leaves nothing inconsistent.
    fn links(&self) -> MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Forwards a local port to an upstream address until cut; stops when dropped.
pub struct TcpProxy {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    /// [`TcpProxy::try_start`], panicking on failure (for tests).
    pub fn start(upstream: &str) -> TcpProxy {
        TcpProxy::try_start(upstream).unwrap_or_else(|e| panic!("TCP proxy to {upstream}: {e}"))
    }

    /// Listens on a free loopback port and forwards every connection to `upstream`
    /// (`host:port`), connecting to it anew for each: an upstream that restarts on the
    /// same port is reached again.
    pub fn try_start(upstream: &str) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_string();
        let accepting = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{port}"))
            .spawn(move || accept(listener, &upstream, &accepting))?;
        Ok(TcpProxy {
            port,
            shared,
            thread: Some(thread),
        })
    }

    /// The URL clients use.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Partition: every open connection is reset and new ones are refused.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::Relaxed);
        for link in self.shared.links().drain(..) {
            link.shut();
        }
    }

    /// Heals the partition: new connections go through again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::Relaxed);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::Relaxed)
    }
}

/// The accept loop (non-blocking, so a drop ends it within a few milliseconds).
fn accept(listener: TcpListener, upstream: &str, shared: &Shared) {
    while !shared.stop.load(Ordering::Relaxed) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if shared.cut.load(Ordering::Relaxed) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        // When the upstream is down (or descriptors run out) the client sees its
        // connection closed, as it would without the proxy.
        let _ = connect(client, upstream, shared);
    }
}

/// Connects `client` to `upstream` and starts the two pipes.
fn connect(client: TcpStream, upstream: &str, shared: &Shared) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let server = match TcpStream::connect(upstream) {
        Ok(server) => server,
        Err(e) => {
            let _ = client.shutdown(Shutdown::Both);
            return Err(e);
        }
    };
    let closed = Arc::new(AtomicBool::new(false));
    let link = Link {
        client: client.try_clone()?,
        server: server.try_clone()?,
        closed: closed.clone(),
    };
    let (client_in, server_out) = (client.try_clone()?, server.try_clone()?);
    {
        let mut links = shared.links();
        links.retain(|l| !l.closed.load(Ordering::Relaxed));
        links.push(link);
    }
    pipe(client_in, server_out, closed.clone());
    pipe(server, client, closed);
    Ok(())
}

/// Copies `from` to `to` until either side closes, then closes both and marks the link
/// closed.
fn pipe(mut from: TcpStream, mut to: TcpStream, closed: Arc<AtomicBool>) {
    let done = closed.clone();
    let spawned = std::thread::Builder::new()
        .name("tcp-proxy-pipe".into())
        .spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            closed.store(true, Ordering::Relaxed);
        });
    if spawned.is_err() {
        // No thread for this direction: the connection cannot work; forget it.
        done.store(true, Ordering::Relaxed);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.cut();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
