//! Minimal Ethernet frames for running the classifier with `BPF_PROG_TEST_RUN`: what
//! the unit tests and `meshfilter bench node` feed it instead of real traffic.

use std::net::{Ipv4Addr, Ipv6Addr};

/// An Ethernet + IPv4 + TCP SYN-sized frame from `src` to `dst`.
pub fn ipv4_frame(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&40u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&dst.octets());
    f
}

/// An Ethernet + IPv6 + TCP frame from `src` to `dst`.
pub fn ipv6_frame(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 20];
    f[12..14].copy_from_slice(&0x86DDu16.to_be_bytes());
    f[14] = 0x60;
    f[18..20].copy_from_slice(&20u16.to_be_bytes());
    f[20] = 6;
    f[21] = 64;
    f[22..38].copy_from_slice(&src.octets());
    f[38..54].copy_from_slice(&dst.octets());
    f
}
