//! The interface compatibility check CI runs: the current WIT against the last released
//! one, by the rule in the WIT file's header.
//!
//! - On the same line (major, or minor before 1.0), everything the release has must still
//!   exist in the current package with identical types and signatures: every interface,
//!   every named type, every function and resource method, every world import and export.
//!   Additions are fine.
//! - On a new line, the host must still serve the release: it is the previous line
//!   ([`interface::PREVIOUS_VERSION`]), which the runtime binds from the frozen file
//!   (a test in `tests/` runs a module built for it).

use std::path::{Path, PathBuf};

use meshfilter_contract::interface;
use wit_parser::{Function, Handle, PackageId, Resolve, Type, TypeDefKind, WorldItem, WorldKey};

/// A parsed WIT package and the resolve that owns it.
struct Package {
    resolve: Resolve,
    id: PackageId,
}

impl Package {
    fn parse(name: &str, text: &str) -> Package {
        let mut resolve = Resolve::new();
        let id = resolve
            .push_str(name, text)
            .unwrap_or_else(|e| panic!("{name} does not parse: {e:#}"));
        Package { resolve, id }
    }

    fn version(&self) -> String {
        let name = &self.resolve.packages[self.id].name;
        name.version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default()
    }
}

/// Everything `released` has that `current` lacks or changed, one line each.
fn breaking_changes(released: &Package, current: &Package) -> Vec<String> {
    let mut out = Vec::new();
    let (r, c) = (&released.resolve, &current.resolve);
    let (rp, cp) = (&r.packages[released.id], &c.packages[current.id]);
    if rp.name.namespace != cp.name.namespace || rp.name.name != cp.name.name {
        out.push(format!("package renamed: {} is now {}", rp.name, cp.name));
        return out;
    }
    for (name, &rid) in &rp.interfaces {
        let Some(&cid) = cp.interfaces.get(name) else {
            out.push(format!("interface {name} removed"));
            continue;
        };
        let (ri, ci) = (&r.interfaces[rid], &c.interfaces[cid]);
        for (ty, &rt) in &ri.types {
            match ci.types.get(ty) {
                None => out.push(format!("type {name}.{ty} removed")),
                Some(&ct) => {
                    if !same_typedef(r, rt, c, ct) {
                        out.push(format!("type {name}.{ty} changed"));
                    }
                }
            }
        }
        for (f, rf) in &ri.functions {
            match ci.functions.get(f) {
                None => out.push(format!("function {name}.{f} removed")),
                Some(cf) => {
                    if !same_function(r, rf, c, cf) {
                        out.push(format!("function {name}.{f} changed its signature"));
                    }
                }
            }
        }
    }
    for (name, &rw) in &rp.worlds {
        let Some(&cw) = cp.worlds.get(name) else {
            out.push(format!("world {name} removed"));
            continue;
        };
        let (rw, cw) = (&r.worlds[rw], &c.worlds[cw]);
        for (dir, ritems, citems) in [
            ("import", &rw.imports, &cw.imports),
            ("export", &rw.exports, &cw.exports),
        ] {
            let key = |res: &Resolve, k: &WorldKey| match k {
                WorldKey::Name(n) => n.clone(),
                WorldKey::Interface(id) => res.interfaces[*id].name.clone().unwrap_or_default(),
            };
            let current: Vec<(String, &WorldItem)> =
                citems.iter().map(|(k, i)| (key(c, k), i)).collect();
            for (k, ritem) in ritems {
                let k = key(r, k);
                match current.iter().find(|(ck, _)| *ck == k) {
                    None => out.push(format!("world {name}: {dir} {k} removed")),
                    Some((_, citem)) => {
                        let same = match (ritem, citem) {
                            (WorldItem::Interface { .. }, WorldItem::Interface { .. }) => true,
                            (WorldItem::Function(rf), WorldItem::Function(cf)) => {
                                same_function(r, rf, c, cf)
                            }
                            (WorldItem::Type(rt), WorldItem::Type(ct)) => {
                                same_typedef(r, *rt, c, *ct)
                            }
                            _ => false,
                        };
                        if !same {
                            out.push(format!("world {name}: {dir} {k} changed"));
                        }
                    }
                }
            }
        }
    }
    out
}

