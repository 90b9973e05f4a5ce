//! Why a soak, a benchmark or the demo could not run (as opposed to a soak that ran and
//! found differences, which is a [`crate::ChaosReport`] that did not pass).

use std::path::PathBuf;

/// A soak could not be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A fixture (an etcd server, a proxy, a temporary directory) could not be made.
    #[error("{what}: {message}")]
    Fixture {
        /// Which fixture.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// A file the soak writes (a config, a clustermesh file, a log) could not be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A meshfilter process could not be started.
    #[error("starting {process}: {source}")]
    Spawn {
        /// Which process (`mesh-a`, `exporter`, ...).
        process: String,
        /// The error.
        source: std::io::Error,
    },
    /// An etcd the soak must reach (to set up, or to read for the check) did not answer.
    #[error("etcd {etcd}: {message}")]
    Etcd {
        /// Which etcd.
        etcd: String,
        /// What went wrong.
        message: String,
    },
    /// The system never became ready to soak.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
    },
    /// A meshfilter process exited while it was waited for.
    #[error("{process} exited ({status}); its log: {}", log.display())]
    Exited {
        /// Which process.
        process: String,
        /// How it exited.
        status: String,
        /// Where its standard error went.
        log: PathBuf,
    },
    /// The demo's sample mesh could not be read or parsed.
    #[error("sample mesh {origin}: {message}")]
    Sample {
        /// The file, or `bundled`.
        origin: String,
        /// What was wrong.
        message: String,
    },
    /// A filter set did not load.
    #[error("filters: {0}")]
    Filters(#[from] meshfilter_filter_runtime::LoadError),
    /// A Cilium name or value the benchmark generates was refused (a bug in the generator).
    #[error("generated Cilium data: {0}")]
    Cilium(String),
    /// The eBPF datapath could not be loaded or driven.
    #[error("datapath: {0}")]
    Datapath(#[from] meshfilter_node::DatapathError),
    /// A measured run did not complete: what it measures never happened.
    #[error("{0}")]
    Incomplete(String),
}

impl BenchError {
    pub(crate) fn fixture(what: impl Into<String>) -> impl FnOnce(String) -> BenchError {
        let what = what.into();
        move |message| BenchError::Fixture { what, message }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BenchError {
        let path = path.into();
        move |source| BenchError::Io { path, source }
    }

    pub(crate) fn etcd(etcd: impl Into<String>) -> impl FnOnce(String) -> BenchError {
        let etcd = etcd.into();
        move |message| BenchError::Etcd { etcd, message }
    }

    /// [`BenchError::etcd`] for a client error.
    pub(crate) fn etcd_client(
        etcd: impl Into<String>,
    ) -> impl FnOnce(etcd_client::Error) -> BenchError {
        let etcd = etcd.into();
        move |e| BenchError::Etcd {
            etcd,
            message: e.to_string(),
        }
    }

    pub(crate) fn cilium(e: impl std::fmt::Display) -> BenchError {
        BenchError::Cilium(e.to_string())
    }
}
