//! The filter manifest: which modules run on which hook, in which order, with which config.
//!
//! It lives in the module directory next to the modules (`filters.yaml`), so a single
//! ConfigMap carries modules and their configuration and both reload together:
//!
//! ```yaml
//! export:
//!   onFailure: keep-last-decision   # keep-last-decision | fail-open | fail-closed
//!   otherwise: open                 # when every filter abstains: open | closed
//!   chain:
//!     - module: namespace-allowlist.wasm
//!       config: {teams: [{name: payments, namespaces: [payments]}]}
//!     - module: cfp-scope.wasm
//!       config: {default: opt-in}
//! import:
//!   chain:
//!     - module: cfp-scope.wasm
//! miss:
//!   chain:
//!     - module: cfp-scope.wasm
//! ```
//!
//! Composition: filters of a chain run in order and the first one that does not abstain
//! decides. When all abstain, `otherwise` decides: `open` is Cilium's behaviour without
//! meshfilter (export globally, import, resolve), `closed` keeps the endpoint out.

use std::path::Path;

use serde::Deserialize;

use crate::decision::{FailurePolicy, Hook};
use crate::error::LoadError;

/// File name of the manifest inside the module directory.
pub const MANIFEST_FILE: &str = "filters.yaml";

/// The whole manifest.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterManifest {
    /// Source-side chain.
    #[serde(default)]
    pub export: HookManifest,
    /// Consumer-side chain.
    #[serde(default)]
    pub import: HookManifest,
    /// Node-side chain.
    #[serde(default)]
    pub miss: HookManifest,
}

/// What every filter abstaining means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Otherwise {
    /// Let it through (Cilium's default behaviour).
    #[default]
    Open,
    /// Keep it out.
    Closed,
}

/// One hook's chain.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HookManifest {
    /// Filters in order; the first that does not abstain decides.
    #[serde(default)]
    pub chain: Vec<ChainEntry>,
    /// What a failed call yields.
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// What applies when every filter abstains.
    #[serde(default)]
    pub otherwise: Otherwise,
}

/// One filter in a chain.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainEntry {
    /// Module file name in the module directory.
    pub module: String,
    /// Config handed to the module's `configure` as JSON.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Whether decisions may be memoised (the module must be deterministic).
    #[serde(default = "yes")]
    pub memoize: bool,
}

fn yes() -> bool {
    true
}

impl ChainEntry {
    /// A chain entry for `module` with no config.
    pub fn new(module: impl Into<String>) -> ChainEntry {
        ChainEntry {
            module: module.into(),
            config: serde_json::Value::Null,
            memoize: true,
        }
    }
}

impl FilterManifest {
    /// Parses and validates manifest text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<FilterManifest, LoadError> {
        let err = |message: String| LoadError::Manifest {
            path: path.to_path_buf(),
            message,
        };
        let manifest: FilterManifest =
            serde_yaml::from_str(text).map_err(|e| err(e.to_string()))?;
        for hook in Hook::ALL {
            for (i, entry) in manifest.hook(hook).chain.iter().enumerate() {
                let m = &entry.module;
                if m.is_empty() || m.contains('/') || m.starts_with('.') || !m.ends_with(".wasm") {
                    return Err(err(format!(
                        "{hook}.chain[{i}].module: {m:?} must be a file name ending in .wasm inside the module directory"
                    )));
                }
            }
        }
        Ok(manifest)
    }

    /// Manifest text running `module` without config on every hook.
    pub fn single_yaml(module: &str) -> String {
        Hook::ALL
            .iter()
            .map(|h| format!("{h}:\n  chain:\n    - module: {module}\n"))
            .collect()
    }

    /// The chain of one hook.
    pub fn hook(&self, hook: Hook) -> &HookManifest {
        match hook {
            Hook::Export => &self.export,
            Hook::Import => &self.import,
            Hook::Miss => &self.miss,
        }
    }

    /// A manifest running one module with one config on every hook.
    pub fn single(module: &str, config: serde_json::Value) -> FilterManifest {
        let hook = HookManifest {
            chain: vec![ChainEntry {
                module: module.to_string(),
                config,
                memoize: true,
            }],
            ..Default::default()
        };
        FilterManifest {
            export: hook.clone(),
            import: hook.clone(),
            miss: hook,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chains_and_policies() {
        let m = FilterManifest::parse(
            Path::new("filters.yaml"),
            "export:\n  onFailure: fail-closed\n  chain:\n    - module: a.wasm\n      config: {x: 1}\n    - module: b.wasm\n      memoize: false\nimport:\n  otherwise: closed\n",
        )
        .unwrap();
        assert_eq!(m.export.on_failure, FailurePolicy::FailClosed);
        assert_eq!(m.export.chain.len(), 2);
        assert_eq!(m.export.chain[0].config, serde_json::json!({"x": 1}));
        assert!(!m.export.chain[1].memoize);
        assert_eq!(m.import.otherwise, Otherwise::Closed);
        assert_eq!(m.miss, HookManifest::default());
    }

    #[test]
    fn errors_name_the_field() {
        let e = FilterManifest::parse(
            Path::new("f.yaml"),
            "export:\n  chain:\n    - module: ../x.wasm\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("export.chain[0].module"), "{e}");
        let e = FilterManifest::parse(Path::new("f.yaml"), "export:\n  onFailure: explode\n")
            .unwrap_err();
        assert!(
            e.to_string().contains("onFailure") || e.to_string().contains("explode"),
            "{e}"
        );
        let e = FilterManifest::parse(Path::new("f.yaml"), "exprt: {}\n").unwrap_err();
        assert!(e.to_string().contains("exprt"), "{e}");
    }
}
