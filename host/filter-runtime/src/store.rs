//! Per-store state: the host side of the filter interface, deny-by-default WASI, limits and
//! the read log that feeds memoisation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::meshfilter::filter::{host, types};
use crate::input::{EndpointHandle, EndpointInput, Locality, MissHandle, MissInput};
use crate::memo::{ReadLog, ReadOp, encode};
use crate::memory::{MemoryBudget, StoreLimiter};
use crate::metrics::FilterMetrics;
use crate::truncate::{MAX_LOG_LINE_BYTES, TextKind, truncate_len};

/// Limits applied to every store.
#[derive(Debug, Clone)]
pub struct StoreLimitsConfig {
    /// Linear memory a module may grow to.
    pub memory_bytes: usize,
    /// Guest log lines (host `log` calls and stdout/stderr lines) per second per module.
    pub log_lines_per_second: u32,
}

/// Rate-capped sink for one module's log lines, shared by all its stores.
pub(crate) struct GuestLog {
    module: Arc<str>,
    bucket: Mutex<TokenBucket>,
    metrics: FilterMetrics,
}

struct TokenBucket {
    tokens: f64,
    capacity: f64,
    per_second: f64,
    last: Instant,
    dropped: u64,
}

impl GuestLog {
    pub(crate) fn new(module: Arc<str>, lines_per_second: u32, metrics: FilterMetrics) -> GuestLog {
        let capacity = f64::from(lines_per_second.max(1));
        GuestLog {
            module,
            bucket: Mutex::new(TokenBucket {
                tokens: capacity,
                capacity,
                per_second: capacity,
                last: Instant::now(),
                dropped: 0,
            }),
            metrics,
        }
    }

    fn emit(&self, level: host::Level, message: &str) {
        self.emit_line(level, message, message.len());
    }

    /// Logs `text`, the first bytes of a line `total` bytes long, cut to
    /// [`MAX_LOG_LINE_BYTES`]: a module cannot make one log line larger than that.
    fn emit_line(&self, level: host::Level, text: &str, total: usize) {
        let dropped_before = {
            let mut b = self.bucket.lock();
            let now = Instant::now();
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * b.per_second)
                .min(b.capacity);
            b.last = now;
            if b.tokens < 1.0 {
                b.dropped += 1;
                self.metrics.guest_log_dropped(&self.module);
                return;
            }
            b.tokens -= 1.0;
            std::mem::take(&mut b.dropped)
        };
        if dropped_before > 0 {
            tracing::warn!(module = %self.module, dropped = dropped_before, "guest log lines dropped by the rate cap");
        }
        let message = truncate_len(text, total, TextKind::LogLine.limit());
        if let std::borrow::Cow::Owned(_) = message {
            self.metrics
                .truncated(&self.module, TextKind::LogLine.as_str());
        }
        let module = &*self.module;
        match level {
            host::Level::Trace => tracing::trace!(target: "meshfilter::guest", module, "{message}"),
            host::Level::Debug => tracing::debug!(target: "meshfilter::guest", module, "{message}"),
            host::Level::Info => tracing::info!(target: "meshfilter::guest", module, "{message}"),
            host::Level::Warn => tracing::warn!(target: "meshfilter::guest", module, "{message}"),
            host::Level::Error => tracing::error!(target: "meshfilter::guest", module, "{message}"),
        }
    }
}

/// Guest stdout/stderr: complete lines go to the module's log; a partial line is kept
/// until its newline arrives, its first [`MAX_LOG_LINE_BYTES`] only, so a line without
/// end holds bounded memory.
#[derive(Clone)]
struct GuestOutput {
    log: Arc<GuestLog>,
    level: host::Level,
    partial: Arc<Mutex<PartialLine>>,
}

/// The line being written: its kept head and its full length so far.
#[derive(Default)]
struct PartialLine {
    head: Vec<u8>,
    len: usize,
}