fn same_function(r: &Resolve, rf: &Function, c: &Resolve, cf: &Function) -> bool {
    std::mem::discriminant(&rf.kind) == std::mem::discriminant(&cf.kind)
        && rf.params.len() == cf.params.len()
        && rf
            .params
            .iter()
            .zip(&cf.params)
            .all(|((rn, rt), (cn, ct))| rn == cn && same_type(r, rt, c, ct))
        && match (&rf.result, &cf.result) {
            (None, None) => true,
            (Some(rt), Some(ct)) => same_type(r, rt, c, ct),
            _ => false,
        }
}

fn same_type(r: &Resolve, rt: &Type, c: &Resolve, ct: &Type) -> bool {
    match (rt, ct) {
        (Type::Id(ri), Type::Id(ci)) => same_typedef(r, *ri, c, *ci),
        (Type::Id(_), _) | (_, Type::Id(_)) => false,
        (a, b) => a == b,
    }
}

fn same_opt(r: &Resolve, a: &Option<Type>, c: &Resolve, b: &Option<Type>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => same_type(r, a, c, b),
        _ => false,
    }
}

/// Structural equality of two type definitions, names included.
fn same_typedef(r: &Resolve, ri: wit_parser::TypeId, c: &Resolve, ci: wit_parser::TypeId) -> bool {
    let (rt, ct) = (&r.types[ri], &c.types[ci]);
    if rt.name != ct.name {
        return false;
    }
    match (&rt.kind, &ct.kind) {
        (TypeDefKind::Record(a), TypeDefKind::Record(b)) => {
            a.fields.len() == b.fields.len()
                && a.fields
                    .iter()
                    .zip(&b.fields)
                    .all(|(x, y)| x.name == y.name && same_type(r, &x.ty, c, &y.ty))
        }
        (TypeDefKind::Resource, TypeDefKind::Resource) => true,
        (TypeDefKind::Handle(a), TypeDefKind::Handle(b)) => match (a, b) {
            (Handle::Own(x), Handle::Own(y)) | (Handle::Borrow(x), Handle::Borrow(y)) => {
                same_typedef(r, *x, c, *y)
            }
            _ => false,
        },
        (TypeDefKind::Flags(a), TypeDefKind::Flags(b)) => a
            .flags
            .iter()
            .map(|f| &f.name)
            .eq(b.flags.iter().map(|f| &f.name)),
        (TypeDefKind::Tuple(a), TypeDefKind::Tuple(b)) => {
            a.types.len() == b.types.len()
                && a.types
                    .iter()
                    .zip(&b.types)
                    .all(|(x, y)| same_type(r, x, c, y))
        }
        (TypeDefKind::Variant(a), TypeDefKind::Variant(b)) => {
            a.cases.len() == b.cases.len()
                && a.cases
                    .iter()
                    .zip(&b.cases)
                    .all(|(x, y)| x.name == y.name && same_opt(r, &x.ty, c, &y.ty))
        }
        (TypeDefKind::Enum(a), TypeDefKind::Enum(b)) => a
            .cases
            .iter()
            .map(|x| &x.name)
            .eq(b.cases.iter().map(|x| &x.name)),
        (TypeDefKind::Option(a), TypeDefKind::Option(b))
        | (TypeDefKind::List(a), TypeDefKind::List(b))
        | (TypeDefKind::Type(a), TypeDefKind::Type(b)) => same_type(r, a, c, b),
        (TypeDefKind::Result(a), TypeDefKind::Result(b)) => {
            same_opt(r, &a.ok, c, &b.ok) && same_opt(r, &a.err, c, &b.err)
        }
        (TypeDefKind::FixedSizeList(a, n), TypeDefKind::FixedSizeList(b, m)) => {
            n == m && same_type(r, a, c, b)
        }
        (TypeDefKind::Future(a), TypeDefKind::Future(b))
        | (TypeDefKind::Stream(a), TypeDefKind::Stream(b)) => same_opt(r, a, c, b),
        _ => false,
    }
}

