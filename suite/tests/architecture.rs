//! ARCHITECTURE.md is checked against the code: every module of suite/src has a row in its
//! module table, and the library's top-level modules depend only on modules in lower layers of
//! its `layers` block (so there is no cycle between them). Hermetic: reads files only.
//!
//! `cargo test -p kvm-msr-suite --test architecture` is the command that proves the layering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn architecture() -> String {
    let p = root().join("../ARCHITECTURE.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every `.rs` file under suite/src except lib.rs, the binary and unit-test files, as a module path
/// (`kvm::raw`, `machine`; a `mod.rs` names its folder).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if prefix.is_empty() && name == "bin" {
                    continue;
                }
                let mut next = prefix.to_vec();
                next.push(name);
                walk(&p, &next, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                if prefix.is_empty() && name == "lib" {
                    continue;
                }
                // Unit tests kept in a file of their own are not a module of the library.
                if name == "tests" {
                    continue;
                }
                let mut path = prefix.to_vec();
                if name != "mod" {
                    path.push(name);
                }
                out.insert(path.join("::"), p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&root().join("src"), &[], &mut out);
    out
}

/// The source without its `#[cfg(test)] mod tests` (unit tests may reach anywhere) and without
/// comments (which may name any module).
fn code_of(path: &Path) -> String {
    let src = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let src = match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => &src[..],
    };
    src.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module -> the other top-level modules its code names as `crate::<module>`.
fn edges(mods: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let tops: BTreeSet<String> = mods
        .keys()
        .map(|m| m.split("::").next().unwrap().to_string())
        .collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, path) in mods {
        let top = m.split("::").next().unwrap();
        let code = code_of(path);
        let deps = out.entry(top.to_string()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                !code[i + 7..].starts_with('{'),
                "{}: `crate::{{..}}` imports hide their modules from this test; import each path",
                path.display()
            );
            if name != top && tops.contains(&name) {
                deps.insert(name);
            }
        }
    }
    out
}

/// The `layers` block: one line per layer, highest first.
fn layers(doc: &str) -> Vec<Vec<String>> {
    let start = doc
        .find("```layers\n")
        .expect("ARCHITECTURE.md has a ```layers block");
    let body = &doc[start + 10..];
    let end = body.find("```").expect("the layers block is closed");
    body[..end]
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn every_module_has_a_row() {
    let doc = architecture();
    let missing: Vec<String> = modules()
        .into_keys()
        .filter(|m| !doc.contains(&format!("| `{m}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's module table has no row (\"| `<module>` | ... |\") for: {missing:?}"
    );
}

/// Every edge that does not go to a strictly lower layer, and every module in no layer.
fn violations(edges: &BTreeMap<String, BTreeSet<String>>, layers: &[Vec<String>]) -> Vec<String> {
    let rank: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.iter().map(move |m| (m.as_str(), layers.len() - i)))
        .collect();
    let mut problems = Vec::new();
    for (from, tos) in edges {
        let Some(a) = rank.get(from.as_str()) else {
            problems.push(format!("`{from}` is in no layer"));
            continue;
        };
        for to in tos {
            match rank.get(to.as_str()) {
                None => problems.push(format!("`{to}` is in no layer")),
                Some(b) if b >= a => problems.push(format!(
                    "`{from}` (layer {a}) uses `{to}` (layer {b}): a module may use only lower layers"
                )),
                Some(_) => {}
            }
        }
    }
    problems
}

#[test]
fn top_level_modules_depend_only_on_lower_layers() {
    let layers = layers(&architecture());
    let problems = violations(&edges(&modules()), &layers);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_refuses_upward_and_sideways_edges() {
    let layers: Vec<Vec<String>> = vec![vec!["checks".into()], vec!["kvm".into(), "guest".into()]];
    let edge =
        |a: &str, b: &str| BTreeMap::from([(a.to_string(), BTreeSet::from([b.to_string()]))]);
    assert!(violations(&edge("checks", "kvm"), &layers).is_empty());
    assert_eq!(violations(&edge("kvm", "checks"), &layers).len(), 1);
    assert_eq!(violations(&edge("kvm", "guest"), &layers).len(), 1);
    assert_eq!(violations(&edge("kvm", "nowhere"), &layers).len(), 1);
}

/// The limits a newcomer can read within: no source file of the library over 600 lines, no
/// function over 100 (from its `fn` line to the closing brace at the same indentation).
#[test]
fn files_and_functions_stay_small() {
    const MAX_FILE: usize = 600;
    const MAX_FN: usize = 100;
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = modules().into_values().collect();
    files.extend(
        ["src/catalogue/load/tests.rs", "src/bin/kvm-msr.rs"]
            .iter()
            .map(|f| root().join(f))
            .filter(|p| p.exists()),
    );
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > MAX_FILE {
            problems.push(format!("{}: {} lines", path.display(), lines.len()));
        }
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            let indent = l.len() - t.len();
            let is_fn = [
                "fn ",
                "pub fn ",
                "pub(crate) fn ",
                "pub(super) fn ",
                "const fn ",
                "pub const fn ",
            ]
            .iter()
            .any(|p| t.starts_with(p));
            if !is_fn || t.trim_end().ends_with(';') {
                continue;
            }
            let close = format!("{}}}", " ".repeat(indent));
            let end = lines[i + 1..]
                .iter()
                .position(|x| x.trim_end() == close)
                .map_or(lines.len(), |k| i + 1 + k);
            if end - i + 1 > MAX_FN {
                problems.push(format!(
                    "{}:{}: {} lines: {t}",
                    path.display(),
                    i + 1,
                    end - i + 1
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "over the limits:\n{}",
        problems.join("\n")
    );
}
