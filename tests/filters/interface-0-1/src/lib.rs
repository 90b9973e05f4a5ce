//! `interface-0-1`: a filter module built for the released interface
//! `meshfilter:filter@0.1.0`, as a module of the 0.1 line was built before the host moved
//! to 0.2. It uses `wit-bindgen` on the frozen WIT directly, not the guest SDK (which
//! follows the current line), and writes its metadata section by hand.
//!
//! - export: `app=web` syncs with scope `region`; `app=panic` panics (std's panic hook
//!   writes the message to stderr); anything else abstains.
//! - import: keeps, naming the origin cluster.
//! - miss: resolves from every candidate, naming the local cluster.
//!
//! Off Wasm the crate is empty: it exists to be built for `wasm32-wasip2`.

#[cfg(target_arch = "wasm32")]
mod guest {
    wit_bindgen::generate!({
        world: "filter",
        path: "../../../guest-sdk/wit/released/0.1.0",
    });

    use exports::meshfilter::filter::hooks::Guest;
    use meshfilter::filter::host;
    use meshfilter::filter::types::{
        Endpoint, ExportDecision, ImportDecision, MissDecision, MissRequest, ResolveDecision,
        Scope, SyncDecision,
    };

    struct Hooks;

    impl Guest for Hooks {
        fn configure(_config: String) -> Result<(), String> {
            Ok(())
        }

        fn self_test() -> Result<(), String> {
            Ok(())
        }

        fn on_export(endpoint: &Endpoint) -> ExportDecision {
            match endpoint.label("app").as_deref() {
                Some("web") => ExportDecision::Sync(SyncDecision {
                    scope: Scope::Region,
                    reason: "interface 0.1: app=web".to_string(),
                }),
                Some("panic") => panic!("interface-0-1: panics as asked"),
                _ => ExportDecision::Abstain,
            }
        }

        fn on_import(endpoint: &Endpoint) -> ImportDecision {
            ImportDecision::Keep(format!("interface 0.1: from {}", endpoint.origin().cluster))
        }

        fn on_miss(request: &MissRequest) -> MissDecision {
            MissDecision::Resolve(ResolveDecision {
                clusters: request
                    .candidates()
                    .into_iter()
                    .map(|c| c.locality.cluster)
                    .collect(),
                reason: format!("interface 0.1 on {}", host::local().cluster),
            })
        }
    }

    export!(Hooks);

    /// What the guest SDK of the 0.1 line wrote, in `meshfilter_contract::metadata`'s
    /// format (a length that does not match the text fails to compile).
    #[unsafe(link_section = "meshfilter-metadata")]
    #[used]
    static METADATA: [u8; 63] =
        *b"name=interface-0-1\nsdk=0.1.0\ninterface=meshfilter:filter@0.1.0\n";
}
