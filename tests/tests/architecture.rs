//! The workspace's shape, checked: no two modules of one crate import each other, directly
//! or around a circle (a circle means neither can be understood, tested or moved alone).
//!
//! Edges are the `crate::` and `super::` paths a module names outside its `tests` module
//! and comments, resolved to the deepest module they reach; naming an ancestor is not an
//! edge (a child may use what its parent holds).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

#[test]
fn no_crate_has_an_import_circle() {
    let root = meshfilter_tests::cargo::workspace();
    let mut circles = Vec::new();
    for src in crate_sources(&root) {
        let modules = modules_of(&src);
        let edges = edges_of(&modules);
        for circle in circles_in(&edges) {
            let names: Vec<String> = circle.iter().map(display).collect();
            circles.push(format!(
                "{}: {}",
                src.strip_prefix(&root).unwrap_or(&src).display(),
                names.join(" -> ")
            ));
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn a_circle_is_found() {
    // The checker itself, on a circle of three and an ancestor reference.
    let m = |s: &str| -> Module {
        s.split('/')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    };
    let modules: BTreeMap<Module, String> = BTreeMap::from([
        (m(""), "mod a; mod b; mod c;".to_string()),
        (m("a"), "use crate::b::Thing;".to_string()),
        (m("b"), "fn f() { crate::c::g() }".to_string()),
        (m("c"), "use super::{a::X, b};\nuse crate::Top;".to_string()),
        (m("d"), "// crate::a::X in a comment\n".to_string()),
    ]);
    let edges = edges_of(&modules);
    assert_eq!(circles_in(&edges).len(), 1, "{edges:?}");
    assert!(edges[&m("c")].contains(&m("a")) && !edges[&m("c")].contains(&m("")));
    assert!(edges[&m("d")].is_empty());
}

fn display(m: &Module) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

/// `src/` of every crate in the workspace (build output and Git data skipped).
fn crate_sources(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if !path.is_dir() || name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if name == "src" && dir.join("Cargo.toml").is_file() {
                found.push(path);
            } else {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Every module file under `src`, by module path, with its text (tests and comments out).
fn modules_of(src: &Path) -> BTreeMap<Module, String> {
    let mut modules = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut module: Module = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            modules.insert(module, std::fs::read_to_string(&path).unwrap());
        }
    }
    modules
}

/// The text a module's own code is in: without its `#[cfg(test)] mod tests` and comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|l| l.find("//").map_or(l, |at| &l[..at]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn edges_of(modules: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let resolve = |path: &[String]| -> Module {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains_key(p))
            .unwrap_or_default()
    };
    let mut edges = BTreeMap::new();
    for (module, text) in modules {
        let text = code(text);
        let mut targets = BTreeSet::new();
        for (keyword, base) in [
            ("crate::", Vec::new()),
            ("super::", module[..module.len().saturating_sub(1)].to_vec()),
        ] {
            for (at, _) in text.match_indices(keyword) {
                if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                for path in paths_at(&text[at + keyword.len()..]) {
                    let mut full = base.clone();
                    full.extend(path);
                    targets.insert(resolve(&full));
                }
            }
        }
        // Naming itself or an ancestor is no edge.
        targets.retain(|t| !module.starts_with(t));
        edges.insert(module.clone(), targets);
    }
    edges
}

/// The module paths written at the start of `rest`: `a::b::C`, or each item of a
/// `{a::X, b}` group.
fn paths_at(rest: &str) -> Vec<Vec<String>> {
    let ident = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| {
                p.trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|p| !p.is_empty())
            .collect()
    };
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let end = group
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => return true,
                    '}' => depth -= 1,
                    _ => {}
                }
                false
            })
            .map_or(group.len(), |(i, _)| i);
        let mut items = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in group[..end].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(ident(&group[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(ident(&group[start..end]));
        items.into_iter().filter(|p| !p.is_empty()).collect()
    } else {
        vec![ident(rest)]
    }
}

/// The strongly connected groups of more than one module (Tarjan's algorithm).
fn circles_in(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        next: usize,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        circles: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        for w in &s.edges[v] {
            let Some((w, _)) = s.edges.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                group.push(w.clone());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                s.circles.push(group);
            }
        }
    }
    let mut s = State {
        edges,
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        circles: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.circles
}
