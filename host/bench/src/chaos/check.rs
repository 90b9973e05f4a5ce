//! Comparing what an etcd holds with what the model expects: byte for byte, no key
//! missing, no key more, and every key on a live lease of the process that owns the
//! content (the mesh leader, the exporter).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use etcd_client::{Client, GetOptions};

use super::model::{Expected, Snapshot, Want};
use super::wire;
use crate::error::BenchError;

/// Every key under `cilium/` of one etcd: value and lease.
pub(crate) type Listing = BTreeMap<String, (Vec<u8>, i64)>;

/// Reads every key under `cilium/` of `client`.
pub(crate) async fn list(client: &Client, etcd: &str) -> Result<Listing, BenchError> {
    let mut kv = client.kv_client();
    let read = kv.get("cilium/", Some(GetOptions::new().with_prefix()));
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .map_err(|_| BenchError::etcd(etcd)("listing cilium/ timed out".into()))?
        .map_err(|e| BenchError::etcd(etcd)(e.to_string()))?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (kv.value().to_vec(), kv.lease()),
            )
        })
        .collect())
}

/// The values of a listing, for the model.
pub(crate) fn snapshot(listing: &Listing) -> Snapshot {
    listing
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect()
}

/// The leases among `leases` that etcd says are alive (TTL left).
pub(crate) async fn alive(client: &Client, leases: impl IntoIterator<Item = i64>) -> HashSet<i64> {
    let mut alive = HashSet::new();
    let mut lease_client = client.lease_client();
    for id in leases {
        let ttl = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            lease_client.time_to_live(id, None),
        )
        .await;
        if matches!(ttl, Ok(Ok(resp)) if resp.ttl() > 0) {
            alive.insert(id);
        }
    }
    alive
}

/// One key that is not as the model says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The key.
    pub key: String,
    /// What is wrong with it.
    pub detail: String,
}

/// How one etcd compared with the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Which etcd (`local cache`, `export etcd`).
    pub etcd: String,
    /// Keys the model expects, each compared.
    pub compared: usize,
    /// Expected keys that are missing.
    pub lost: Vec<Difference>,
    /// Keys present that the model does not expect.
    pub stale: Vec<Difference>,
    /// Keys present with another value than expected.
    pub wrong_value: Vec<Difference>,
    /// Keys not on a live lease of the owner.
    pub wrong_lease: Vec<Difference>,
}

impl Comparison {
    /// Whether the etcd holds exactly what the model expects, every key on the owner's
    /// live leases.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.stale.is_empty()
            && self.wrong_value.is_empty()
            && self.wrong_lease.is_empty()
    }

    /// Every difference, by kind.
    pub fn differences(&self) -> impl Iterator<Item = (&'static str, &Difference)> {
        self.lost
            .iter()
            .map(|d| ("lost", d))
            .chain(self.stale.iter().map(|d| ("stale", d)))
            .chain(self.wrong_value.iter().map(|d| ("wrong value", d)))
            .chain(self.wrong_lease.iter().map(|d| ("wrong lease", d)))
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} keys compared: {} lost, {} stale, {} wrong value, {} wrong lease",
            self.etcd,
            self.compared,
            self.lost.len(),
            self.stale.len(),
            self.wrong_value.len(),
            self.wrong_lease.len()
        )
    }
}

/// Longest value quoted in a difference.
const QUOTE: usize = 160;

fn quote(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    match text.char_indices().nth(QUOTE) {
        None => text.into_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// Compares `actual` with `expected`. Keys under `ignored` prefixes (the lock keys, on
/// the lock's own lease) are left out; every other key must sit on one of `owner`, the
/// live leases of the process that writes them.
pub(crate) fn compare(
    etcd: &str,
    expected: &Expected,
    actual: &Listing,
    ignored: &[&str],
    owner: &HashSet<i64>,
) -> Comparison {
    let mut c = Comparison {
        etcd: etcd.to_string(),
        compared: expected.len(),
        ..Default::default()
    };
    for (key, want) in expected {
        let Some((value, _)) = actual.get(key) else {
            c.lost.push(Difference {
                key: key.clone(),
                detail: match want {
                    Want::Exact(v) => format!("expected {}", quote(v)),
                    Want::Timestamp => "expected a timestamp".into(),
                },
            });
            continue;
        };
        let right = match want {
            Want::Exact(v) => v == value,
            Want::Timestamp => wire::is_timestamp(value),
        };
        if !right {
            c.wrong_value.push(Difference {
                key: key.clone(),
                detail: match want {
                    Want::Exact(v) => format!("expected {}, found {}", quote(v), quote(value)),
                    Want::Timestamp => format!("expected a timestamp, found {}", quote(value)),
                },
            });
        }
    }
    for (key, (value, lease)) in actual {
        if ignored.iter().any(|p| key.starts_with(p)) {
            continue;
        }
        if !expected.contains_key(key) {
            c.stale.push(Difference {
                key: key.clone(),
                detail: format!("unexpected {}", quote(value)),
            });
        }
        if !owner.contains(lease) {
            c.wrong_lease.push(Difference {
                key: key.clone(),
                detail: if *lease == 0 {
                    "on no lease".to_string()
                } else {
                    format!("on lease {lease:x}, not a live lease of the writer")
                },
            });
        }
    }
    c
}

/// The leases keys of `actual` sit on, outside `ignored`.
pub(crate) fn leases_used(actual: &Listing, ignored: &[&str]) -> BTreeSet<i64> {
    actual
        .iter()
        .filter(|(k, _)| !ignored.iter().any(|p| k.starts_with(p)))
        .map(|(_, (_, lease))| *lease)
        .filter(|l| *l != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_difference_is_found() {
        let expected: Expected = [
            ("cilium/a".to_string(), Want::Exact(b"1".to_vec())),
            ("cilium/b".to_string(), Want::Exact(b"2".to_vec())),
            ("cilium/c".to_string(), Want::Timestamp),
            ("cilium/d".to_string(), Want::Exact(b"4".to_vec())),
        ]
        .into_iter()
        .collect();
        let actual: Listing = [
            ("cilium/a".to_string(), (b"1".to_vec(), 7)),
            ("cilium/b".to_string(), (b"x".to_vec(), 7)),
            (
                "cilium/c".to_string(),
                (b"2026-11-30T00:00:00Z".to_vec(), 8),
            ),
            ("cilium/e".to_string(), (b"5".to_vec(), 7)),
            ("cilium/lock/1".to_string(), (b"".to_vec(), 9)),
        ]
        .into_iter()
        .collect();
        let c = compare(
            "t",
            &expected,
            &actual,
            &["cilium/lock/"],
            &HashSet::from([7]),
        );
        assert_eq!(c.compared, 4);
        assert_eq!(c.lost[0].key, "cilium/d");
        assert_eq!(c.stale[0].key, "cilium/e");
        assert_eq!(c.wrong_value[0].key, "cilium/b");
        assert_eq!(c.wrong_lease[0].key, "cilium/c");
        assert_eq!(c.differences().count(), 4);
        assert!(!c.is_clean());
        assert_eq!(
            leases_used(&actual, &["cilium/lock/"]),
            BTreeSet::from([7, 8])
        );
    }
}
