//! `meshfilter filter check`: load a module the way the runtime would and report.

use std::process::ExitCode;

use meshfilter_filter_runtime::Hook;

use crate::cli::ModuleArgs;

pub fn run(args: &ModuleArgs) -> anyhow::Result<ExitCode> {
    let engine = super::engine()?;
    let runtime = match super::load_single(&engine, args, super::locality(args), true) {
        Ok(r) => r,
        Err(e) => {
            println!("FAIL {}: {e:#}", args.module);
            return Ok(ExitCode::FAILURE);
        }
    };
    let info = runtime.info();
    for m in &info.modules {
        println!("module     {}", m.file);
        println!("filter     {}", m.name);
        println!("sdk        {}", m.sdk_version);
        println!("interface  meshfilter:filter@{}", m.interface_version);
        println!("sha256     {}", m.sha256);
        println!(
            "size       {} bytes ({:.0}% of the 1 MiB ConfigMap limit)",
            m.size,
            m.size as f64 * 100.0 / meshfilter_contract::MAX_MODULE_BYTES as f64
        );
    }
    for hook in Hook::ALL {
        println!(
            "{:<10} ok (configured, self-test passed, probe call returned)",
            hook.as_str()
        );
    }
    println!("OK");
    Ok(ExitCode::SUCCESS)
}
