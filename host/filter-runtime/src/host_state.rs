//! The data of every store: [`StoreState`] (the host side of the filter interface, WASI,
//! limits, the read log) and what the runtime keeps beside it for one call: the endpoint,
//! for the methods interface 0.2 adds (`StoreState` serves 0.1), and the panic message a
//! trapping module left behind.
//!
//! A Rust module that panics says why before it traps, in one of two ways: a module built
//! with the guest SDK logs `panic: <message>` at level error through the host's `log`
//! function (the SDK installs that panic hook in `configure`); any other Rust module
//! writes std's `thread '...' panicked at <file>:<line>:<col>:\n<message>` to stderr. The
//! trap itself only says `wasm trap: wasm 'unreachable' instruction executed`, so the
//! runtime catches both during a call and puts the message into the failure
//! ([`CallFailure::Trap`](crate::CallFailure)), where `filter test`, logs and status show it.

use std::sync::Arc;

use wasmtime::component::Resource;
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::input::{EndpointHandle, EndpointInput, MissHandle, MissInput};
use crate::memo::ReadLog;
use crate::store::StoreState;
use crate::truncate::{MAX_ERROR_BYTES, truncate};

/// What the SDK's panic hook puts before a panic message in its error-level log line.
const SDK_PANIC_PREFIX: &str = "panic: ";

/// What std's default panic hook writes before the location of a panic.
const STD_PANIC_MARKER: &str = "panicked at ";

/// Everything a store holds.
pub(crate) struct HostState {
    /// The host side of the filter interface (its 0.1 line).
    pub(crate) store: StoreState,
    /// The current call's endpoint, for what interface 0.2 adds.
    endpoint: Option<Arc<EndpointInput>>,
    /// The panic message of this call, from the SDK's panic hook.
    panic: Option<String>,
    /// The last bytes the module wrote to stdout or stderr in this call, at most
    /// [`MAX_ERROR_BYTES`]: where std's own panic hook leaves its message.
    output_tail: Vec<u8>,
}

impl HostState {
    pub(crate) fn new(store: StoreState) -> HostState {
        HostState {
            store,
            endpoint: None,
            panic: None,
            output_tail: Vec::new(),
        }
    }

    /// Forgets what the previous call left: called before every guest call.
    pub(crate) fn start_call(&mut self) {
        self.panic = None;
        self.output_tail.clear();
    }

    /// Makes `input` the endpoint of the next call and returns the handle to pass.
    pub(crate) fn set_endpoint(
        &mut self,
        input: Arc<EndpointInput>,
    ) -> wasmtime::Result<Resource<EndpointHandle>> {
        self.endpoint = Some(input.clone());
        self.store.set_endpoint(input)
    }

    /// Makes `input` the miss request of the next call and returns the handle to pass.
    pub(crate) fn set_miss(
        &mut self,
        input: Arc<MissInput>,
    ) -> wasmtime::Result<Resource<MissHandle>> {
        self.store.set_miss(input)
    }

    /// Forgets the call's input so the store holds no reference to it while idle.
    pub(crate) fn clear_inputs(&mut self) {
        self.endpoint = None;
        self.store.clear_inputs();
    }

    /// The current call's endpoint and the read log, borrowed together.
    pub(crate) fn endpoint_and_reads(&mut self) -> (&EndpointInput, &mut ReadLog) {
        // The guest can only hold a borrow of the handle, valid during the call, and the
        // host sets the input before every call.
        (
            self.endpoint
                .as_deref()
                .expect("an endpoint is set during the call"),
            &mut self.store.reads,
        )
    }

    /// A line the module logged through the host: an SDK panic message is kept for the
    /// failure report.
    pub(crate) fn note_log(&mut self, error_level: bool, message: &str) {
        if error_level && let Some(panic) = message.strip_prefix(SDK_PANIC_PREFIX) {
            self.panic = Some(truncate(panic, MAX_ERROR_BYTES).into_owned());
        }
    }

    /// Bytes the module wrote to stdout or stderr; only the last [`MAX_ERROR_BYTES`] of a
    /// call are kept.
    pub(crate) fn note_output(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(MAX_ERROR_BYTES);
        let bytes = &bytes[bytes.len() - keep..];
        let overflow = (self.output_tail.len() + keep).saturating_sub(MAX_ERROR_BYTES);
        self.output_tail.drain(..overflow);
        self.output_tail.extend_from_slice(bytes);
    }

    /// The panic message of the current call, if the module left one: the SDK's, else the
    /// one std wrote to stderr (location and message on one line).
    pub(crate) fn panic_message(&self) -> Option<String> {
        if let Some(panic) = &self.panic {
            return Some(panic.clone());
        }
        let tail = String::from_utf8_lossy(&self.output_tail);
        let at = tail.rfind(STD_PANIC_MARKER)?;
        let text = tail[at..]
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
            .collect::<Vec<_>>()
            .join(" ");
        Some(text)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.store.ctx()
    }
}

/// Where WASI output writes are reported, so a panic message written to stderr can be
/// found after the trap (see the module docs).
pub(crate) trait OutputTap {
    /// `bytes` were written to stdout or stderr.
    fn tap(&mut self, bytes: &[u8]);
}

impl OutputTap for HostState {
    fn tap(&mut self, bytes: &[u8]) {
        self.note_output(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Locality;
    use crate::memory::MemoryBudget;
    use crate::metrics::FilterMetrics;
    use crate::store::{GuestLog, StoreLimitsConfig};

    fn state() -> HostState {
        let config = StoreLimitsConfig {
            memory_bytes: 1 << 20,
            log_lines_per_second: 10,
        };
        HostState::new(StoreState::new(
            &config,
            MemoryBudget::new(1 << 20),
            Arc::new(Locality::cluster("c")),
            Arc::new(GuestLog::new("m.wasm".into(), 10, FilterMetrics::default())),
        ))
    }

    #[test]
    fn the_sdk_panic_line_is_the_message() {
        let mut s = state();
        s.note_log(false, "panic: not at error level");
        assert_eq!(s.panic_message(), None);
        s.note_log(true, "something else");
        assert_eq!(s.panic_message(), None);
        s.note_log(true, "panic: panicked at src/lib.rs:3:5:\nboom");
        assert_eq!(
            s.panic_message().as_deref(),
            Some("panicked at src/lib.rs:3:5:\nboom")
        );
        s.start_call();
        assert_eq!(s.panic_message(), None, "a new call forgets it");
    }

    #[test]
    fn std_panic_output_is_found_in_the_output_tail() {
        let mut s = state();
        s.note_output(b"hello\nthread '<unnamed>' panicked at src/lib.rs:9:1:\n");
        s.note_output(b"misbehave: trap\nnote: run with `RUST_BACKTRACE=1` to display\n");
        assert_eq!(
            s.panic_message().as_deref(),
            Some("panicked at src/lib.rs:9:1: misbehave: trap")
        );
    }

    #[test]
    fn the_output_tail_stays_bounded() {
        let mut s = state();
        for _ in 0..10 {
            s.note_output(&[b'x'; 3000]);
        }
        assert_eq!(s.output_tail.len(), MAX_ERROR_BYTES);
        s.note_output(&vec![b'y'; 3 * MAX_ERROR_BYTES]);
        assert_eq!(s.output_tail, vec![b'y'; MAX_ERROR_BYTES]);
        assert_eq!(s.panic_message(), None);
    }
}
