//! `meshfilter filter new NAME`: write a ready filter crate.
//!
//! The crate depends on the guest SDK by path, has a filter with all three hooks, a
//! table-driven native test, an example config, a cases file for `filter test` and a
//! README. Out of the box it builds to a module that passes `filter check` and
//! `filter test`, and its native tests pass. The files are templates beside this one.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::NewArgs;

/// The crate's files: path in the crate, template.
const FILES: [(&str, &str); 5] = [
    ("Cargo.toml", include_str!("template/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("template/lib.rs.tmpl")),
    ("config.json", include_str!("template/config.json.tmpl")),
    ("cases.yaml", include_str!("template/cases.yaml.tmpl")),
    ("README.md", include_str!("template/README.md.tmpl")),
];

/// The directory of the SDK crate, looked for in every directory above the current one.
const SDK_DIR: &str = "guest-sdk";

/// The SDK's package name, which a found `guest-sdk/Cargo.toml` must declare.
const SDK_PACKAGE: &str = "meshfilter-guest-sdk";

pub fn run(args: &NewArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        anyhow::bail!(
            "{} exists and is not empty; choose another --dir",
            dir.display()
        );
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let sdk = match &args.sdk {
        Some(sdk) => {
            let sdk = cwd.join(sdk);
            anyhow::ensure!(
                is_sdk(&sdk),
                "--sdk {}: no {SDK_PACKAGE} crate there (want the directory holding its Cargo.toml)",
                sdk.display()
            );
            sdk
        }
        None => find_sdk(&cwd).with_context(|| {
            format!(
                "no {SDK_DIR}/ directory holding the {SDK_PACKAGE} crate in {} or above it; \
                 give its path with --sdk PATH",
                cwd.display()
            )
        })?,
    };
    let crate_dir = cwd.join(&dir);
    std::fs::create_dir_all(crate_dir.join("src"))
        .with_context(|| format!("creating {}", crate_dir.display()))?;
    let sdk_path = relative_path(&crate_dir, &sdk);
    for (file, template) in FILES {
        let path = crate_dir.join(file);
        std::fs::write(&path, render(template, &args.name, &sdk_path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("created filter crate {} in {}", args.name, dir.display());
    println!("  guest SDK: {sdk_path}");
    println!("next: see {}", dir.join("README.md").display());
    Ok(ExitCode::SUCCESS)
}

/// A crate name that is also a valid module file name: lowercase letters, digits and `-`,
/// starting with a letter.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && name.len() <= 64;
    anyhow::ensure!(
        valid,
        "invalid filter name {name:?}: use lowercase letters, digits and '-', starting with a \
         letter (it names the crate and the module)"
    );
    Ok(())
}

/// The templates with their placeholders filled: `{{name}}` (the crate), `{{module}}`
/// (the crate name as cargo names the `.wasm`), `{{type}}` (the filter type) and
/// `{{sdk_path}}`.
fn render(template: &str, name: &str, sdk_path: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{module}}", &name.replace('-', "_"))
        .replace("{{type}}", &type_name(name))
        .replace("{{sdk_path}}", sdk_path)
}

/// `team-web` → `TeamWeb`.
fn type_name(name: &str) -> String {
    name.split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut chars = p.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Whether `dir` holds the SDK crate.
fn is_sdk(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|t| t.contains(&format!("name = \"{SDK_PACKAGE}\"")))
}

/// The first `guest-sdk/` holding the SDK in `start` or a directory above it.
fn find_sdk(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(SDK_DIR))
        .find(|d| is_sdk(d))
}

/// `to` relative to `from` (both absolute), with `/` separators, as Cargo.toml wants it.
fn relative_path(from: &Path, to: &Path) -> String {
    let from: Vec<Component<'_>> = normalise(from);
    let to: Vec<Component<'_>> = normalise(to);
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".to_string(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// The components of an absolute path with `.` dropped and `..` applied.
fn normalise(path: &Path) -> Vec<Component<'_>> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.last(), Some(Component::Normal(_))) {
                    out.pop();
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_types_and_modules() {
        assert_eq!(type_name("team-web"), "TeamWeb");
        assert_eq!(type_name("a1-b2"), "A1B2");
        let out = render(
            "{{name}} {{module}} {{type}} {{sdk_path}}",
            "team-web",
            "../sdk",
        );
        assert_eq!(out, "team-web team_web TeamWeb ../sdk");
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", "Team", "1team", "team_web", "team-", "a b"] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("invalid filter name"), "{bad}: {err}");
        }
        assert!(check_name("team-web2").is_ok());
    }

    #[test]
    fn paths_are_relative() {
        assert_eq!(
            relative_path(Path::new("/w/filters/new"), Path::new("/w/guest-sdk")),
            "../../guest-sdk"
        );
        assert_eq!(
            relative_path(Path::new("/w/x/./y/../new"), Path::new("/w/guest-sdk")),
            "../../guest-sdk"
        );
        assert_eq!(relative_path(Path::new("/w"), Path::new("/w/sdk")), "sdk");
    }

    #[test]
    fn every_placeholder_is_filled() {
        for (file, template) in FILES {
            let out = render(template, "team-web", "../sdk");
            assert!(!out.contains("{{"), "{file} keeps a placeholder");
        }
    }
}
