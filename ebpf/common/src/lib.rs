//! The contract shared by every side of meshfilter.
//!
//! The host, the guest SDK and the eBPF program each compile this crate, so a label name,
//! a scope spelling or a metadata key cannot drift between them. It is `no_std`; the
//! `alloc` feature (on by default, off for the eBPF target) adds the parts that need a
//! heap, such as region lists.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod interface;
pub mod ipcache;
pub mod labels;
pub mod metadata;
#[cfg(feature = "alloc")]
pub mod scope;