/// What the rule says about the current package against a release: the breaking changes
/// on the same line, or whether the host still serves it on a new line.
fn check(released: &Package, current: &Package, served: &[&str]) -> Result<(), String> {
    let (rv, cv) = (released.version(), current.version());
    if interface::same_line(&rv, &cv) {
        let broken = breaking_changes(released, current);
        if broken.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{cv} is on the line of the released {rv} but breaks it:\n  {}\n\
                 restore what was released, or start a new line (and keep serving {rv})",
                broken.join("\n  ")
            ))
        }
    } else if served.contains(&rv.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "{cv} starts a new line, but the host no longer serves the released {rv}; \
             it must serve the current and the previous line"
        ))
    }
}

fn wit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-sdk/wit")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The released WIT files, newest first.
fn releases() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(Vec<u32>, String, PathBuf)> = std::fs::read_dir(wit_dir().join("released"))
        .expect("guest-sdk/wit/released exists")
        .map(|e| {
            let path = e.unwrap().path();
            let version = path.file_name().unwrap().to_string_lossy().into_owned();
            let key = version.split('.').map(|p| p.parse().unwrap()).collect();
            (key, version, path.join("filter.wit"))
        })
        .collect();
    out.sort();
    out.into_iter().rev().map(|(_, v, p)| (v, p)).collect()
}

#[test]
fn the_current_interface_keeps_the_last_release() {
    let current = Package::parse("filter.wit", &read(&wit_dir().join("filter.wit")));
    assert_eq!(
        current.version(),
        interface::VERSION,
        "the contract's VERSION"
    );
    let (version, path) = releases().into_iter().next().expect("a released interface");
    let released = Package::parse(&format!("released/{version}"), &read(&path));
    assert_eq!(
        released.version(),
        version,
        "{} declares its version",
        path.display()
    );
    let served = [interface::VERSION, interface::PREVIOUS_VERSION];
    if let Err(e) = check(&released, &current, &served) {
        panic!("{e}");
    }
    if !interface::same_line(&version, interface::VERSION) {
        assert_eq!(
            interface::PREVIOUS_VERSION,
            version,
            "a new line serves the last release as the previous line"
        );
    }
}

#[test]
fn the_check_fails_on_a_broken_copy() {
    let released = Package::parse(
        "released",
        &read(&wit_dir().join("released/0.1.0/filter.wit")),
    );
    let text = read(&wit_dir().join("released/0.1.0/filter.wit"));
    // A copy on the release's line with `from` replaced by `to`.
    let same_line = |from: &str, to: &str| {
        assert!(text.contains(from), "{from:?} is in the released WIT");
        Package::parse(
            "copy",
            &text.replace(from, to).replace("@0.1.0;", "@0.1.1;"),
        )
    };
    // Additions on the same line are fine.
    let grown = same_line(
        "        origin: func() -> locality;",
        "        origin: func() -> locality;\n        annotations: func() -> list<tuple<string, string>>;",
    );
    assert_eq!(check(&released, &grown, &[]), Ok(()));

    // (what is broken, replace this, by this, the report names)
    let cases = [
        (
            "a method's result type",
            "identity: func() -> u32;",
            "identity: func() -> u64;",
            "function types.[method]endpoint.identity changed its signature",
        ),
        (
            "a removed method",
            "        pod-name: func() -> string;\n",
            "",
            "function types.[method]endpoint.pod-name removed",
        ),
        (
            "a record field",
            "owns-prefix: bool,",
            "owns-prefix: u8,",
            "type types.candidate changed",
        ),
        (
            "a variant case",
            "        global,\n",
            "",
            "type types.scope changed",
        ),
        (
            "a parameter name",
            "label: func(key: string)",
            "label: func(name: string)",
            "function types.[method]endpoint.label changed its signature",
        ),
    ];
    for (what, from, to, want) in cases {
        let err = check(&released, &same_line(from, to), &["0.1.0", "0.1.1"]).unwrap_err();
        assert!(err.contains(want), "{what}: want {want:?} in:\n{err}");
    }

    // A new line is fine only while the host serves the release.
    let next = Package::parse("next", &text.replace("@0.1.0;", "@0.2.0;"));
    assert_eq!(check(&released, &next, &["0.2.0", "0.1.0"]), Ok(()));
    let err = check(&released, &next, &["0.2.0"]).unwrap_err();
    assert!(err.contains("no longer serves the released 0.1.0"), "{err}");
}
