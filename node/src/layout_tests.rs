//! The module layout of this crate, checked: no module imports one that imports it
//! back. Top-level modules (`cli`, `http`, `run`, …) and sibling files inside one
//! folder (`http/cdrs.rs` vs `http/export.rs`) must form a graph without cycles; a
//! file's references to its own folder's `mod.rs` (its parent) are allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, as (module path, text).
fn modules(dir: &Path) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read src dir") {
            let p: PathBuf = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(dir).expect("under src");
                let mut path: Vec<String> = rel
                    .with_extension("")
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect();
                if path.last().is_some_and(|l| l == "mod") {
                    path.pop();
                }
                out.push((path, std::fs::read_to_string(&p).expect("read file")));
            }
        }
    }
    out
}

/// The `crate::a::b…` paths a file mentions (segments of lowercase identifiers).
fn crate_refs(text: &str) -> Vec<Vec<String>> {
    let mut refs = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let mut segs = Vec::new();
        for seg in rest.split("::") {
            let ident: String = seg
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if ident.is_empty() || ident.len() != seg.len() && !seg.starts_with(&ident) {
                break;
            }
            let whole = ident.len() == seg.len();
            segs.push(ident);
            if !whole {
                break;
            }
        }
        if !segs.is_empty() {
            refs.push(segs);
        }
    }
    refs
}

/// A cycle in `graph`, if any (as the list of nodes on it).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = path.iter().position(|p| p == m).unwrap_or(0);
                    let mut cycle = path[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Edges between the modules at `depth` (0 = top level) that share `parent`.
fn graph_at(
    mods: &[(Vec<String>, String)],
    parent: &[String],
) -> BTreeMap<String, BTreeSet<String>> {
    let depth = parent.len();
    let known: BTreeSet<Vec<String>> = mods.iter().map(|(p, _)| p.clone()).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in mods {
        if path.len() <= depth || path[..depth] != *parent {
            continue;
        }
        let from = path[depth].clone();
        g.entry(from.clone()).or_default();
        for r in crate_refs(text) {
            if r.len() > depth && r[..depth] == *parent && r[depth] != from {
                let to = r[depth].clone();
                if known
                    .iter()
                    .any(|k| k.len() > depth && k[depth] == to && k[..depth] == *parent)
                {
                    g.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    g
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let top = graph_at(&mods, &[]);
    assert!(top.contains_key("http") && top.contains_key("run") && top.contains_key("cli"));
    if let Some(c) = find_cycle(&top) {
        panic!(
            "import circle between node's top-level modules: {}",
            c.join(" → ")
        );
    }
    let folders: BTreeSet<Vec<String>> = mods
        .iter()
        .filter(|(p, _)| p.len() >= 2)
        .map(|(p, _)| p[..p.len() - 1].to_vec())
        .collect();
    for folder in folders {
        let g = graph_at(&mods, &folder);
        if let Some(c) = find_cycle(&g) {
            panic!(
                "import circle inside node/src/{}: {}",
                folder.join("/"),
                c.join(" → ")
            );
        }
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    // The check itself, on a made-up layout: a → b → a is found, a → b alone is not.
    let mods = vec![
        (vec!["a".to_string()], "use crate::b::X;".to_string()),
        (
            vec!["b".to_string()],
            "fn f() { crate::a::g() }".to_string(),
        ),
        (vec!["c".to_string()], "use crate::a;".to_string()),
    ];
    let cycle = find_cycle(&graph_at(&mods, &[])).expect("cycle a ↔ b");
    assert!(cycle.contains(&"a".to_string()) && cycle.contains(&"b".to_string()));
    let acyclic = vec![
        (vec!["a".to_string()], "use crate::b::X;".to_string()),
        (vec!["b".to_string()], "pub struct X;".to_string()),
    ];
    assert_eq!(find_cycle(&graph_at(&acyclic, &[])), None);
    // A reference to the parent folder's items is not a sibling edge.
    let nested = vec![
        (
            vec!["http".to_string()],
            "mod cdrs; use cdrs::f;".to_string(),
        ),
        (
            vec!["http".to_string(), "cdrs".to_string()],
            "use crate::http::MAX;".to_string(),
        ),
    ];
    assert_eq!(find_cycle(&graph_at(&nested, &["http".to_string()])), None);
}
