//! The house rules a newcomer can rely on (docs/ARCHITECTURE.md §2): no Rust source file
//! outside tests is over 800 lines, and no two files of a crate import each other, directly or
//! around a circle.
//!
//! An import is any `crate::…`, `super::…` or `self::…` path, in a `use` or in code, resolved to
//! the file of the longest module it names. Two things are not imports: a module root's
//! `pub use` of its own children (the crate's or module's facade), and `mod` declarations.
//! Unit-test modules (`#[cfg(test)]`) are tests and are skipped, and so are paths inside string
//! literals (serde's `default = "…"` names a function; it is not an import).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | "tests" | ".deps" | ".git" | "fixtures") {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Every source folder of a crate: host/*/src, plugins' crates, and the root package's src/.
fn crate_sources() -> Vec<PathBuf> {
    let root = repo();
    let mut dirs = vec![root.join("src")];
    for parent in [
        "host",
        "plugins",
        "plugins/examples",
        "plugins/tests",
        "plugins/sdk",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(parent)) else {
            continue;
        };
        for entry in entries {
            let src = entry.expect("entry").path().join("src");
            if src.is_dir() {
                dirs.push(src);
            }
        }
    }
    dirs.push(root.join("plugins/native/rust-example/src"));
    dirs.sort();
    dirs
}

#[test]
fn no_source_file_outside_tests_is_over_800_lines() {
    let mut files = Vec::new();
    for dir in crate_sources() {
        rust_files(&dir, &mut files);
    }
    rust_files(&repo().join("tools"), &mut files);
    assert!(files.len() > 40, "found only {} source files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f)
                .expect("readable")
                .lines()
                .count();
            (n > MAX_LINES).then(|| format!("{} has {n} lines", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// A module path inside its crate: [] for the root, ["a", "b"] for a/b.rs or a/b/mod.rs.
type ModPath = Vec<String>;

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("inside src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The text without comments, string literals, and unit-test modules.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Expands a use tree (`a::{b, c::{d, e}}`, `a::*`, `a as b`) into its paths.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn parse(tokens: &[String], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let mut path = prefix.to_vec();
        while *i < tokens.len() {
            match tokens[*i].as_str() {
                "{" => {
                    *i += 1;
                    loop {
                        parse(tokens, i, &path, out);
                        match tokens.get(*i).map(String::as_str) {
                            Some(",") => *i += 1,
                            Some("}") => {
                                *i += 1;
                                break;
                            }
                            _ => return,
                        }
                        if tokens.get(*i).map(String::as_str) == Some("}") {
                            *i += 1;
                            break;
                        }
                    }
                    return;
                }
                "," | "}" => break,
                "::" => *i += 1,
                "as" => *i += 2,
                t => {
                    path.push(t.to_string());
                    *i += 1;
                }
            }
        }
        out.push(path);
    }
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut chars = tree.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' || c == '*' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        match c {
            ':' if chars.peek() == Some(&':') => {
                chars.next();
                tokens.push("::".into());
            }
            '{' | '}' | ',' => tokens.push(c.to_string()),
            _ => {}
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        parse(&tokens, &mut i, &[], &mut out);
        i += 1;
    }
    out
}

/// The file modules `path` (starting `crate`, `super` or `self`) names from module `from`.
fn resolve(path: &[String], from: &ModPath, modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let (mut base, rest) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("self") => (from.clone(), &path[1..]),
        Some("super") => {
            let mut base = from.clone();
            let mut rest = path;
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
            (base, rest)
        }
        // A path relative to the module: its first segment is a child module.
        Some(first) => {
            let mut child = from.clone();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            (from.clone(), path)
        }
        None => return None,
    };
    let mut best = base.clone();
    for seg in rest {
        base.push(seg.clone());
        if modules.contains(&base) {
            best = base.clone();
        } else {
            break;
        }
    }
    Some(best)
}

/// Module → the modules it imports, for one crate's source folder.
fn imports(src: &Path) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let from = module_of(src, file);
        let is_root = file
            .file_name()
            .is_some_and(|n| n == "lib.rs" || n == "mod.rs" || n == "main.rs");
        let code = code_of(&std::fs::read_to_string(file).expect("readable"));
        let mut edges = BTreeSet::new();
        let mut paths: Vec<Vec<String>> = Vec::new();
        // `use` statements (possibly over several lines), then paths in the remaining code.
        let mut rest = String::new();
        for stmt in code.split_inclusive(';') {
            let trimmed = stmt.trim_start();
            let body = ["pub(crate) use ", "pub use ", "use "]
                .iter()
                .find_map(|p| trimmed.strip_prefix(p).map(|b| (p.starts_with("pub"), b)));
            match body {
                Some((public, body)) => {
                    for p in expand_use(body.trim_end_matches(';')) {
                        // A module root re-exporting its own child is its facade.
                        let reexport = is_root
                            && public
                            && (p.first().map(String::as_str) == Some("self")
                                || resolve(&p, &from, &modules)
                                    .is_some_and(|t| t.starts_with(&from) && t != from));
                        if !reexport {
                            paths.push(p);
                        }
                    }
                }
                None => rest.push_str(stmt),
            }
        }
        // Paths from the root of the crate, from the parent, from here, or into a child.
        let children = modules
            .iter()
            .filter(|m| m.len() == from.len() + 1 && m.starts_with(&from))
            .map(|m| format!("{}::", m[from.len()]));
        let anchors: Vec<String> = ["crate::", "super::", "self::"]
            .into_iter()
            .map(String::from)
            .chain(children)
            .collect();
        for anchor in &anchors {
            let anchor = anchor.as_str();
            let mut at = 0;
            while let Some(i) = rest[at..].find(anchor) {
                let start = at + i;
                let before = rest[..start].chars().last();
                at = start + anchor.len();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let tail: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                paths.push(
                    tail.split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                );
            }
        }
        for p in paths {
            if let Some(target) = resolve(&p, &from, &modules) {
                if target != from {
                    edges.insert(target);
                }
            }
        }
        graph.insert(from, edges);
    }
    graph
}

