//! The native test harness (native targets only).
//!
//! Filter code runs unchanged under plain `cargo test`: [`Endpoint`](crate::Endpoint) and
//! [`MissRequest`](crate::MissRequest) become values built with their builders,
//! [`local()`](crate::local()) returns what [`set_local`] set, and log lines are kept for
//! [`take_logs`]. All state is per test thread, and `cargo test` runs each test on its own
//! thread, so tests do not see each other.
//!
//! ```
//! use meshfilter_guest_sdk::{local, testing, Locality};
//! assert_eq!(local(), Locality::new("local"));
//! testing::set_local(Locality::new("c1").with_region("eu-west-1"));
//! assert_eq!(local().region.as_deref(), Some("eu-west-1"));
//! ```

use crate::{Config, Filter, Level, Locality};

/// Sets what [`local()`](crate::local()) returns on this thread (default: cluster `local`,
/// zone and region unknown). Endpoints built afterwards without an explicit origin take it
/// as their origin.
pub fn set_local(locality: Locality) {
    crate::native::set_local(locality);
}

/// Returns the lines logged on this thread since the last call, oldest first, and clears
/// them.
pub fn take_logs() -> Vec<(Level, String)> {
    crate::native::take_logs()
}

/// Loads a filter as the host does: [`Filter::configure`] with `config` (JSON text), then
/// [`Filter::self_test`].
pub fn load<F: Filter>(config: &str) -> Result<F, String> {
    let filter = F::configure(&Config::new(config))?;
    filter.self_test()?;
    Ok(filter)
}

/// Asserts that `config` is rejected by [`load`] with an error starting with `want`, and
/// returns the error: the one-line check for a table of bad configurations.
///
/// ```
/// # use meshfilter_guest_sdk::{testing, Config, Filter};
/// # #[derive(Default, serde::Deserialize)]
/// # #[serde(deny_unknown_fields)]
/// # struct Settings { ttl: u32 }
/// # struct Ttl;
/// # impl Filter for Ttl {
/// #     fn configure(config: &Config) -> Result<Self, String> {
/// #         config.parse::<Settings>().map(|_| Ttl)
/// #     }
/// # }
/// testing::assert_rejects::<Ttl>(r#"{"ttl": -1}"#, "invalid config at ttl: invalid value");
/// ```
#[track_caller]
pub fn assert_rejects<F: Filter>(config: &str, want: &str) -> String {
    match load::<F>(config) {
        Ok(_) => panic!("config {config} was accepted; want an error starting with {want:?}"),
        Err(err) => {
            assert!(
                err.starts_with(want),
                "config {config}: got error {err:?}, want it to start with {want:?}"
            );
            err
        }
    }
}
