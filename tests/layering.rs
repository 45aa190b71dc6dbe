//! The module layering the README's Architecture section describes, checked on the source:
//! the driver never reaches up into `control` (the UAPI text protocol and socket) or the
//! daemon, the pure core and reconciler never reach the driver, and no two modules import
//! each other. A change that ties two layers into a knot fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under src/ (`src/driver/mod.rs` -> `driver`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without its test module (tests may reach anywhere) and without
/// comments (a doc link is not an import).
fn non_test_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    code.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths named after `prefix` (`crate::` or `super::`) in `code`, as module-path pieces.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before_ok = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[at + prefix.len()..];
        if !before_ok {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].split("::").filter(|p| !p.is_empty()).collect());
    }
    out
}

/// Module -> the modules its non-test code names.
fn dependencies() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let longest_module = |parts: Vec<String>| -> Option<Vec<String>> {
        (1..=parts.len())
            .rev()
            .map(|k| parts[..k].to_vec())
            .find(|m| modules.contains(m))
    };
    let mut deps = BTreeMap::new();
    for file in &files {
        let me = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("read source");
        let code = &non_test_code(&text);
        let mut named = BTreeSet::new();
        for path in paths_after(code, "crate::") {
            let parts = path.iter().map(|s| s.to_string()).collect();
            named.extend(longest_module(parts));
        }
        let parent: Vec<String> = me[..me.len().saturating_sub(1)].to_vec();
        for path in paths_after(code, "super::") {
            let mut parts = parent.clone();
            parts.extend(path.iter().map(|s| s.to_string()));
            named.extend(longest_module(parts));
        }
        named.remove(&me);
        deps.insert(me, named);
    }
    deps
}

#[test]
fn no_two_modules_import_each_other() {
    let deps = dependencies();
    let mut knots = Vec::new();
    for (a, named) in &deps {
        for b in named {
            if a < b && deps.get(b).is_some_and(|n| n.contains(a)) {
                knots.push(format!("{} <-> {}", a.join("::"), b.join("::")));
            }
        }
    }
    assert!(
        knots.is_empty(),
        "modules that import each other: {knots:?}"
    );
    // The check sees imports at all (a parser that found none would pass anything).
    let run = deps
        .get(&vec!["daemon".to_owned(), "run".to_owned()])
        .expect("daemon::run");
    assert!(run.contains(&vec!["daemon".to_owned(), "reload".to_owned()]));
}

#[test]
fn layers_point_one_way() {
    let deps = dependencies();
    // (layer, what it must never name)
    let rules: &[(&str, &[&str])] = &[
        (
            "proto",
            &[
                "driver",
                "control",
                "daemon",
                "config",
                "netconf",
                "reconcile",
            ],
        ),
        (
            "reconcile",
            &["driver", "control", "daemon", "config", "netconf"],
        ),
        ("netconf", &["driver", "control", "daemon", "reconcile"]),
        (
            "os",
            &[
                "proto",
                "driver",
                "control",
                "daemon",
                "config",
                "netconf",
                "reconcile",
            ],
        ),
        ("driver", &["control", "daemon", "config"]),
        ("control", &["daemon"]),
    ];
    let mut broken = Vec::new();
    for (module, named) in &deps {
        for (layer, forbidden) in rules {
            if module.first().map(String::as_str) != Some(*layer) {
                continue;
            }
            for target in named {
                if let Some(top) = target.first()
                    && forbidden.contains(&top.as_str())
                {
                    broken.push(format!("{} names {}", module.join("::"), target.join("::")));
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken: {broken:?}");
}
