//! The `meshfilter` binary: wires the crates together behind one CLI.

mod builtin;
mod cli;
mod commands;
mod config;
mod node_config;
mod telemetry;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    telemetry::init(cli.log_format, cli.verbose);
    match commands::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
