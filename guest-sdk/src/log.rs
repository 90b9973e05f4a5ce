//! Logging through the host.

use std::fmt;

/// Log level, mapped onto the host's tracing levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something an operator should look at, such as a bad annotation value.
    Warn,
    /// Something is broken.
    Error,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        })
    }
}

/// Writes one line through the host (Wasm) or to the test harness (native).
#[doc(hidden)]
pub fn log(level: Level, message: fmt::Arguments<'_>) {
    #[cfg(target_arch = "wasm32")]
    crate::wasm::log(level, &message.to_string());
    #[cfg(not(target_arch = "wasm32"))]
    crate::native::log(level, message.to_string());
}

/// Writes a line to the host's log, `format!`-style.
///
/// ```
/// use meshfilter_guest_sdk::{log, Level};
/// let value = "maybe";
/// log!(Level::Warn, "bad clustermesh.cilium.io/sync value {value:?}");
/// ```
///
/// The host tags each line with the module's name and rate-limits it. In a Wasm module the
/// line goes to the host; in native tests it goes to stderr and to the test thread's
/// buffer ([`testing::take_logs`](crate::testing::take_logs)). Decisions are memoised, so a
/// line logged by a hook appears once per distinct input, not once per endpoint.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::__private::log($level, ::core::format_args!($($arg)+))
    };
}

/// [`log!`] at [`Level::Info`].
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => {
        $crate::log!($crate::Level::Info, $($arg)+)
    };
}

/// [`log!`] at [`Level::Warn`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => {
        $crate::log!($crate::Level::Warn, $($arg)+)
    };
}
