//! Loading a module: size and pin checks, metadata, compilation, pre-instantiation.

use std::sync::Arc;

use meshfilter_contract::{interface, metadata};
use wasmparser::{Parser, Payload};

use crate::engine::{FilterEngine, sha2_digest};
use crate::error::LoadError;
use crate::host_side::FilterPre;

/// What is known about a loaded module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleInfo {
    /// File name in the module directory (or `builtin:<name>`).
    pub file: String,
    /// Filter name from the module's metadata.
    pub name: String,
    /// sha256 of the module bytes, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: usize,
    /// Guest SDK version it was built with.
    pub sdk_version: String,
    /// Interface version it was built for.
    pub interface_version: String,
}

/// A compiled, linked module ready to instantiate.
pub struct LoadedModule {
    /// Metadata and identity.
    pub info: ModuleInfo,
    pub(crate) digest: [u8; 32],
    pub(crate) pre: FilterPre,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl LoadedModule {
    /// Checks and compiles `bytes`. `pin` is the sha256 the host config requires, if any.
    pub fn load(
        engine: &FilterEngine,
        file: &str,
        bytes: &[u8],
        pin: Option<&str>,
    ) -> Result<Arc<LoadedModule>, LoadError> {
        let _module = tracing::info_span!("module", module = %file).entered();
        let limit = engine.config.max_module_bytes;
        if bytes.len() > limit {
            return Err(LoadError::TooLarge {
                module: file.to_string(),
                size: bytes.len(),
                limit,
            });
        }
        let digest = sha2_digest(bytes);
        let sha256 = hex::encode(digest);
        if let Some(expected) = pin
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(LoadError::PinMismatch {
                module: file.to_string(),
                expected: expected.to_string(),
                actual: sha256,
            });
        }
        let section = find_metadata(file, bytes)?;
        let meta = metadata::ModuleMetadata::parse(&section).map_err(|e| LoadError::Metadata {
            module: file.to_string(),
            reason: e.to_string(),
        })?;
        // The host serves the current line and the previous one; the version the module
        // was built for picks the bindings.
        let served = (meta.interface_package == interface::PACKAGE)
            .then(|| interface::served_version(meta.interface_version))
            .flatten();
        let Some(served) = served else {
            return Err(LoadError::Interface {
                module: file.to_string(),
                name: meta.name.to_string(),
                found: format!("{}@{}", meta.interface_package, meta.interface_version),
                expected: format!(
                    "{}@{} and @{}",
                    interface::PACKAGE,
                    interface::VERSION,
                    interface::PREVIOUS_VERSION
                ),
            });
        };
        let component = engine.compile(file, &digest, bytes)?;
        let link_err = |step: &'static str| {
            move |e: wasmtime::Error| LoadError::Link {
                module: file.to_string(),
                step,
                reason: format!("{e:#}"),
            }
        };
        let pre = engine
            .linker
            .instantiate_pre(&component)
            .map_err(link_err("link"))?;
        let pre = FilterPre::new(served, pre).map_err(link_err("link"))?;
        Ok(Arc::new(LoadedModule {
            info: ModuleInfo {
                file: file.to_string(),
                name: meta.name.to_string(),
                sha256,
                size: bytes.len(),
                sdk_version: meta.sdk_version.to_string(),
                interface_version: meta.interface_version.to_string(),
            },
            digest,
            pre,
        }))
    }
}

/// Finds the metadata section anywhere in the component, including nested core modules
/// (where the SDK's `link_section` ends up). Also validates the binary's structure.
fn find_metadata(file: &str, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
    let corrupt = |reason: String| LoadError::Corrupt {
        module: file.to_string(),
        reason,
    };
    if !Parser::is_component(bytes) {
        return Err(corrupt(if Parser::is_core_wasm(bytes) {
            "it is a core module, not a component (build filters for wasm32-wasip2)".into()
        } else {
            "missing the WebAssembly component header".into()
        }));
    }
    let mut found = None;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| corrupt(e.to_string()))? {
            Payload::CustomSection(reader) if reader.name() == metadata::SECTION_NAME => {
                found.get_or_insert_with(|| reader.data().to_vec());
            }
            Payload::End(_) => {}
            _ => {}
        }
    }
    found.ok_or_else(|| LoadError::Metadata {
        module: file.to_string(),
        reason: "section not found".into(),
    })
}
