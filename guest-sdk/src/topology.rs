//! Region and zone names, checked as Kubernetes checks the values of the
//! `topology.kubernetes.io/region` and `topology.kubernetes.io/zone` node labels.
//!
//! A label value (k8s.io/apimachinery `validation.IsValidLabelValue`) is at most 63
//! characters of letters, digits, `-`, `_` and `.`, beginning and ending with a letter or
//! digit. A region or zone name must also be non-empty: an empty label means "unknown",
//! which a config cannot name. The scope grammar's region lists are narrower still
//! (lowercase letters, digits and `-`): [`Region::is_scope_listable`] says whether a region
//! can appear in one.

use serde::Deserialize;
use std::fmt;

/// Longest label value Kubernetes accepts.
const MAX_LABEL_VALUE_LEN: usize = 63;

/// What kind of topology name was checked, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopologyKind {
    /// A `topology.kubernetes.io/region` value.
    Region,
    /// A `topology.kubernetes.io/zone` value.
    Zone,
}

impl fmt::Display for TopologyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopologyKind::Region => "region",
            TopologyKind::Zone => "zone",
        })
    }
}

/// Why a region or zone name was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyNameError {
    /// The name is empty.
    Empty {
        /// Region or zone.
        kind: TopologyKind,
    },
    /// Longer than 63 characters.
    TooLong {
        /// Region or zone.
        kind: TopologyKind,
        /// The name.
        name: String,
    },
    /// A character a label value cannot hold.
    InvalidChar {
        /// Region or zone.
        kind: TopologyKind,
        /// The name.
        name: String,
        /// The character.
        ch: char,
    },
    /// Begins or ends with something other than a letter or digit.
    BadEdge {
        /// Region or zone.
        kind: TopologyKind,
        /// The name.
        name: String,
    },
}

impl fmt::Display for TopologyNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyNameError::Empty { kind } => write!(f, "empty {kind} name"),
            TopologyNameError::TooLong { kind, name } => write!(
                f,
                "{kind} name {name:?} is longer than {MAX_LABEL_VALUE_LEN} characters"
            ),
            TopologyNameError::InvalidChar { kind, name, ch } => write!(
                f,
                "{kind} name {name:?} contains {ch:?} (allowed: letters, digits, '-', '_', '.')"
            ),
            TopologyNameError::BadEdge { kind, name } => write!(
                f,
                "{kind} name {name:?} must begin and end with a letter or digit"
            ),
        }
    }
}

impl std::error::Error for TopologyNameError {}

/// Checks `name` as a non-empty Kubernetes label value.
fn check(kind: TopologyKind, name: &str) -> Result<(), TopologyNameError> {
    let owned = || name.to_string();
    if name.is_empty() {
        return Err(TopologyNameError::Empty { kind });
    }
    if name.len() > MAX_LABEL_VALUE_LEN {
        return Err(TopologyNameError::TooLong {
            kind,
            name: owned(),
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(TopologyNameError::InvalidChar {
            kind,
            name: owned(),
            ch,
        });
    }
    let bytes = name.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err(TopologyNameError::BadEdge {
            kind,
            name: owned(),
        });
    }
    Ok(())
}

macro_rules! topology_name {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks `name` (see the type's docs) and wraps it.
            pub fn new(name: impl Into<String>) -> Result<$name, TopologyNameError> {
                let name = name.into();
                check($kind, &name)?;
                Ok($name(name))
            }

            /// The name.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = TopologyNameError;
            fn from_str(s: &str) -> Result<$name, TopologyNameError> {
                $name::new(s)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                $name::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

topology_name!(
    /// A region name, as in `topology.kubernetes.io/region` (`eu-west-1`).
    ///
    /// ```
    /// use meshfilter_guest_sdk::{Region, TopologyNameError};
    /// let region = Region::new("eu-west-1")?;
    /// assert_eq!(region, "eu-west-1");
    /// assert!(region.is_scope_listable());
    /// assert_eq!(
    ///     Region::new("eu west").unwrap_err().to_string(),
    ///     r#"region name "eu west" contains ' ' (allowed: letters, digits, '-', '_', '.')"#
    /// );
    /// # Ok::<(), TopologyNameError>(())
    /// ```
    ///
    /// It deserialises from a string, so a config field can be a `Region`.
    Region,
    TopologyKind::Region
);

topology_name!(
    /// A zone name, as in `topology.kubernetes.io/zone` (`us-east-1a`).
    ///
    /// ```
    /// use meshfilter_guest_sdk::{TopologyNameError, Zone};
    /// let zone: Zone = "us-east-1a".parse()?;
    /// assert_eq!(zone.as_str(), "us-east-1a");
    /// assert!(Zone::new("-a").is_err());
    /// # Ok::<(), TopologyNameError>(())
    /// ```
    ///
    /// It deserialises from a string, so a config field can be a `Zone`.
    Zone,
    TopologyKind::Zone
);

impl Region {
    /// Whether the region can appear in a `sync-scope` region list, whose grammar is
    /// narrower than a label value: lowercase letters, digits and `-` only.
    pub fn is_scope_listable(&self) -> bool {
        matches!(
            crate::Scope::parse(Some(&self.0)),
            Ok(crate::Scope::Regions(list)) if list == [self.0.as_str()]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_names_are_accepted() {
        for name in [
            "eu-west-1",
            "us-east-1",
            "europe-west4",
            "westeurope",
            "r1.dc_2",
        ] {
            assert_eq!(Region::new(name).unwrap().as_str(), name);
        }
        for name in ["us-east-1a", "europe-west4-b", "1"] {
            assert!(Zone::new(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn errors_are_typed_and_name_the_value() {
        assert_eq!(
            Region::new(""),
            Err(TopologyNameError::Empty {
                kind: TopologyKind::Region
            })
        );
        assert_eq!(
            Zone::new("a/b"),
            Err(TopologyNameError::InvalidChar {
                kind: TopologyKind::Zone,
                name: "a/b".into(),
                ch: '/'
            })
        );
        assert_eq!(
            Zone::new("a-"),
            Err(TopologyNameError::BadEdge {
                kind: TopologyKind::Zone,
                name: "a-".into()
            })
        );
        let long = "a".repeat(64);
        assert!(matches!(
            Region::new(long.clone()),
            Err(TopologyNameError::TooLong { .. })
        ));
        assert_eq!(
            Zone::new(".a").unwrap_err().to_string(),
            "zone name \".a\" must begin and end with a letter or digit"
        );
        assert!(Region::new("a".repeat(63)).is_ok());
    }

    #[test]
    fn scope_lists_are_narrower_than_labels() {
        assert!(Region::new("eu-west-1").unwrap().is_scope_listable());
        assert!(!Region::new("EU_West").unwrap().is_scope_listable());
        assert!(!Region::new("global").unwrap().is_scope_listable());
    }

    #[test]
    fn names_deserialise_checked() {
        let regions: Vec<Region> = serde_json::from_str(r#"["eu-west-1"]"#).unwrap();
        assert_eq!(regions[0], "eu-west-1");
        let err = serde_json::from_str::<Zone>(r#""bad zone""#).unwrap_err();
        assert!(err.to_string().contains("zone name \"bad zone\""), "{err}");
    }
}
