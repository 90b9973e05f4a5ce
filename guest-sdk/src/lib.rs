//! Write meshfilter filter modules in Rust.
//!
//! meshfilter asks WebAssembly filter modules every Cluster Mesh sync question: should this
//! cluster publish an endpoint ([`Filter::export`]), should it mirror a remote one
//! ([`Filter::import`]), and what should a node do about a datapath ipcache miss
//! ([`Filter::miss`]). A filter is a Rust type that implements [`Filter`] and is registered
//! with [`export_filter!`]; built for `wasm32-wasip2` it becomes a module the host loads.
//! The host runs modules as a chain: the first decision that is not `Abstain` wins, so a
//! filter only answers what it has an opinion on and abstains otherwise (the default).
//!
//! # A complete filter
//!
//! ```
//! use meshfilter_guest_sdk::{
//!     export_filter, warn, Config, Endpoint, ExportDecision, Filter, LabelSelector, Scope,
//! };
//! use serde::Deserialize;
//!
//! /// Publishes the pods a selector picks, region-wide.
//! struct RegionalSelector {
//!     selector: LabelSelector,
//! }
//!
//! #[derive(Default, Deserialize)]
//! #[serde(rename_all = "camelCase", deny_unknown_fields)]
//! struct Settings {
//!     selector: LabelSelector,
//! }
//!
//! impl Filter for RegionalSelector {
//!     fn configure(config: &Config) -> Result<Self, String> {
//!         let settings: Settings = config.parse()?;
//!         if settings.selector.is_empty() {
//!             return Err("selector: must not be empty".into());
//!         }
//!         Ok(RegionalSelector { selector: settings.selector })
//!     }
//!
//!     fn export(&self, endpoint: &Endpoint) -> ExportDecision {
//!         if !self.selector.matches(endpoint) {
//!             return ExportDecision::Abstain;
//!         }
//!         if endpoint.namespace() == "kube-system" {
//!             warn!("selector {} picked a kube-system pod; not publishing it", self.selector);
//!             return ExportDecision::skip("kube-system is never published");
//!         }
//!         ExportDecision::sync(Scope::Region).because(format!("matches {}", self.selector))
//!     }
//! }
//!
//! export_filter!(RegionalSelector);
//!
//! // The native test harness: the same code, no Wasm, no stubs.
//! use meshfilter_guest_sdk::testing;
//!
//! let filter: RegionalSelector = testing::load(r#"{"selector": "app=web,tier in (api,edge)"}"#)?;
//!
//! let web = Endpoint::builder()
//!     .namespace("shop")
//!     .label("app", "web")
//!     .label("tier", "api")
//!     .build();
//! assert_eq!(
//!     filter.export(&web),
//!     ExportDecision::sync(Scope::Region).because("matches app=web,tier in (api,edge)"),
//! );
//! // The filter read the two labels it needed, then the namespace: nothing else.
//! assert_eq!(web.reads(), ["label(app)", "label(tier)", "namespace()"]);
//!
//! let db = Endpoint::builder().label("app", "db").build();
//! assert_eq!(filter.export(&db), ExportDecision::Abstain);
//!
//! let system = Endpoint::builder()
//!     .namespace("kube-system")
//!     .label("app", "web")
//!     .label("tier", "edge")
//!     .build();
//! assert!(matches!(filter.export(&system), ExportDecision::Skip { .. }));
//! assert_eq!(testing::take_logs().len(), 1);
//!
//! assert!(testing::load::<RegionalSelector>(r#"{"selector": "app in (web"}"#).is_err());
//! # Ok::<(), String>(())
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` and ship
//! `target/wasm32-wasip2/release/<crate>.wasm` (at most [`MAX_MODULE_BYTES`]). The crate must
//! have `crate-type = ["cdylib", "rlib"]`: the `cdylib` is the module, the `rlib` is what
//! `cargo test` uses.
//!
//! # The determinism contract
//!
//! The host does not hand a filter the whole endpoint: [`Endpoint`] and [`MissRequest`]
//! are handles, and each accessor call asks the host for one field. The host records which
//! accessors a decision called and what they returned, and reuses the decision for every
//! later input on which those same calls return the same values. This is what makes a
//! filter cheap at scale, and it holds only if filters keep to three rules:
//!
//! 1. **Deterministic.** A decision depends only on the configuration, the accessor
//!    results and [`local()`]. No clocks, randomness, counters or other mutable state that
//!    changes decisions: hooks take `&self` for this reason.
//! 2. **Lazy.** Call an accessor only when the decision needs it, and prefer the narrow
//!    one: [`Endpoint::label`] for one key rather than [`Endpoint::labels`]. Every value
//!    read becomes part of the memo key; reading a pod name that the decision ignores makes
//!    every pod a cache miss.
//! 3. **Quiet side effects.** Logging is fine, but because decisions are reused a log line
//!    appears once per distinct input, not once per endpoint.
//!
//! On native targets [`Endpoint::reads`] lists the accessor calls a decision made, so a
//! test can check rule 2.
//!
//! # Failure
//!
//! A panic traps the module; the host counts the failure and treats the decision as
//! `Abstain` (or unloads the module, per its policy). So does any WASI call that would
//! wait (`std::thread::sleep`, polling, reading stdin): the host cannot interrupt a
//! waiting host call, so it refuses them all. If [`Filter::configure`] was not called or
//! failed, every hook abstains.
#![deny(missing_docs)]

mod config;
mod decision;
mod endpoint;
mod glob;
mod locality;
mod log;
mod miss;
mod selector;
mod topology;

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
#[cfg(target_arch = "wasm32")]
mod wasm;

pub use config::Config;
pub use decision::{ExportDecision, ImportDecision, MissDecision};
pub use endpoint::Endpoint;
#[cfg(not(target_arch = "wasm32"))]
pub use endpoint::EndpointBuilder;
pub use glob::{Glob, GlobError, NamespaceSet};
pub use locality::{Candidate, Locality, local};
pub use log::Level;
pub use meshfilter_contract::labels;
pub use meshfilter_contract::scope::ScopeError;
/// How far an exported endpoint may travel: the `clustermesh.cilium.io/sync-scope` grammar
/// shared with the host (`regional`, `zone`, `cluster`, `global`, or a list of regions).
pub use meshfilter_contract::scope::SyncScope as Scope;
pub use miss::MissRequest;
#[cfg(not(target_arch = "wasm32"))]
pub use miss::MissRequestBuilder;
pub use selector::{LabelSelector, SelectorError};
pub use topology::{Region, TopologyKind, TopologyNameError, Zone};

/// Version of this SDK, recorded in every module's `meshfilter-metadata` custom section.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

pub use meshfilter_contract::MAX_MODULE_BYTES;

/// A filter: the decisions one module makes.
///
/// Every hook has a default that abstains, so a filter implements only the hooks it has an
/// opinion on. Hooks must follow the [determinism contract](crate#the-determinism-contract).
pub trait Filter: Sized + 'static {
    /// Builds the filter from its configuration (the `config` of its entry in the host's
    /// filter manifest). Called once per module instance, before any hook. An error rejects
    /// the module; it should name the bad field and value.
    fn configure(config: &Config) -> Result<Self, String>;

    /// Checks the configured filter before it goes live, for instance by running a few
    /// decisions whose answers are known. An error rejects the module.
    fn self_test(&self) -> Result<(), String> {
        Ok(())
    }

    /// Source side: should this cluster publish `endpoint`, and how far.
    fn export(&self, endpoint: &Endpoint) -> ExportDecision {
        let _ = endpoint;
        ExportDecision::Abstain
    }

    /// Consumer side: should this cluster mirror the remote `endpoint`.
    fn import(&self, endpoint: &Endpoint) -> ImportDecision {
        let _ = endpoint;
        ImportDecision::Abstain
    }

    /// Node side: what to do about a datapath ipcache miss.
    fn miss(&self, request: &MissRequest) -> MissDecision {
        let _ = request;
        MissDecision::Abstain
    }
}

/// Registers a [`Filter`] as the module's implementation of the filter interface.
///
/// ```
/// # use meshfilter_guest_sdk::{export_filter, Config, Filter};
/// struct Quiet;
/// impl Filter for Quiet {
///     fn configure(_: &Config) -> Result<Self, String> {
///         Ok(Quiet)
///     }
/// }
/// export_filter!(Quiet);
/// // or, to record a name other than the crate's in the module metadata:
/// // export_filter!(Quiet, name = "quiet-filter");
/// ```
///
/// Use it once per crate, at the top level. On `wasm32` it exports the interface's hooks,
/// keeps the configured instance for the life of the module instance, and writes the
/// `meshfilter-metadata` custom section (filter name, SDK version, interface version) that
/// the host checks before loading. The name defaults to the crate's package name. On other
/// targets it only checks that the type implements [`Filter`], so the crate stays an
/// ordinary library for native tests.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty $(,)?) => {
        $crate::export_filter!($filter, name = ::core::env!("CARGO_PKG_NAME"));
    };
    ($filter:ty, name = $name:expr $(,)?) => {
        const _: fn() = $crate::__private::assert_filter::<$filter>;
        const _: &str = $name;
        $crate::__export_filter_hooks!($filter, $name);
    };
}

