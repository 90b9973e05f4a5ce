//! The kernel/userspace contract of the miss classifier: Cilium's ipcache layout as the
//! program reads it, the program's own maps, counters and the miss event. The eBPF program
//! and the node agent both compile this crate (as aya-template's `-common` crate does), so
//! a struct layout cannot drift between them. It is `no_std` and allocation-free.
#![no_std]
#![deny(missing_docs)]

pub mod ipcache;