impl GuestOutput {
    fn push(&self, bytes: &[u8]) {
        let mut partial = self.partial.lock();
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let (text, complete) = match line.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (line, false),
            };
            let room = MAX_LOG_LINE_BYTES.saturating_sub(partial.head.len());
            partial
                .head
                .extend_from_slice(&text[..text.len().min(room)]);
            partial.len += text.len();
            if complete {
                let head = String::from_utf8_lossy(&partial.head).into_owned();
                self.log
                    .emit_line(self.level, &head, partial.len.max(head.len()));
                partial.head.clear();
                partial.len = 0;
            }
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.push(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A clock that never moves: decisions must not depend on time, or memoising them would
/// be wrong. The wall clock reads as the Unix epoch.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Everything a store holds.
pub(crate) struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimiter,
    pub(crate) reads: ReadLog,
    local: Arc<Locality>,
    log: Arc<GuestLog>,
    endpoint: Option<Arc<EndpointInput>>,
    miss: Option<Arc<MissInput>>,
    endpoint_handle: Option<Resource<EndpointHandle>>,
    miss_handle: Option<Resource<MissHandle>>,
}

impl StoreState {
    pub(crate) fn new(
        config: &StoreLimitsConfig,
        budget: Arc<MemoryBudget>,
        local: Arc<Locality>,
        log: Arc<GuestLog>,
    ) -> StoreState {
        let stdout = GuestOutput {
            log: log.clone(),
            level: host::Level::Info,
            partial: Default::default(),
        };
        let stderr = GuestOutput {
            log: log.clone(),
            level: host::Level::Warn,
            partial: Default::default(),
        };
        // Deny by default: no preopened directories, no environment, no arguments, no
        // network (sockets and name lookup disabled), stdin closed. Clocks are frozen and
        // random numbers come from a fixed seed so a module is a pure function of its
        // inputs; std's HashMap still works.
        let wasi = WasiCtx::builder()
            .stdout(stdout)
            .stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![
                0x5a, 0xa5, 0x3c, 0xc3,
            ]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![0x17, 0x71]))
            .insecure_random_seed(0x6d65_7368_6669_6c74)
            .build();
        let limits = StoreLimiter::new(budget, config.memory_bytes);
        StoreState {
            wasi,
            table: ResourceTable::new(),
            limits,
            reads: ReadLog::default(),
            local,
            log,
            endpoint: None,
            miss: None,
            endpoint_handle: None,
            miss_handle: None,
        }
    }

    /// Makes `input` the endpoint of the next call and returns the handle to pass.
    pub(crate) fn set_endpoint(
        &mut self,
        input: Arc<EndpointInput>,
    ) -> wasmtime::Result<Resource<EndpointHandle>> {
        self.endpoint = Some(input);
        let handle = match &self.endpoint_handle {
            Some(h) => h,
            None => self
                .endpoint_handle
                .insert(self.table.push(EndpointHandle)?),
        };
        Ok(Resource::new_borrow(handle.rep()))
    }

    /// Makes `input` the miss request of the next call and returns the handle to pass.
    pub(crate) fn set_miss(
        &mut self,
        input: Arc<MissInput>,
    ) -> wasmtime::Result<Resource<MissHandle>> {
        self.miss = Some(input);
        let handle = match &self.miss_handle {
            Some(h) => h,
            None => self.miss_handle.insert(self.table.push(MissHandle)?),
        };
        Ok(Resource::new_borrow(handle.rep()))
    }

    /// Forgets the call's input so the store holds no reference to it while idle.
    pub(crate) fn clear_inputs(&mut self) {
        self.endpoint = None;
        self.miss = None;
    }

    /// The current call's endpoint and the read log, borrowed together.
    fn endpoint(&mut self) -> (&EndpointInput, &mut ReadLog) {
        // The guest can only hold a borrow of the handle, valid during the call, and the
        // host sets the input before every call.
        (
            self.endpoint
                .as_deref()
                .expect("an endpoint is set during the call"),
            &mut self.reads,
        )
    }

    /// The current call's miss request and the read log, borrowed together.
    fn miss(&mut self) -> (&MissInput, &mut ReadLog) {
        (
            self.miss
                .as_deref()
                .expect("a miss request is set during the call"),
            &mut self.reads,
        )
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn to_wit_locality(l: &Locality) -> types::Locality {
    types::Locality {
        cluster: l.cluster.clone(),
        zone: l.zone.clone(),
        region: l.region.clone(),
    }
}

impl types::Host for StoreState {}

impl types::HostEndpoint for StoreState {
    fn namespace(&mut self, _: Resource<EndpointHandle>) -> String {
        let (ep, reads) = self.endpoint();
        reads.record(ReadOp::Namespace, |o| encode::str(o, &ep.namespace));
        ep.namespace.clone()
    }

    fn pod_name(&mut self, _: Resource<EndpointHandle>) -> String {
        let (ep, reads) = self.endpoint();
        reads.record(ReadOp::PodName, |o| encode::str(o, &ep.pod_name));
        ep.pod_name.clone()
    }

    fn ip(&mut self, _: Resource<EndpointHandle>) -> String {
        let (ep, reads) = self.endpoint();
        reads.record(ReadOp::Ip, |o| encode::str(o, &ep.ip));
        ep.ip.clone()
    }

    fn node_ip(&mut self, _: Resource<EndpointHandle>) -> Option<String> {
        let (ep, reads) = self.endpoint();
        reads.record(ReadOp::NodeIp, |o| {
            encode::opt_str(o, ep.node_ip.as_deref())
        });
        ep.node_ip.clone()
    }

    fn identity(&mut self, _: Resource<EndpointHandle>) -> u32 {
        let (ep, reads) = self.endpoint();
        reads.record(ReadOp::Identity, |o| encode::u32(o, ep.identity));
        ep.identity
    }

    fn service_account(&mut self, _: Resource<EndpointHandle>) -> Option<String> {
        let (ep, reads) = self.endpoint();
        reads.record(ReadOp::ServiceAccount, |o| {
            encode::opt_str(o, ep.service_account.as_deref())
        });
        ep.service_account.clone()
    }

    fn label(&mut self, _: Resource<EndpointHandle>, key: String) -> Option<String> {
        let (ep, reads) = self.endpoint();
        let value = ep.labels.get(&key);
        reads.record(ReadOp::Label(key.into()), |o| {
            encode::opt_str(o, value.map(String::as_str))
        });
        value.cloned()
    }

    fn labels(&mut self, _: Resource<EndpointHandle>) -> Vec<(String, String)> {
        let (ep, reads) = self.endpoint();
        reads.record(ReadOp::Labels, |o| encode::pairs(o, ep.labels.iter()));
        ep.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn annotation(&mut self, _: Resource<EndpointHandle>, key: String) -> Option<String> {
        let (ep, reads) = self.endpoint();
        let value = ep.annotations.get(&key);
        reads.record(ReadOp::Annotation(key.into()), |o| {
            encode::opt_str(o, value.map(String::as_str))
        });
        value.cloned()
    }

    fn namespace_annotation(&mut self, _: Resource<EndpointHandle>, key: String) -> Option<String> {
        let (ep, reads) = self.endpoint();
        let value = ep.namespace_annotations.get(&key);
        reads.record(ReadOp::NamespaceAnnotation(key.into()), |o| {
            encode::opt_str(o, value.map(String::as_str))
        });
        value.cloned()
    }

    fn sync_scope(&mut self, _: Resource<EndpointHandle>) -> Option<String> {
        let (ep, reads) = self.endpoint();
        reads.record(ReadOp::SyncScope, |o| {
            encode::opt_str(o, ep.sync_scope.as_deref())
        });
        ep.sync_scope.clone()
    }

    fn origin(&mut self, _: Resource<EndpointHandle>) -> types::Locality {
        let (ep, reads) = self.endpoint();
        reads.record(ReadOp::Origin, |o| encode::locality(o, &ep.origin));
        to_wit_locality(&ep.origin)
    }

    fn drop(&mut self, r: Resource<EndpointHandle>) -> wasmtime::Result<()> {
        // Handles are owned by the host and removed after each call; a guest drop of a
        // borrow never reaches here, but an owned handle would be released.
        if r.owned() {
            self.table.delete(r)?;
        }
        Ok(())
    }
}

impl types::HostMissRequest for StoreState {
    fn address(&mut self, _: Resource<MissHandle>) -> String {
        let (m, reads) = self.miss();
        reads.record(ReadOp::MissAddress, |o| encode::str(o, &m.address));
        m.address.clone()
    }

    fn covering_prefix(&mut self, _: Resource<MissHandle>) -> Option<String> {
        let (m, reads) = self.miss();
        reads.record(ReadOp::CoveringPrefix, |o| {
            encode::opt_str(o, m.covering_prefix.as_deref())
        });
        m.covering_prefix.clone()
    }

    fn tunnel_endpoint(&mut self, _: Resource<MissHandle>) -> Option<String> {
        let (m, reads) = self.miss();
        reads.record(ReadOp::TunnelEndpoint, |o| {
            encode::opt_str(o, m.tunnel_endpoint.as_deref())
        });
        m.tunnel_endpoint.clone()
    }

    fn local_node(&mut self, _: Resource<MissHandle>) -> String {
        let (m, reads) = self.miss();
        reads.record(ReadOp::LocalNode, |o| encode::str(o, &m.local_node));
        m.local_node.clone()
    }

    fn candidates(&mut self, _: Resource<MissHandle>) -> Vec<types::Candidate> {
        let (m, reads) = self.miss();
        reads.record(ReadOp::Candidates, |o| encode::candidates(o, &m.candidates));
        m.candidates
            .iter()
            .map(|c| types::Candidate {
                locality: to_wit_locality(&c.locality),
                owns_prefix: c.owns_prefix,
            })
            .collect()
    }

    fn drop(&mut self, r: Resource<MissHandle>) -> wasmtime::Result<()> {
        if r.owned() {
            self.table.delete(r)?;
        }
        Ok(())
    }
}

impl host::Host for StoreState {
    fn log(&mut self, level: host::Level, message: String) {
        self.log.emit(level, &message);
    }

    fn local(&mut self) -> types::Locality {
        let local = self.local.clone();
        self.reads
            .record(ReadOp::Local, |o| encode::locality(o, &local));
        to_wit_locality(&local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(metrics: &FilterMetrics) -> GuestOutput {
        GuestOutput {
            log: Arc::new(GuestLog::new("m.wasm".into(), 1000, metrics.clone())),
            level: host::Level::Info,
            partial: Default::default(),
        }
    }

    #[test]
    fn lines_may_arrive_in_pieces() {
        let metrics = FilterMetrics::default();
        let out = output(&metrics);
        out.push(b"hel");
        out.push(b"lo\nwor");
        assert_eq!(out.partial.lock().head, b"wor");
        out.push(b"ld\n\n");
        assert!(out.partial.lock().head.is_empty());
        assert_eq!(out.partial.lock().len, 0);
        assert_eq!(metrics.truncated_count("m.wasm", "log"), 0);
    }

    #[test]
    fn an_endless_line_holds_bounded_memory_and_is_cut_once() {
        let metrics = FilterMetrics::default();
        let out = output(&metrics);
        let chunk = [b'x'; 4096];
        for _ in 0..100 {
            out.push(&chunk);
        }
        assert_eq!(out.partial.lock().head.len(), MAX_LOG_LINE_BYTES);
        assert_eq!(out.partial.lock().len, 409_600);
        assert_eq!(metrics.truncated_count("m.wasm", "log"), 0, "not ended yet");
        out.push(b"\nshort\n");
        assert_eq!(metrics.truncated_count("m.wasm", "log"), 1);
        assert!(out.partial.lock().head.is_empty());
    }

    #[test]
    fn a_long_host_log_line_is_cut_and_counted() {
        let metrics = FilterMetrics::default();
        let log = GuestLog::new("m.wasm".into(), 1000, metrics.clone());
        log.emit(host::Level::Warn, &"y".repeat(MAX_LOG_LINE_BYTES));
        assert_eq!(metrics.truncated_count("m.wasm", "log"), 0, "at the limit");
        log.emit(host::Level::Warn, &"y".repeat(MAX_LOG_LINE_BYTES + 1));
        assert_eq!(metrics.truncated_count("m.wasm", "log"), 1);
    }
}
