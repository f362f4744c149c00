//! The layering of `src/` (ARCHITECTURE.md): every module is in a layer; imports only point
//! to the module's own layer or below; and no imports run in a circle. Read from the sources
//! as they are, tests left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The layers as ARCHITECTURE.md lists them: module (or prefix) → layer number.
fn layers() -> BTreeMap<String, usize> {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let start = text.find("<!-- layers:").expect("the layers list");
    let end = text
        .find("<!-- end of layers -->")
        .expect("the end of the layers list");
    let mut out = BTreeMap::new();
    for line in text[start..end].lines().skip(1) {
        let Some((number, rest)) = line.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.trim().parse::<usize>() else {
            continue;
        };
        let (_, modules) = rest.split_once(':').expect("name: modules");
        for m in modules.split(',') {
            out.insert(m.trim().to_string(), layer);
        }
    }
    out
}

/// Every `.rs` file under `dir`.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs")
            // A module's tests in a file of their own (`#[cfg(test)] mod tests;`).
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// `src/rack/sim/apps.rs` → `rack::sim::apps`; `mod.rs`, `lib.rs` and `main.rs` name their
/// directory (`crate` at the top).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    if parts.is_empty() {
        "crate".into()
    } else {
        parts.join("::")
    }
}

/// The source without `#[cfg(test)] mod … { … }` blocks and line comments.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        match (after.find('{'), after.find(';')) {
            (Some(open), semi) if semi.is_none_or(|s| s > open) => {
                let mut depth = 0;
                let mut end = after.len();
                for (i, c) in after.char_indices().skip(open) {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            // `#[cfg(test)] mod tests;`: the file it names is a test file of its own.
            (_, Some(semi)) => rest = &after[semi + 1..],
            _ => rest = "",
        }
    }
    out.push_str(rest);
    out.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules `text` (the source of `module`) imports: `crate::…`, `super::…`, `self::…`
/// paths, each resolved to the longest module it names.
fn imports(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let here: Vec<&str> = if module == "crate" {
        Vec::new()
    } else {
        module.split("::").collect()
    };
    let mut out = BTreeSet::new();
    for head in ["crate::", "super::", "self::"] {
        for (at, _) in text.match_indices(head) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail: String = text[at + head.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let tail: Vec<&str> = tail.split("::").filter(|s| !s.is_empty()).collect();
            let mut path: Vec<&str> = match head {
                "crate::" => Vec::new(),
                "super::" => here[..here.len().saturating_sub(1)].to_vec(),
                _ => here.clone(),
            };
            path.extend(tail);
            for k in (1..=path.len()).rev() {
                let candidate = path[..k].join("::");
                if modules.contains(&candidate) && candidate != module {
                    out.insert(candidate);
                    break;
                }
            }
        }
    }
    out
}

/// The layer of a module: its most specific entry.
fn layer_of(module: &str, layers: &BTreeMap<String, usize>) -> Option<usize> {
    let parts: Vec<&str> = module.split("::").collect();
    (1..=parts.len())
        .rev()
        .find_map(|k| layers.get(&parts[..k].join("::")).copied())
}

/// The import graph of `src/`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(ROOT).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let sources: Vec<(String, String)> = all
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("source");
            (module_of(&src, f), without_tests(&text))
        })
        .collect();
    let modules: BTreeSet<String> = sources.iter().map(|(m, _)| m.clone()).collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &sources {
        out.entry(m.clone())
            .or_default()
            .extend(imports(m, text, &modules));
    }
    out
}

#[test]
fn every_module_has_a_layer_and_imports_only_its_own_and_below() {
    let layers = layers();
    let graph = graph();
    let mut wrong = Vec::new();
    for (m, to) in &graph {
        let Some(from) = layer_of(m, &layers) else {
            wrong.push(format!("{m} is in no layer: add it to ARCHITECTURE.md"));
            continue;
        };
        for t in to {
            match layer_of(t, &layers) {
                Some(l) if l > from => wrong.push(format!(
                    "{m} (layer {from}) imports {t} (layer {l}), above it"
                )),
                _ => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_imports_run_in_a_circle() {
    let graph = graph();
    // Each module that can reach itself is on a cycle.
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = graph.get(from).into_iter().flatten().cloned().collect();
        while let Some(m) = todo.pop() {
            if seen.insert(m.clone()) {
                todo.extend(graph.get(&m).into_iter().flatten().cloned());
            }
        }
        seen
    };
    let cyclic: Vec<String> = graph
        .keys()
        .filter(|m| reach(m).contains(*m))
        .map(|m| {
            let back: Vec<&String> = graph[m].iter().filter(|t| reach(t).contains(m)).collect();
            format!("{m} → {back:?} → … → {m}")
        })
        .collect();
    assert!(
        cyclic.is_empty(),
        "imports in a circle:\n{}",
        cyclic.join("\n")
    );
}

#[test]
fn the_reader_finds_imports_and_leaves_tests_out() {
    let modules: BTreeSet<String> = ["a", "a::b", "c", "c::d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = "use crate::c::d::Thing;\nuse super::b;\n// use crate::c;\n#[cfg(test)]\nmod tests {\n use crate::c;\n}\n";
    let found = imports("a::x", &without_tests(text), &modules);
    let want: BTreeSet<String> = ["c::d", "a::b"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, want);
}
