//! Builds the filters the chaos soak mounts into its processes: the shipped cfp-scope
//! (the filter the model describes) and the test-only misbehave (a module that sleeps or
//! traps in a decision, loaded for a while and then replaced by the good one).

fn main() {
    match meshfilter_filter_build::build_filters(&["cfp-scope", "misbehave"]) {
        Ok(dir) => println!("cargo:rustc-env=MESHFILTER_BENCH_MODULES={}", dir.display()),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