/// A circle in the graph, if there is one (depth-first search).
fn find_circle(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    fn visit(
        node: &ModPath,
        graph: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        state: &mut BTreeMap<ModPath, u8>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|m| m == next).expect("on the stack");
                    let mut circle = stack[i..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "(crate root)".into()
    } else {
        m.join("::")
    }
}

#[test]
fn the_checker_sees_use_trees_and_circles() {
    let paths = expand_use("crate::{a::{b, c as d}, e::*, f}");
    assert_eq!(
        paths,
        vec![
            vec!["crate", "a", "b"],
            vec!["crate", "a", "c"],
            vec!["crate", "e", "*"],
            vec!["crate", "f"],
        ]
    );
    let m = |s: &str| -> ModPath {
        s.split('/')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    };
    let modules: BTreeSet<ModPath> = ["", "a", "a/b", "e"].iter().map(|s| m(s)).collect();
    assert_eq!(resolve(&paths[0], &m("e"), &modules), Some(m("a/b")));
    assert_eq!(resolve(&paths[3], &m("e"), &modules), Some(m("")));
    let sup: Vec<String> = vec!["super".into(), "Item".into()];
    assert_eq!(resolve(&sup, &m("a/b"), &modules), Some(m("a")));
    let relative: Vec<String> = vec!["b".into(), "Item".into()];
    assert_eq!(resolve(&relative, &m("a"), &modules), Some(m("a/b")));
    assert_eq!(
        resolve(&relative, &m("e"), &modules),
        None,
        "an outside crate's path"
    );
    let mut graph = BTreeMap::new();
    graph.insert(m("a"), [m("e")].into());
    graph.insert(m("e"), [m("a/b")].into());
    graph.insert(m("a/b"), BTreeSet::new());
    assert_eq!(find_circle(&graph), None);
    graph.insert(m("a/b"), [m("a")].into());
    assert_eq!(
        find_circle(&graph),
        Some(vec![m("a"), m("e"), m("a/b"), m("a")])
    );
    assert!(code_of("let s = \"crate::x\"; // crate::y\nuse crate::z;").contains("crate::z"));
    assert!(!code_of("let s = \"crate::x\"; // crate::y\n").contains("crate::"));
}

#[test]
fn no_two_files_of_a_crate_import_each_other() {
    let mut circles = Vec::new();
    let mut crates = 0;
    for src in crate_sources() {
        let graph = imports(&src);
        crates += 1;
        if let Some(c) = find_circle(&graph) {
            circles.push(format!(
                "{}: {}",
                src.display(),
                c.iter().map(show).collect::<Vec<_>>().join(" → ")
            ));
        }
    }
    assert!(crates >= 9, "found only {crates} crates");
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}
