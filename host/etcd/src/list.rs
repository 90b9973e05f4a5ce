//! Reading a whole prefix, in pages, at one revision.
//!
//! A single range request over a large prefix fails twice over: tonic refuses a response
//! above its decoding limit (4 MiB by default, about 15,000 ipcache entries), and etcd
//! builds the whole response in memory. So every list is paged by key count, at the
//! revision of its first page so the pages add up to one consistent snapshot, and a page
//! that is still too large (a remote with unusually large values) is asked for again at
//! half the size.

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{Client, GetOptions, KvClient};

use crate::error::EtcdError;

/// Largest response accepted from etcd (gRPC decoding limit), for lists and watches.
/// Above tonic's 4 MiB default so a full page of large values fits; a page larger than
/// this is split.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Keys asked for per page. etcd 3.4 counts the whole range for every page, so small
/// pages over a large prefix are slow; 10,000 keeps a 500K-key list to 50 requests.
pub const DEFAULT_PAGE_KEYS: i64 = 10_000;

/// How long one page may take.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// One key and its value as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key (keys that are not UTF-8 are skipped: no Cilium key is).
    pub key: String,
    /// The value, verbatim.
    pub value: Bytes,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

impl Entry {
    pub(crate) fn from_kv(kv: &etcd_client::KeyValue) -> Option<Entry> {
        let key = kv.key_str().ok()?;
        Some(Entry {
            key: key.to_string(),
            value: Bytes::copy_from_slice(kv.value()),
            lease: kv.lease(),
        })
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    /// Entries in key order.
    pub entries: Vec<Entry>,
    /// The revision every page of this list is read at.
    pub revision: i64,
    /// The etcd cluster that answered.
    pub cluster_id: u64,
}

/// The pages of one list of a prefix.
pub struct Pages {
    etcd: String,
    kv: KvClient,
    end: Vec<u8>,
    next: Option<Vec<u8>>,
    revision: i64,
    page_keys: i64,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("etcd", &self.etcd)
            .field("revision", &self.revision)
            .field("page_keys", &self.page_keys)
            .finish_non_exhaustive()
    }
}

impl Pages {
    /// Lists every key under `prefix` of `client` (named `etcd` in errors).
    pub fn new(client: &Client, etcd: &str, prefix: &str) -> Pages {
        Pages {
            etcd: etcd.to_string(),
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            end: prefix_end(prefix.as_bytes()),
            next: Some(prefix.as_bytes().to_vec()),
            revision: 0,
            page_keys: DEFAULT_PAGE_KEYS,
        }
    }

    /// Lists `key` alone (no prefix match): a list of zero or one entry.
    pub fn exact(client: &Client, etcd: &str, key: &str) -> Pages {
        let mut end = key.as_bytes().to_vec();
        end.push(0);
        Pages {
            end,
            ..Pages::new(client, etcd, key)
        }
    }

    /// Asks for `keys` per page instead of [`DEFAULT_PAGE_KEYS`].
    pub fn page_keys(mut self, keys: i64) -> Pages {
        self.page_keys = keys.max(1);
        self
    }

    /// The next page, `None` once the prefix is exhausted. A page too large to receive is
    /// asked for again at half the size; a revision compacted half-way fails with
    /// [`EtcdError::Compacted`] (list again from the start).
    pub async fn next(&mut self) -> Result<Option<Page>, EtcdError> {
        let Some(start) = self.next.clone() else {
            return Ok(None);
        };
        loop {
            let mut options = GetOptions::new()
                .with_range(self.end.clone())
                .with_limit(self.page_keys);
            if self.revision > 0 {
                options = options.with_revision(self.revision);
            }
            let request = self.kv.get(start.clone(), Some(options));
            let resp = match tokio::time::timeout(PAGE_TIMEOUT, request).await {
                Err(_) => {
                    return Err(EtcdError::Timeout {
                        etcd: self.etcd.clone(),
                        what: "list",
                    });
                }
                Ok(Err(e)) if too_large(&e) && self.page_keys > 1 => {
                    self.page_keys /= 2;
                    tracing::warn!(etcd = %self.etcd, page_keys = self.page_keys, "list page too large; asking for smaller pages");
                    continue;
                }
                Ok(Err(e)) if compacted(&e) => {
                    return Err(EtcdError::Compacted {
                        etcd: self.etcd.clone(),
                        revision: self.revision,
                    });
                }
                Ok(Err(e)) => return Err(EtcdError::request(&self.etcd)(e)),
                Ok(Ok(resp)) => resp,
            };
            let (revision, cluster_id) = resp
                .header()
                .map_or((0, 0), |h| (h.revision(), h.cluster_id()));
            if self.revision == 0 {
                self.revision = revision;
            }
            let entries: Vec<Entry> = resp.kvs().iter().filter_map(Entry::from_kv).collect();
            self.next = match (resp.more(), resp.kvs().last()) {
                (true, Some(last)) => {
                    let mut next = last.key().to_vec();
                    next.push(0);
                    Some(next)
                }
                _ => None,
            };
            return Ok(Some(Page {
                entries,
                revision: self.revision,
                cluster_id,
            }));
        }
    }

    /// Every remaining entry, for callers that want the whole list at once.
    pub async fn collect(mut self) -> Result<(Vec<Entry>, i64), EtcdError> {
        let mut all = Vec::new();
        let mut revision = 0;
        while let Some(page) = self.next().await? {
            revision = page.revision;
            all.extend(page.entries);
        }
        Ok((all, revision))
    }
}

/// The entry under exactly `key` (no prefix match), read serializably: the member the
/// client talks to answers from its own state, without a quorum round trip. For point
/// lookups on a latency-sensitive path (the node agent resolving a missed address), where
/// a value a few milliseconds stale is as good as a linearizable one. `etcd` names the
/// etcd in errors.
pub async fn read_serializable(
    client: &Client,
    etcd: &str,
    key: &str,
) -> Result<Option<Entry>, EtcdError> {
    let resp = client
        .kv_client()
        .get(key, Some(GetOptions::new().with_serializable()))
        .await
        .map_err(EtcdError::request(etcd))?;
    Ok(resp.kvs().first().and_then(Entry::from_kv))
}

/// tonic refusing a response above the decoding limit.
fn too_large(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("message length too large") || text.contains("too large")
}

/// etcd refusing a read at a compacted revision.
pub(crate) fn compacted(e: &etcd_client::Error) -> bool {
    e.to_string()
        .contains("required revision has been compacted")
}

/// The end of the range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"cilium/state/"), b"cilium/state0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
