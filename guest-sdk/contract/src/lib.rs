//! The contract between the meshfilter host and the filter modules it runs, beside the WIT
//! file (`guest-sdk/wit/filter.wit`) that describes the calls: what the WIT cannot say.
//!
//! The host and the guest SDK both compile this crate, so a label name, a scope spelling,
//! a metadata key or the module size limit cannot drift between them. It is `no_std`; the
//! `alloc` feature (on by default) adds the parts that need a heap, such as region lists.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod interface;
pub mod labels;
pub mod metadata;
#[cfg(feature = "alloc")]
pub mod scope;

/// Largest module the host accepts, in bytes.
///
/// Modules are deployed through a Kubernetes ConfigMap, whose total size Kubernetes caps at
/// 1 MiB, so this is also the largest module that can be deployed. The host refuses larger
/// files before compiling them. Release builds with `opt-level = "s"` and `strip = true`
/// stay far below it (the shipped filters are about 200 KiB).
pub const MAX_MODULE_BYTES: usize = 1_048_576;
