//! Builds the shipped filters to Wasm so the binary can embed them, and the test-only
//! `misbehave` module beside them for the CLI tests (it is never embedded).

fn main() {
    match meshfilter_filter_build::build_filters(&[
        "cfp-scope",
        "namespace-allowlist",
        "region-pairs",
        "misbehave",
    ]) {
        Ok(dir) => {
            println!(
                "cargo:rustc-env=MESHFILTER_SHIPPED_FILTERS={}",
                dir.display()
            );
            println!("cargo:rustc-env=MESHFILTER_TEST_MODULES={}", dir.display());
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
