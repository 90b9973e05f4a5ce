//! Builds every filter the tests load, shipped and test-only, to Wasm.

fn main() {
    match meshfilter_filter_build::build_filters(&[
        "cfp-scope",
        "namespace-allowlist",
        "region-pairs",
        "misbehave",
        "interface-0-1",
    ]) {
        Ok(dir) => println!("cargo:rustc-env=MESHFILTER_TEST_MODULES={}", dir.display()),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
