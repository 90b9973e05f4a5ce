//! The metadata custom section every filter module carries.
//!
//! The guest SDK writes it at compile time; the host reads it before instantiating a
//! module, so a module built for another interface version is refused with a clear message
//! instead of failing somewhere inside the component linker. The format is deliberately
//! plain: `key=value` lines in UTF-8, with keys `name`, `sdk` and `interface`
//! (`<package>@<version>`).

use crate::interface;

/// Name of the Wasm custom section.
pub const SECTION_NAME: &str = "meshfilter-metadata";

const NAME_KEY: &str = "name=";
const SDK_KEY: &str = "sdk=";
const INTERFACE_KEY: &str = "interface=";

/// Length of the section written by [`encode`] for a filter called `name` built with SDK
/// version `sdk`.
pub const fn encoded_len(name: &str, sdk: &str) -> usize {
    NAME_KEY.len()
        + name.len()
        + 1
        + SDK_KEY.len()
        + sdk.len()
        + 1
        + INTERFACE_KEY.len()
        + interface::PACKAGE.len()
        + 1
        + interface::VERSION.len()
        + 1
}

/// Section contents for a filter called `name` built with SDK version `sdk`. `N` must be
/// [`encoded_len`]`(name, sdk)`; any other length fails const evaluation.
pub const fn encode<const N: usize>(name: &str, sdk: &str) -> [u8; N] {
    assert!(N == encoded_len(name, sdk), "metadata length mismatch");
    let mut out = [0u8; N];
    let mut at = 0;
    at = put(&mut out, at, NAME_KEY);
    at = put(&mut out, at, name);
    at = put(&mut out, at, "\n");
    at = put(&mut out, at, SDK_KEY);
    at = put(&mut out, at, sdk);
    at = put(&mut out, at, "\n");
    at = put(&mut out, at, INTERFACE_KEY);
    at = put(&mut out, at, interface::PACKAGE);
    at = put(&mut out, at, "@");
    at = put(&mut out, at, interface::VERSION);
    at = put(&mut out, at, "\n");
    assert!(at == N);
    out
}

const fn put<const N: usize>(out: &mut [u8; N], mut at: usize, s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        out[at] = bytes[i];
        at += 1;
        i += 1;
    }
    at
}

/// What a module's metadata section says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleMetadata<'a> {
    /// Filter name chosen by its author (the crate name by default).
    pub name: &'a str,
    /// Version of the guest SDK the module was built with.
    pub sdk_version: &'a str,
    /// Interface package, normally [`interface::PACKAGE`].
    pub interface_package: &'a str,
    /// Interface version the module was built for.
    pub interface_version: &'a str,
}

/// Why a metadata section could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataError {
    /// The section is not UTF-8.
    NotUtf8,
    /// A required key is missing.
    Missing(&'static str),
    /// A line is not `key=value`, or the interface is not `package@version`.
    Malformed,
}

impl core::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MetadataError::NotUtf8 => f.write_str("metadata section is not UTF-8"),
            MetadataError::Missing(key) => write!(f, "metadata section has no `{key}`"),
            MetadataError::Malformed => f.write_str("metadata section is malformed"),
        }
    }
}

impl core::error::Error for MetadataError {}

impl<'a> ModuleMetadata<'a> {
    /// Parses a section written by [`encode`]. Unknown keys are ignored so later SDKs can
    /// add some.
    pub fn parse(section: &'a [u8]) -> Result<ModuleMetadata<'a>, MetadataError> {
        let text = core::str::from_utf8(section).map_err(|_| MetadataError::NotUtf8)?;
        let (mut name, mut sdk, mut iface) = (None, None, None);
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (key, value) = line.split_once('=').ok_or(MetadataError::Malformed)?;
            match key {
                "name" => name = Some(value),
                "sdk" => sdk = Some(value),
                "interface" => iface = Some(value),
                _ => {}
            }
        }
        let iface = iface.ok_or(MetadataError::Missing("interface"))?;
        let (package, version) = iface.split_once('@').ok_or(MetadataError::Malformed)?;
        Ok(ModuleMetadata {
            name: name.ok_or(MetadataError::Missing("name"))?,
            sdk_version: sdk.ok_or(MetadataError::Missing("sdk"))?,
            interface_package: package,
            interface_version: version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse() {
        const LEN: usize = encoded_len("cfp-scope", "0.1.0");
        const BYTES: [u8; LEN] = encode::<LEN>("cfp-scope", "0.1.0");
        let meta = ModuleMetadata::parse(&BYTES).unwrap();
        assert_eq!(meta.name, "cfp-scope");
        assert_eq!(meta.sdk_version, "0.1.0");
        assert_eq!(meta.interface_package, interface::PACKAGE);
        assert_eq!(meta.interface_version, interface::VERSION);
    }

    #[test]
    fn rejects_incomplete_sections() {
        assert_eq!(
            ModuleMetadata::parse(b"name=x\nsdk=1\n"),
            Err(MetadataError::Missing("interface"))
        );
        assert_eq!(
            ModuleMetadata::parse(b"garbage"),
            Err(MetadataError::Malformed)
        );
        assert_eq!(
            ModuleMetadata::parse(&[0xff, 0xfe]),
            Err(MetadataError::NotUtf8)
        );
        assert_eq!(
            ModuleMetadata::parse(b"interface=meshfilter:filter@0.1.0\nsdk=1\n"),
            Err(MetadataError::Missing("name"))
        );
    }
}
