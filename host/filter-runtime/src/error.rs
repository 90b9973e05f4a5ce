//! Errors of the filter runtime, carrying what an operator needs to act.

use std::path::PathBuf;

/// Why a module or a filter set could not be loaded. A failed load never replaces a
/// serving generation.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading a file failed.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The filter manifest is invalid.
    #[error("invalid filter manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The module is larger than allowed.
    #[error("module {module} is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// Module file name.
        module: String,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The module's sha256 differs from the pinned one.
    #[error(
        "module {module} has sha256 {actual}, but the host config pins {expected}: refusing it"
    )]
    PinMismatch {
        /// Module file name.
        module: String,
        /// Pinned digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// The file is not a valid WebAssembly component.
    #[error("module {module} is not a valid WebAssembly component: {reason}")]
    Corrupt {
        /// Module file name.
        module: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The module carries no or unreadable metadata.
    #[error(
        "module {module} has no usable meshfilter-metadata section ({reason}); was it built with the meshfilter guest SDK?"
    )]
    Metadata {
        /// Module file name.
        module: String,
        /// What is wrong.
        reason: String,
    },
    /// The module was built for an interface this host does not speak.
    #[error(
        "module {module} ({name}) was built for interface {found}; this host speaks {expected}"
    )]
    Interface {
        /// Module file name.
        module: String,
        /// Filter name from its metadata.
        name: String,
        /// `package@version` the module was built for.
        found: String,
        /// The `package@version`s this host speaks: the current line and the previous one.
        expected: String,
    },
    /// Compilation or linking failed.
    #[error("module {module} failed to {step}: {reason}")]
    Link {
        /// Module file name.
        module: String,
        /// compile, link or instantiate.
        step: &'static str,
        /// wasmtime's error.
        reason: String,
    },
    /// The module's `configure` rejected its config.
    #[error("module {module} rejected its config: {message}")]
    ConfigRejected {
        /// Module file name.
        module: String,
        /// The module's message.
        message: String,
    },
    /// The module's self-test, or a probe call, failed.
    #[error("module {module} failed its self-test: {message}")]
    SelfTest {
        /// Module file name.
        module: String,
        /// What failed.
        message: String,
    },
    /// Setting up the engine or the file watcher failed.
    #[error("filter runtime setup failed: {0}")]
    Setup(String),
}

/// Why one decision call failed. Messages are bounded by
/// [`MAX_ERROR_BYTES`](crate::MAX_ERROR_BYTES).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CallFailure {
    /// The module trapped (panic, unreachable, bad memory access...).
    #[error("module {module} trapped: {message}")]
    Trap {
        /// Module file name.
        module: String,
        /// The trap.
        message: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("module {module} ran past its {deadline_ms} ms deadline and was interrupted")]
    Timeout {
        /// Module file name.
        module: String,
        /// The deadline.
        deadline_ms: u64,
    },
    /// The module called a WASI function that would wait (sleeping, polling, a blocking
    /// read). Epoch deadlines cannot interrupt a host call, so the host refuses every such
    /// call at once rather than let a filter hold the thread.
    #[error("module {module} called a blocking WASI function ({function}); filters must not block")]
    Blocked {
        /// Module file name.
        module: String,
        /// The WASI interface and function, e.g. `wasi:io/poll.poll`.
        function: String,
    },
    /// The module tried to grow its memory past its own limit or the process-wide budget.
    #[error("module {module} exceeded its memory limit: {message}")]
    OutOfMemory {
        /// Module file name.
        module: String,
        /// Details.
        message: String,
    },
    /// A fresh instance could not be created.
    #[error("module {module} could not be instantiated: {message}")]
    Instantiate {
        /// Module file name.
        module: String,
        /// Details.
        message: String,
    },
}

impl CallFailure {
    /// Short kind label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Trap { .. } => "trap",
            CallFailure::Timeout { .. } => "timeout",
            CallFailure::Blocked { .. } => "blocked",
            CallFailure::OutOfMemory { .. } => "out-of-memory",
            CallFailure::Instantiate { .. } => "instantiate",
        }
    }
}

impl LoadError {
    /// The module file the error is about, when it is about one.
    pub fn module(&self) -> Option<&str> {
        match self {
            LoadError::TooLarge { module, .. }
            | LoadError::PinMismatch { module, .. }
            | LoadError::Corrupt { module, .. }
            | LoadError::Metadata { module, .. }
            | LoadError::Interface { module, .. }
            | LoadError::Link { module, .. }
            | LoadError::ConfigRejected { module, .. }
            | LoadError::SelfTest { module, .. } => Some(module),
            LoadError::Read { .. } | LoadError::Manifest { .. } | LoadError::Setup(_) => None,
        }
    }

    /// Cuts every free-text field (the parts a module or a parser chose) to
    /// [`MAX_ERROR_BYTES`](crate::MAX_ERROR_BYTES); true if anything was cut.
    pub(crate) fn bound(&mut self) -> bool {
        let texts: Vec<&mut String> = match self {
            LoadError::Manifest { message, .. }
            | LoadError::ConfigRejected { message, .. }
            | LoadError::SelfTest { message, .. } => vec![message],
            LoadError::Corrupt { reason, .. }
            | LoadError::Metadata { reason, .. }
            | LoadError::Link { reason, .. } => vec![reason],
            LoadError::Interface { name, found, .. } => vec![name, found],
            LoadError::Setup(message) => vec![message],
            LoadError::Read { .. } | LoadError::TooLarge { .. } | LoadError::PinMismatch { .. } => {
                vec![]
            }
        };
        let mut cut = false;
        for text in texts {
            if let std::borrow::Cow::Owned(bounded) =
                crate::truncate::truncate(text, crate::MAX_ERROR_BYTES)
            {
                *text = bounded;
                cut = true;
            }
        }
        cut
    }
}
