//! Builds the shipped filters to Wasm so the binary can embed them.

fn main() {
    match meshfilter_filter_build::build_filters(&[
        "cfp-scope",
        "namespace-allowlist",
        "region-pairs",
    ]) {
        Ok(dir) => println!(
            "cargo:rustc-env=MESHFILTER_SHIPPED_FILTERS={}",
            dir.display()
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
