//! No module cycles: within each library crate (`crates/*/src`), the top-level modules may not
//! reach themselves through `crate::` paths. A child module using its parent is fine (it is
//! inside the same top-level module); test modules (`#[cfg(test)]` onwards in a file, and
//! files named `tests.rs`) and comments are left out, since tests may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use crate::Result;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules that `text` names through `crate::`.
fn uses(text: &str) -> BTreeSet<String> {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// The module graph of one crate's `src`: top-level module -> modules it uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Ok(rel) = file.strip_prefix(src) else {
            continue;
        };
        let top = rel
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_owned()
            })
            .unwrap_or_default();
        if top == "lib" || top == "main" || rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap_or_default();
        let deps = graph.entry(top.clone()).or_default();
        deps.extend(uses(&text).into_iter().filter(|d| *d != top));
    }
    graph
}

/// The edges `a -> b` of `graph` from which `a` can be reached again.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for next in graph.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let mut found = Vec::new();
    for (a, deps) in graph {
        for b in deps {
            if reach(b).contains(a) {
                found.push((a.clone(), b.clone()));
            }
        }
    }
    found
}

/// Check every library crate; an error lists the edges that close a cycle.
pub(crate) fn check() -> Result<()> {
    let crates = crate::root().join("crates");
    let mut problems = Vec::new();
    let mut checked = 0;
    let mut dirs: Vec<_> = fs::read_dir(&crates)
        .map_err(|e| format!("cycles: cannot read {}: {e}", crates.display()))?
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for src in dirs {
        checked += 1;
        for (a, b) in cycles(&graph(&src)) {
            problems.push(format!("{}: {a} -> {b}", src.display()));
        }
    }
    if problems.is_empty() {
        eprintln!("xtask: no module cycles in {checked} library crates");
        return Ok(());
    }
    Err(format!(
        "module cycles (each edge below can reach its start again):\n  {}",
        problems.join("\n  ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_is_found_and_a_chain_is_not() {
        let g = |edges: &[(&str, &str)]| {
            let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (a, b) in edges {
                g.entry((*a).to_owned())
                    .or_default()
                    .insert((*b).to_owned());
            }
            g
        };
        assert!(cycles(&g(&[("cache", "engine"), ("engine", "bus")])).is_empty());
        let found = cycles(&g(&[
            ("cache", "engine"),
            ("engine", "bus"),
            ("bus", "cache"),
        ]));
        assert_eq!(found.len(), 3);
    }

    #[test]
    fn uses_skip_comments_and_tests() {
        let text = "use crate::engine::Engine;\n// crate::bus\n/// [`crate::cache`]\nfn f() { crate::key::x(); }\n#[cfg(test)]\nmod tests { use crate::remote; }";
        let found: Vec<String> = uses(text).into_iter().collect();
        assert_eq!(found, ["engine", "key"]);
    }
}
