//! Glob patterns and namespace sets: the matchers for names that filters configure.
//!
//! A [`Glob`] matches a whole name, `*` standing for any run of characters (including
//! none) and `?` for exactly one; every other character stands for itself. A
//! [`NamespaceSet`] is a list of namespace names and globs, as a filter's config spells
//! it (`["payments", "billing-*"]`).

use crate::Endpoint;
use serde::Deserialize;
use std::fmt;
use std::str::FromStr;

/// A glob pattern over a whole name: `*` is any run of characters, `?` one character.
///
/// ```
/// use meshfilter_guest_sdk::Glob;
/// let glob = Glob::new("team-*")?;
/// assert!(glob.matches("team-payments"));
/// assert!(glob.matches("team-"));
/// assert!(!glob.matches("teams"));
/// assert!(Glob::new("eu-*-?").unwrap().matches("eu-west-1"));
/// assert_eq!(Glob::new("").unwrap_err().to_string(), "empty glob pattern (use \"*\" for every name)");
/// # Ok::<(), meshfilter_guest_sdk::GlobError>(())
/// ```
///
/// It deserialises from a string, so a config field can be a `Glob` (or a
/// `Vec<Glob>`), and prints as the pattern it was made from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Glob {
    pattern: String,
    /// Whether the pattern has no wildcard: a plain comparison then.
    literal: bool,
}

/// Why a glob pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobError {
    /// The pattern is empty.
    Empty,
    /// A character that no name of this kind can hold (see [`NamespaceSet`]).
    InvalidChar {
        /// The pattern.
        pattern: String,
        /// The character.
        ch: char,
    },
    /// Longer than any name of this kind can be.
    TooLong {
        /// The pattern.
        pattern: String,
        /// The longest name allowed.
        max: usize,
    },
}

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GlobError::Empty => f.write_str("empty glob pattern (use \"*\" for every name)"),
            GlobError::InvalidChar { pattern, ch } => write!(
                f,
                "{pattern:?}: {ch:?} cannot appear in a namespace name (lowercase letters, \
                 digits and '-', with '*' and '?' as wildcards)"
            ),
            GlobError::TooLong { pattern, max } => {
                write!(f, "{pattern:?}: longer than {max} characters")
            }
        }
    }
}

impl std::error::Error for GlobError {}

impl Glob {
    /// Compiles `pattern`; only the empty pattern is refused.
    pub fn new(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        Ok(Glob {
            pattern: pattern.to_string(),
            literal: !pattern.contains(['*', '?']),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern has no wildcard and so matches exactly one name.
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// Whether `name` matches the whole pattern.
    pub fn matches(&self, name: &str) -> bool {
        if self.literal {
            return self.pattern == name;
        }
        wildcard_match(self.pattern.as_bytes(), name.as_bytes())
    }
}

/// Linear-time wildcard matching: on a mismatch after a `*`, retry with the star covering
/// one more character. `?` matches one UTF-8 character.
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'?' {
            p += 1;
            n += utf8_len(name[n]);
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            let sn = sn + utf8_len(name[sn]);
            star = Some((sp, sn));
            p = sp + 1;
            n = sn;
        } else {
            return false;
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&b| b == b'*')
}

/// Length of the UTF-8 character starting with `first`.
fn utf8_len(first: u8) -> usize {
    match first {
        b if b < 0x80 => 1,
        b if b >= 0xf0 => 4,
        b if b >= 0xe0 => 3,
        _ => 2,
    }
}

impl FromStr for Glob {
    type Err = GlobError;
    fn from_str(s: &str) -> Result<Glob, GlobError> {
        Glob::new(s)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Glob, D::Error> {
        let text = String::deserialize(d)?;
        Glob::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Longest Kubernetes namespace name (a DNS-1123 label).
const MAX_NAMESPACE_LEN: usize = 63;

/// A set of namespaces: exact names and globs (`["payments", "billing-*"]`).
///
/// Entries are checked against what a namespace name can hold (lowercase letters, digits
/// and `-`, at most 63 characters), so a typo such as `Payments` is a config error rather
/// than a pattern that never matches.
///
/// ```
/// use meshfilter_guest_sdk::{Endpoint, NamespaceSet};
/// let set = NamespaceSet::new(["payments", "billing-*"])?;
/// assert!(set.contains("billing-eu"));
/// assert!(!set.contains("shop"));
///
/// let pod = Endpoint::builder().namespace("payments").build();
/// assert!(set.matches(&pod));
/// assert_eq!(pod.reads(), ["namespace()"]);
///
/// let err = NamespaceSet::new(["Payments"]).unwrap_err();
/// assert!(err.to_string().starts_with("\"Payments\": 'P' cannot appear in a namespace name"));
/// # Ok::<(), meshfilter_guest_sdk::GlobError>(())
/// ```
///
/// It deserialises from a list of strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamespaceSet {
    entries: Vec<Glob>,
}

impl NamespaceSet {
    /// A set of the given names and globs.
    pub fn new<I, S>(entries: I) -> Result<NamespaceSet, GlobError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let entries = entries
            .into_iter()
            .map(|e| namespace_glob(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NamespaceSet { entries })
    }

    /// Whether namespace `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.iter().any(|g| g.matches(name))
    }

    /// Whether `endpoint`'s namespace is in the set; reads only the namespace, and not
    /// even that when the set is empty.
    pub fn matches(&self, endpoint: &Endpoint) -> bool {
        !self.entries.is_empty() && self.contains(&endpoint.namespace())
    }

    /// Whether the set has no entries (and so contains nothing).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in the order given.
    pub fn entries(&self) -> &[Glob] {
        &self.entries
    }
}

/// A glob whose every character can appear in a namespace name.
fn namespace_glob(pattern: &str) -> Result<Glob, GlobError> {
    let glob = Glob::new(pattern)?;
    if let Some(ch) = pattern
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '*' | '?')))
    {
        return Err(GlobError::InvalidChar {
            pattern: pattern.to_string(),
            ch,
        });
    }
    if glob.is_literal() && pattern.len() > MAX_NAMESPACE_LEN {
        return Err(GlobError::TooLong {
            pattern: pattern.to_string(),
            max: MAX_NAMESPACE_LEN,
        });
    }
    Ok(glob)
}

