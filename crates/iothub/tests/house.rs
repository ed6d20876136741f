//! The house rules a compiler does not check, checked over the whole workspace's sources:
//! ARCHITECTURE.md's code map names every module where it lives (and no module that is gone), and
//! no source file imports another that imports it back, in any crate.
//!
//! Why a test: a code map that drifts sends newcomers to the wrong room, and import circles
//! between files are how one concern leaks into another; both creep in one commit at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every crate directory under `crates/`, by its directory name.
fn crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| repo().join("crates").join(name).join("src").is_dir())
        .collect();
    names.sort();
    names
}

/// The `.rs` files below `dir`, recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            files.push(path);
        }
    }
    files
}

/// A source file's module path within its crate (`codec`, `cmd::cert`), or None for a crate
/// root (`lib.rs`, `main.rs`) and for unit-test files (`tests.rs`).
fn module_path(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?.with_extension("");
    let parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.last().map(String::as_str) {
        Some("lib" | "main" | "tests") if parts.len() == 1 || parts.last().unwrap() == "tests" => {
            None
        }
        Some("mod") => Some(parts[..parts.len() - 1].join("::")),
        _ => Some(parts.join("::")),
    }
}

/// The modules of each crate, by crate directory name.
fn modules() -> BTreeMap<String, BTreeSet<String>> {
    crates()
        .into_iter()
        .map(|name| {
            let src = repo().join("crates").join(&name).join("src");
            let mods = sources(&src)
                .iter()
                .filter_map(|f| module_path(&src, f))
                .collect();
            (name, mods)
        })
        .collect()
}

/// The names in backticks in `text`.
fn ticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// ARCHITECTURE.md's code map: the modules it names for each crate. A row is
/// `| crate | modules | what they own |`; the crate cell names the crate directory in its first
/// backticks and may be empty on the rows that continue a crate.
fn code_map() -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = text
        .split("\n## Code map")
        .nth(1)
        .expect("ARCHITECTURE.md has a '## Code map' section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut map: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    for row in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').collect();
        if cells.len() < 4 || cells[1].contains("---") || cells[1].trim() == "crate" {
            continue;
        }
        if let Some(name) = ticked(cells[1]).first() {
            current = Some(name.clone());
        }
        let krate = current.clone().expect("the first row names its crate");
        map.entry(krate).or_default().extend(ticked(cells[2]));
    }
    map
}

#[test]
fn the_code_map_names_every_module_where_it_lives() {
    let map = code_map();
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for (krate, mods) in modules() {
        let named = map.get(&krate).cloned().unwrap_or_default();
        for m in &mods {
            if !named.contains(m) {
                missing.push(format!("crates/{krate}: {m}"));
            }
        }
        for n in &named {
            if !mods.contains(n) && n != "main" && n != "lib" {
                stale.push(format!("crates/{krate}: {n}"));
            }
        }
    }
    for krate in map.keys() {
        if !crates().contains(krate) {
            stale.push(format!("crate {krate}"));
        }
    }
    assert!(
        missing.is_empty() && stale.is_empty(),
        "ARCHITECTURE.md's code map must name every module in its crate's rows.\n\
         modules it does not name: {missing:#?}\nnames that are no module: {stale:#?}"
    );
}

/// The top-level modules each file of a crate names through `crate::` (`use crate::x`,
/// `crate::x::f`, `use crate::{x, y::z}`), by the file's own top-level module.
fn imports(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = repo().join("crates").join(krate).join("src");
    let mut all: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src) {
        let Some(module) = module_path(&src, &file) else {
            continue;
        };
        let own = module.split("::").next().unwrap_or_default().to_string();
        // Code only: a doc link to another module is a pointer for the reader, not an import,
        // and a file's unit tests (from its `#[cfg(test)]` on) may use any module.
        let text: String = std::fs::read_to_string(&file)
            .expect("source")
            .lines()
            .take_while(|l| l.trim() != "#[cfg(test)]")
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let named = all.entry(own.clone()).or_default();
        for after in text.split("crate::").skip(1) {
            let names = match after.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or_default(),
                None => after,
            };
            for name in names.split(',') {
                let name: String = name
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != own {
                    named.insert(name);
                }
            }
        }
    }
    all
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let mut circles = Vec::new();
    let mut edges = 0;
    for krate in crates() {
        let imports = imports(&krate);
        edges += imports.values().map(BTreeSet::len).sum::<usize>();
        for start in imports.keys() {
            let mut seen = BTreeSet::new();
            let mut todo: Vec<&String> = imports[start].iter().collect();
            while let Some(m) = todo.pop() {
                if m == start {
                    circles.push(format!("crates/{krate}: {start} imports itself back"));
                    break;
                }
                if seen.insert(m.clone()) {
                    todo.extend(imports.get(m).into_iter().flatten());
                }
            }
        }
    }
    assert!(edges > 20, "the scan finds imports ({edges})");
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}
