//! Empty library target: lets `host/node` name this crate as a build dependency, so cargo
//! rebuilds the node agent when the program's dependencies change. The program itself
//! is the `meshfilter-ebpf` binary, built for `bpfel-unknown-none` by aya-build.
#![no_std]
