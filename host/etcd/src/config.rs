//! Connecting to etcd from Cilium's clustermesh connection files.
//!
//! Cilium mounts one file per remote cluster (named after the cluster) holding an etcd
//! client config: `endpoints`, and optionally `trusted-ca-file`, `cert-file` and
//! `key-file` for mutual TLS. meshfilter reads the same files, so it can use the secret
//! kvstoremesh would have used.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::Deserialize;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::EtcdError;

/// An etcd client config in Cilium's format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EtcdConfig {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// CA bundle that signed the servers' certificates.
    #[serde(default)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// The fields this config reads, as written in a file. Cilium's connection files may
    /// carry more (read tolerantly); a meshfilter role's own config rejects anything else.
    pub const FIELDS: &'static [&'static str] =
        &["endpoints", "trusted-ca-file", "cert-file", "key-file"];

    /// A plain-text config for `endpoints`.
    pub fn plain(endpoints: impl IntoIterator<Item = impl Into<String>>) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            trusted_ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    /// Reads and validates a connection file.
    pub fn from_file(path: &Path) -> Result<EtcdConfig, EtcdError> {
        let err = |message: String| EtcdError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let config: EtcdConfig = serde_yaml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if config.endpoints.is_empty() {
            return Err(err("endpoints: at least one endpoint is required".into()));
        }
        if config.cert_file.is_some() != config.key_file.is_some() {
            return Err(err("cert-file and key-file must be given together".into()));
        }
        Ok(config)
    }

    /// Connects until it works or `cancel` fires (then `None`), waiting out `backoff`
    /// between attempts: the roles' own etcds (local cache, export target, source) are
    /// required, so they are retried for as long as the process runs.
    pub async fn connect_with_retry(
        &self,
        name: &str,
        backoff: &mut Backoff,
        cancel: &CancellationToken,
    ) -> Option<Client> {
        loop {
            match self.connect(name).await {
                Ok(client) => {
                    backoff.reset();
                    return Some(client);
                }
                Err(e) => {
                    tracing::warn!(etcd = name, error = %e, "cannot reach etcd; retrying");
                    if !backoff.wait(cancel).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Connects. `cluster` names the etcd in errors. Keepalives match Cilium's
    /// (15 s interval, 25 s timeout) so a dead peer is noticed as fast.
    pub async fn connect(&self, cluster: &str) -> Result<Client, EtcdError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(15), Duration::from_secs(25))
            .with_keep_alive_while_idle(true);
        if self.trusted_ca_file.is_some() || self.cert_file.is_some() {
            options = options.with_tls(self.tls()?);
        }
        let connect = Client::connect(self.endpoints.clone(), Some(options));
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(result) => result.map_err(EtcdError::request(cluster)),
            Err(_) => Err(EtcdError::Timeout {
                etcd: cluster.to_string(),
                what: "connect",
            }),
        }
    }

    fn tls(&self) -> Result<TlsOptions, EtcdError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| EtcdError::Config {
                path: path.clone(),
                message: e.to_string(),
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.trusted_ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

/// One file of a clustermesh directory: the cluster it is named after, and its config (or
/// why it cannot be used).
pub type ClusterFile = (String, Result<EtcdConfig, EtcdError>);

/// Reads a clustermesh directory the way Cilium mounts it (one file per remote cluster,
/// named after the cluster, usually a symlink through the secret volume's `..data`): every
/// regular file (links followed) whose name has no `.`, except `own`, sorted by name. Cluster
/// names never contain a dot, so the certificates Cilium projects into the same directory
/// (`common-etcd-client.crt`, `<cluster>.etcd-client-ca.crt`) are passed over unread. A file that cannot be read or parsed is returned with its error, so the
/// caller can say which one is wrong and keep the others.
pub fn scan_clusters_dir(dir: &Path, own: Option<&str>) -> Result<Vec<ClusterFile>, EtcdError> {
    let err = |e: std::io::Error| EtcdError::Config {
        path: dir.to_path_buf(),
        message: e.to_string(),
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let path = entry.map_err(err)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.contains('.') || Some(name) == own || !path.is_file() {
            continue;
        }
        out.push((name.to_string(), EtcdConfig::from_file(&path)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cilium_connection_files() {
        let dir =
            std::env::temp_dir().join(format!("meshfilter-etcd-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cluster1");
        std::fs::write(
            &file,
            "endpoints:\n- https://cluster1.mesh.cilium.io:2379\ntrusted-ca-file: /var/lib/cilium/clustermesh/ca.crt\n\
             cert-file: /var/lib/cilium/clustermesh/tls.crt\nkey-file: /var/lib/cilium/clustermesh/tls.key\n",
        )
        .unwrap();
        let c = EtcdConfig::from_file(&file).unwrap();
        assert_eq!(c.endpoints, ["https://cluster1.mesh.cilium.io:2379"]);
        assert!(c.cert_file.is_some() && c.key_file.is_some());
        std::fs::write(&file, "endpoints: []\n").unwrap();
        assert!(
            EtcdConfig::from_file(&file)
                .unwrap_err()
                .to_string()
                .contains("endpoints")
        );
        std::fs::write(&file, "endpoints: [http://x:2379]\ncert-file: a\n").unwrap();
        assert!(
            EtcdConfig::from_file(&file)
                .unwrap_err()
                .to_string()
                .contains("together")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scans_a_mounted_clustermesh_directory() {
        let dir =
            std::env::temp_dir().join(format!("meshfilter-clustermesh-{}", std::process::id()));
        let data = dir.join("..2026_11_30_00_00_00.000001");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("east"), "endpoints: [http://east:2379]\n").unwrap();
        std::fs::write(data.join("west"), "endpoints: []\n").unwrap();
        std::fs::write(data.join("local"), "endpoints: [http://local:2379]\n").unwrap();
        std::fs::write(
            data.join("common-etcd-client.crt"),
            "-----BEGIN CERTIFICATE-----\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("..2026_11_30_00_00_00.000001", dir.join("..data")).unwrap();
        for name in ["east", "west", "local", "common-etcd-client.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        let found = scan_clusters_dir(&dir, Some("local")).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["east", "west"],
            "links followed; dot files, certificates and own cluster skipped"
        );
        assert!(found[0].1.is_ok());
        assert!(
            found[1]
                .1
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("endpoints")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
