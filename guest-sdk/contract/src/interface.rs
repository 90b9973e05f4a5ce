//! Version of the filter interface (the WIT package in `guest-sdk/wit/filter.wit`).

/// WIT package name of the filter interface.
pub const PACKAGE: &str = "meshfilter:filter";

/// Version of the WIT package this build speaks. A test checks it against the WIT file.
pub const VERSION: &str = "0.1.0";

/// Whether a host speaking interface `host` can run a module built for `module`.
///
/// Within a major version the interface only grows, so a module built for `x.y.z` runs on
/// any host `x.y'.z'` that is at least as new. Before 1.0 the minor version plays the role
/// of the major one, as in Cargo.
pub fn is_compatible(host: &str, module: &str) -> bool {
    let (Some(h), Some(m)) = (parse(host), parse(module)) else {
        return false;
    };
    let same_line = if h.0 == 0 {
        m.0 == 0 && m.1 == h.1
    } else {
        m.0 == h.0
    };
    same_line && m <= h
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
}
