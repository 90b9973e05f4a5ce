//! Version of the filter interface (the WIT package in `guest-sdk/wit/filter.wit`) and the
//! lines a host serves.
//!
//! The compatibility rule (in full in the WIT file's header): within a line (a major
//! version, or before 1.0 a minor one) the interface only grows; a change that cannot
//! follow that starts a new line. A host serves two lines side by side, the current one
//! ([`VERSION`]) and the previous one ([`PREVIOUS_VERSION`], bound from its frozen WIT in
//! `guest-sdk/wit/released/`), and picks one per module by the version in its metadata.

/// WIT package name of the filter interface.
pub const PACKAGE: &str = "meshfilter:filter";

/// Version of the WIT package this build speaks: the current line, which the guest SDK
/// builds against. A test checks it against the WIT file.
pub const VERSION: &str = "0.2.0";

/// The last release of the previous line, which the host still serves. A test checks it
/// against `guest-sdk/wit/released/`.
pub const PREVIOUS_VERSION: &str = "0.1.0";

/// The interface version a host serves a module built for `module` with: [`VERSION`]
/// when it is on the current line, [`PREVIOUS_VERSION`] when on the previous one, and
/// `None` when the host cannot run it (an older line, or newer than this host).
pub fn served_version(module: &str) -> Option<&'static str> {
    [VERSION, PREVIOUS_VERSION]
        .into_iter()
        .find(|host| is_compatible(host, module))
}

/// Whether two versions are on the same line (major, or minor before 1.0).
pub fn same_line(a: &str, b: &str) -> bool {
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) => line(a) == line(b),
        _ => false,
    }
}

/// The line of a version: `(major, 0)`, or `(0, minor)` before 1.0.
fn line(v: (u32, u32, u32)) -> (u32, u32) {
    if v.0 == 0 { (0, v.1) } else { (v.0, 0) }
}

/// Whether a host speaking interface `host` can run a module built for `module`.
///
/// Within a major version the interface only grows, so a module built for `x.y.z` runs on
/// any host `x.y'.z'` that is at least as new. Before 1.0 the minor version plays the role
/// of the major one, as in Cargo.
pub fn is_compatible(host: &str, module: &str) -> bool {
    let (Some(h), Some(m)) = (parse(host), parse(module)) else {
        return false;
    };
    line(h) == line(m) && m <= h
}

fn parse(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_follows_semver_lines() {
        assert!(is_compatible("0.1.0", "0.1.0"));
        assert!(is_compatible("0.1.3", "0.1.1"));
        assert!(!is_compatible("0.1.0", "0.1.1"), "module newer than host");
        assert!(!is_compatible("0.2.0", "0.1.0"));
        assert!(!is_compatible("1.4.0", "0.4.0"));
        assert!(is_compatible("1.4.0", "1.2.9"));
        assert!(!is_compatible("1.4.0", "2.0.0"));
        assert!(!is_compatible("0.1.0", "0.1"));
        assert!(!is_compatible("0.1.0", "garbage"));
    }

    #[test]
    fn the_host_serves_the_current_and_the_previous_line() {
        assert_eq!(served_version(VERSION), Some(VERSION));
        assert_eq!(served_version(PREVIOUS_VERSION), Some(PREVIOUS_VERSION));
        assert!(!same_line(VERSION, PREVIOUS_VERSION));
        assert_eq!(served_version("0.0.1"), None, "an older line is dropped");
        assert_eq!(served_version("0.3.0"), None, "newer than this host");
        assert_eq!(served_version("9.1.0"), None);
        assert!(same_line("1.2.0", "1.0.9") && !same_line("1.0.0", "2.0.0"));
        assert!(same_line("0.2.0", "0.2.7") && !same_line("0.1.0", "0.2.0"));
    }
}
