//! Errors of snapshots and diffs.

use std::path::PathBuf;

/// What went wrong reading a snapshot or evaluating a diff.
#[derive(Debug, thiserror::Error)]
pub enum WhatIfError {
    /// The snapshot file cannot be read or written.
    #[error("snapshot {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The snapshot file is not a snapshot this version reads.
    #[error("snapshot {path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the JSON path of the bad field when there is one.
        message: String,
    },
    /// A filter set does not load.
    #[error("{side} filters: {error}")]
    Load {
        /// `old` or `new`.
        side: &'static str,
        /// The load error.
        error: meshfilter_filter_runtime::LoadError,
    },
}