impl fmt::Display for NamespaceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(Glob::as_str).collect();
        write!(f, "[{}]", names.join(", "))
    }
}

impl<'de> Deserialize<'de> for NamespaceSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NamespaceSet, D::Error> {
        let entries = Vec::<String>::deserialize(d)?;
        NamespaceSet::new(entries).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_whole_names() {
        let cases = [
            ("team-*", "team-a", true),
            ("team-*", "team-", true),
            ("team-*", "xteam-a", false),
            ("*-prod", "shop-prod", true),
            ("*-prod", "shop-prod-2", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*", "", true),
            ("*", "anything", true),
            ("?", "é", true),
            ("?", "ab", false),
            ("eu-*-?", "eu-west-1", true),
            ("eu-*-?", "eu-west-10", false),
            ("**x", "yyx", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(
                Glob::new(pattern).unwrap().matches(name),
                want,
                "{pattern} ~ {name}"
            );
        }
    }

    #[test]
    fn globs_deserialise_and_print_as_written() {
        let globs: Vec<Glob> = serde_json::from_str(r#"["a*", "b"]"#).unwrap();
        assert_eq!(globs[0].to_string(), "a*");
        assert!(globs[1].is_literal());
        let err = serde_json::from_str::<Glob>(r#""""#).unwrap_err();
        assert!(err.to_string().contains("empty glob pattern"), "{err}");
    }

    #[test]
    fn namespace_sets_check_their_entries() {
        let set: NamespaceSet = serde_json::from_str(r#"["payments", "billing-*"]"#).unwrap();
        assert_eq!(set.to_string(), "[payments, billing-*]");
        assert!(set.contains("payments") && set.contains("billing-x"));
        assert!(!set.contains("pay"));
        assert_eq!(
            NamespaceSet::new(["ok", "bad_name"]),
            Err(GlobError::InvalidChar {
                pattern: "bad_name".into(),
                ch: '_'
            })
        );
        let long = "a".repeat(64);
        assert!(matches!(
            NamespaceSet::new([long.as_str()]),
            Err(GlobError::TooLong { max: 63, .. })
        ));
        assert_eq!(NamespaceSet::new([""]), Err(GlobError::Empty));
    }

    #[test]
    fn an_empty_set_reads_nothing() {
        let pod = Endpoint::builder().namespace("a").build();
        assert!(!NamespaceSet::default().matches(&pod));
        assert!(pod.reads().is_empty());
    }
}
