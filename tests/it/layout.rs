//! The shape ARCHITECTURE.md promises, read from the source: the `use crate::` graph of `src/`
//! has no cycle and never points from a lower layer to a higher one; statuses are chosen in one
//! place; no file is a 1,000-line room and no function runs past a screen or two.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module's layer, lowest first. A module may import only from its own layer or below
/// (and never in a cycle). A new module must be placed here: the test names one that is not.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "vocabulary: pure data and leaf helpers",
        &[
            "dates",
            "front_thread",
            "http1",
            "metrics",
            "logfile",
            "manpage",
            "spawn",
            "account",
            "activation",
            "native",
            "trigger",
            "sdnotify",
            "config",
        ],
    ),
    ("decisions over config", &["routes", "interpreter", "tls"]),
    (
        "the machine",
        &["preflight", "runtime_dir", "leftover", "acme"],
    ),
    (
        "request pieces",
        &[
            "upstream",
            "error",
            "statics",
            "accesslog",
            "gate",
            "explain",
        ],
    ),
    ("the request", &["proxy"]),
    ("long-lived parts", &["server", "supervisor"]),
    ("what runs, seen from outside", &["status", "watch"]),
    ("doors in", &["control", "admin"]),
    ("the only writer of live state", &["reload"]),
    ("commands", &["app", "express", "check", "trust"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src is readable").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/supervisor/slot.rs` and `src/supervisor.rs` are both module `supervisor`.
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// `text` without its line comments.
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules named after `crate::` in `text` (line comments left out).
fn imports(text: &str) -> BTreeSet<String> {
    let code = without_comments(text);
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}}`: the names at the group's top level.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(head(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            if !item.trim().is_empty() {
                out.insert(head(&item));
            }
        } else {
            out.insert(head(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn head(path: &str) -> String {
    path.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&f);
        if m == "lib" || m == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("readable source");
        let deps = g.entry(m.clone()).or_default();
        deps.extend(imports(&text).into_iter().filter(|d| *d != m));
    }
    g
}

#[test]
fn imports_point_down_the_layers_and_never_in_a_cycle() {
    let layer: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, mods))| mods.iter().map(move |m| (*m, i)))
        .collect();
    let g = graph();
    let mut wrong = Vec::new();
    for (m, deps) in &g {
        let Some(&mine) = layer.get(m.as_str()) else {
            wrong.push(format!("module {m} has no layer in tests/it/layout.rs"));
            continue;
        };
        for d in deps {
            match layer.get(d.as_str()) {
                Some(&theirs) if theirs > mine => wrong.push(format!(
                    "{m} ({}) imports {d} ({}), a higher layer",
                    LAYERS[mine].0, LAYERS[theirs].0
                )),
                None => wrong.push(format!("{m} imports {d}, which has no layer")),
                _ => {}
            }
        }
    }
    // Same-layer imports are allowed, so look for cycles too (depth-first, colouring).
    fn visit<'a>(
        m: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
        cycles: &mut Vec<String>,
    ) {
        match state.get(m) {
            Some(true) => return,
            Some(false) => {
                let from = path.iter().position(|p| *p == m).unwrap_or(0);
                cycles.push(format!("cycle: {} -> {m}", path[from..].join(" -> ")));
                return;
            }
            None => {}
        }
        state.insert(m, false);
        path.push(m);
        for d in g.get(m).into_iter().flatten() {
            if g.contains_key(d) {
                visit(d, g, state, path, cycles);
            }
        }
        path.pop();
        state.insert(m, true);
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        visit(m, &g, &mut state, &mut Vec::new(), &mut wrong);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The reader itself: it sees every kind of import this tree writes.
    let sample =
        "use crate::{a, b::{C, D}, e::F as G};\nuse crate::h::I;\n// crate::j\nx(crate::k::l)";
    let seen: Vec<String> = imports(sample).into_iter().collect();
    assert_eq!(seen, ["a", "b", "e", "h", "k"]);
}

/// Invariant: wsgimux chooses HTTP statuses in one place (`src/error.rs`: `ProxyError` for
/// refusals and failures, `Reply` for its own answers). Read from the source, so a status set
/// anywhere else fails here.
#[test]
fn statuses_are_chosen_only_in_error_rs() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut elsewhere = Vec::new();
    for f in files.iter().filter(|f| !f.ends_with("error.rs")) {
        let text = std::fs::read_to_string(f).expect("readable source");
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("StatusCode::") || code.contains("status_mut()") {
                elsewhere.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        elsewhere.is_empty(),
        "statuses chosen outside error.rs:\n{}",
        elsewhere.join("\n")
    );
}

/// Files over this many lines are rooms doing several jobs.
const MAX_FILE_LINES: usize = 600;
/// Functions over this many lines (signature to closing brace) do several steps at once.
const MAX_FN_LINES: usize = 80;

#[test]
fn no_file_or_function_is_too_long() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    rust_files(&root.join("worker/src"), &mut files);
    let mut long = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("readable source");
        let lines: Vec<&str> = text.lines().collect();
        let name = f.strip_prefix(root).unwrap_or(f).display().to_string();
        if lines.len() > MAX_FILE_LINES {
            long.push(format!("{name}: {} lines", lines.len()));
        }
        for (i, line) in lines.iter().enumerate() {
            let Some(indent) = fn_start(line) else {
                continue;
            };
            // rustfmt closes a body at the indentation of its `fn`.
            let close = format!("{indent}}}");
            let end = lines[i..].iter().position(|l| *l == close);
            if let Some(n) = end.map(|e| e + 1).filter(|n| *n > MAX_FN_LINES) {
                long.push(format!("{name}:{}: {} is {n} lines", i + 1, line.trim()));
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}

/// The indentation of a line that opens a function body.
fn fn_start(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    let indent = &line[..line.len() - trimmed.len()];
    let mut rest = trimmed;
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let is_fn = rest.starts_with("fn ") && !line.trim_end().ends_with(';');
    is_fn.then_some(indent)
}

/// The files of one folder that `file` imports: `super::NAME` and `crate::FOLDER::NAME` (for the
/// worker crate, whose root is the folder, `crate::NAME`) where NAME is a file beside it.
fn sibling_imports(
    text: &str,
    crate_prefix: &str,
    siblings: &BTreeSet<String>,
) -> BTreeSet<String> {
    let code = without_comments(text);
    let mut out = BTreeSet::new();
    for prefix in ["super::", crate_prefix] {
        let mut rest = code.as_str();
        while let Some(at) = rest.find(prefix) {
            // `xsuper::` is another word.
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let names: Vec<String> = match rest.strip_prefix('{') {
                Some(group) => {
                    let end = group.find('}').unwrap_or(group.len());
                    // Nested groups name items of the files, not files: their heads suffice.
                    group[..end].split(',').map(head).collect()
                }
                None => vec![head(rest)],
            };
            out.extend(names.into_iter().filter(|n| siblings.contains(n)));
        }
    }
    out
}

/// Every folder of Rust files (under `src/`, and the worker's `worker/src`), with the import
/// prefix that names its files from the crate's root.
fn folders() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![(root.join("worker/src"), "crate::".to_string())];
    fn walk(dir: &Path, module: &str, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(dir).expect("readable").flatten() {
            let p = e.path();
            if p.is_dir() {
                let name = p.file_name().expect("name").to_string_lossy().to_string();
                let module = format!("{module}{name}::");
                out.push((p.clone(), module.clone()));
                walk(&p, &module, out);
            }
        }
    }
    walk(&src(), "crate::", &mut out);
    out
}

/// Invariant: no two files import each other, even inside one folder (its `mod.rs` or
/// `lib.rs` aside: a folder's face declares its files). Read from `super::` and
/// `crate::folder::` imports of the files of `src/` and `worker/src`.
#[test]
fn no_cycle_between_the_files_of_a_folder() {
    let mut wrong = Vec::new();
    for (dir, prefix) in folders() {
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("readable")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .filter(|p| !p.ends_with("mod.rs") && !p.ends_with("lib.rs"))
            .collect();
        let stem = |p: &Path| p.file_stem().expect("stem").to_string_lossy().to_string();
        let siblings: BTreeSet<String> = files.iter().map(|p| stem(p)).collect();
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in &files {
            let text = std::fs::read_to_string(f).expect("readable source");
            let mut deps = sibling_imports(&text, &prefix, &siblings);
            deps.remove(&stem(f));
            g.insert(stem(f), deps);
        }
        for (a, deps) in &g {
            for b in deps {
                if a < b && g.get(b).is_some_and(|d| d.contains(a)) {
                    wrong.push(format!(
                        "{}: {a}.rs and {b}.rs import each other",
                        dir.display()
                    ));
                }
            }
        }
        // Longer cycles: follow each edge depth-first.
        for start in g.keys() {
            let mut stack: Vec<Vec<&String>> = vec![vec![start]];
            while let Some(path) = stack.pop() {
                let last = path[path.len() - 1];
                for d in g.get(last).into_iter().flatten() {
                    if d == start && path.len() > 2 {
                        let names: Vec<&str> = path.iter().map(|s| s.as_str()).collect();
                        wrong.push(format!(
                            "{}: cycle {} -> {start}",
                            dir.display(),
                            names.join(" -> ")
                        ));
                    } else if !path.contains(&d) && path.len() < 6 {
                        let mut longer = path.clone();
                        longer.push(d);
                        stack.push(longer);
                    }
                }
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `portable_worker.py` is one file (it is sent to each child as it is): kept to a size one
/// person reads, like the Rust files' rooms (twice theirs: it holds a whole server).
#[test]
fn the_portable_worker_stays_one_readable_file() {
    let path = src().join("portable_worker.py");
    let text = std::fs::read_to_string(&path).expect("portable_worker.py");
    let lines = text.lines().count();
    assert!(
        lines <= 2 * MAX_FILE_LINES,
        "{}: {lines} lines",
        path.display()
    );
}
