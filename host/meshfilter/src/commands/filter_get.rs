//! `meshfilter filter get`: writes the filter modules shipped inside this binary to files,
//! so the filters ConfigMap and the image carry exactly the modules the binary was built
//! with, and prints their sha256 pins.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use sha2::Digest;

use crate::builtin;
use crate::cli::GetArgs;

pub fn run(args: &GetArgs) -> anyhow::Result<ExitCode> {
    match (&args.name, &args.all) {
        (Some(name), None) => {
            let (file, bytes) = shipped(name)?;
            match args.output.as_deref() {
                None | Some("-") => {
                    let mut stdout = std::io::stdout().lock();
                    if stdout.is_terminal() {
                        bail!(
                            "{file} is binary: write it to a file with `-o {file}`, or redirect stdout"
                        );
                    }
                    stdout.write_all(bytes)?;
                    stdout.flush()?;
                }
                Some(path) => {
                    write_atomically(Path::new(path), bytes)?;
                    println!("{}  {file}", sha256(bytes));
                }
            }
        }
        (None, Some(dir)) => {
            if args.output.is_some() {
                bail!("-o/--output names one file; --all writes one file per module into DIR");
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // Lines as `sha256sum` prints them: the pins for the roles' `filters.pins`.
            for (file, bytes) in builtin::SHIPPED {
                write_atomically(&dir.join(file), bytes)?;
                println!("{}  {file}", sha256(bytes));
            }
        }
        _ => bail!("name one shipped filter, or --all DIR"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A shipped module by name, with or without `.wasm` or `builtin:`.
fn shipped(name: &str) -> anyhow::Result<(&'static str, &'static [u8])> {
    let bare = name
        .trim_start_matches("builtin:")
        .trim_end_matches(".wasm");
    builtin::SHIPPED
        .iter()
        .find(|(file, _)| file.trim_end_matches(".wasm") == bare)
        .copied()
        .with_context(|| {
            let known: Vec<_> = builtin::SHIPPED
                .iter()
                .map(|(n, _)| n.trim_end_matches(".wasm"))
                .collect();
            format!("no shipped filter {name:?}; shipped: {}", known.join(", "))
        })
}

/// The hex sha256 of a module: what `filters.pins` holds for it.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Writes through a temporary file in the same directory and renames it into place, so a
/// directory a running role watches never holds half a module.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    // Readable by the non-root user the roles run as once baked into an image.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