/// The target-specific half of [`export_filter!`]: nothing off Wasm.
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_filter_hooks {
    ($filter:ty, $name:expr) => {};
}

/// The target-specific half of [`export_filter!`]: the interface exports, the instance slot
/// and the metadata section.
#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[macro_export]
macro_rules! __export_filter_hooks {
    ($filter:ty, $name:expr) => {
        const _: () = {
            use $crate::__private as sdk;

            ::std::thread_local! {
                // A component instance is single-threaded: this is one slot per instance.
                static INSTANCE: ::core::cell::RefCell<::core::option::Option<$filter>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct Hooks;

            impl sdk::Guest for Hooks {
                fn configure(config: sdk::String) -> ::core::result::Result<(), sdk::String> {
                    sdk::configure(&INSTANCE, config)
                }
                fn self_test() -> ::core::result::Result<(), sdk::String> {
                    sdk::self_test(&INSTANCE)
                }
                fn on_export(endpoint: &sdk::HostEndpoint) -> sdk::types::ExportDecision {
                    sdk::on_export(&INSTANCE, endpoint)
                }
                fn on_import(endpoint: &sdk::HostEndpoint) -> sdk::types::ImportDecision {
                    sdk::on_import(&INSTANCE, endpoint)
                }
                fn on_miss(request: &sdk::HostMissRequest) -> sdk::types::MissDecision {
                    sdk::on_miss(&INSTANCE, request)
                }
            }

            $crate::__private::bindings::__export_hooks!(
                Hooks with_types_in $crate::__private::bindings
            );

            const NAME: &str = $name;
            const LEN: usize = sdk::metadata::encoded_len(NAME, $crate::SDK_VERSION);
            // `meshfilter_contract::metadata::SECTION_NAME`, as a literal (a test checks).
            #[unsafe(link_section = "meshfilter-metadata")]
            #[used]
            static METADATA: [u8; LEN] = sdk::metadata::encode::<LEN>(NAME, $crate::SDK_VERSION);
        };
    };
}

/// What the macros expand to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    use crate::Filter;

    pub use crate::log::log;
    pub use meshfilter_contract::metadata;

    #[cfg(target_arch = "wasm32")]
    pub use crate::wasm::{
        Guest, HostEndpoint, HostMissRequest, bindings, configure, on_export, on_import, on_miss,
        self_test, types,
    };
    #[cfg(target_arch = "wasm32")]
    pub use std::string::String;

    /// Compiles only for a [`Filter`]: the check `export_filter!` makes on every target.
    pub fn assert_filter<F: Filter>() {}
}

#[cfg(test)]
mod tests {
    use meshfilter_contract::{interface, metadata};

    #[test]
    fn macro_literals_match_the_contract() {
        // `export_filter!` spells the section name as a literal: attributes take no constants.
        assert_eq!(metadata::SECTION_NAME, "meshfilter-metadata");
        let wit = include_str!("../wit/filter.wit");
        let package = format!("package {}@{};", interface::PACKAGE, interface::VERSION);
        assert!(
            wit.lines().any(|l| l == package),
            "wit/filter.wit does not declare {package}"
        );
    }
}
