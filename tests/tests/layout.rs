//! The workspace's layout holds: no import circles between the modules of any crate, and the
//! engines (`mqtt-broker`, `series-store`) and the shared language (`protocols`) never depend
//! on the applications built on them.
//!
//! The module graph is read from the source text, file by file: an edge `a -> b` for every
//! path in `a` that names module `b` (`use crate::b::X`, `super::super::b::X`, `b::f()` for a
//! child `b`, grouped `use` trees expanded). A module's use of its own ancestors (`super::X`)
//! and a parent's re-exports (`pub use child::X`) are no edges: that is how a module tree is
//! built. Unit-test modules (`tests.rs`, inline `#[cfg(test)] mod`) are left out: they import
//! their parent by design. Run alone with
//! `cargo test -p tests --test layout`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Crates whose `src/` is checked.
const CRATES: &[&str] = &[
    "protocols",
    "firmware",
    "mqtt-broker",
    "series-store",
    "edge-agent",
    "hub",
    "sim",
    "tests",
];

type ModPath = Vec<String>;

/// Every module file of a crate's `src/` (bins under `src/bin` are roots of their own and left
/// out), by module path.
fn modules(src: &Path) -> BTreeMap<ModPath, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "bin") {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            let last = parts.pop().unwrap_or_default();
            if last == "tests" {
                continue;
            }
            if !matches!(last.as_str(), "mod" | "lib" | "main") {
                parts.push(last);
            }
            out.insert(parts, p);
        }
    }
    out
}

/// The source without comments, string literals and inline test modules.
fn code_of(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' && (i == 0 || b[i - 1] != b'\'') {
            // Raw strings are rare in module paths' neighbourhood; plain ones are skipped.
            let raw = i > 0 && b[i - 1] == b'r' || i > 1 && b[i - 1] == b'#';
            i += 1;
            while i < b.len() {
                if !raw && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'"' {
                    break;
                }
                i += 1;
            }
            i += 1;
            s.push_str("\"\"");
        } else {
            s.push(b[i] as char);
            i += 1;
        }
    }
    match s.find("#[cfg(test)]\nmod tests {") {
        Some(at) => s[..at].to_string(),
        None => s,
    }
}

/// Expands `use` trees into whole paths: `a::{b, c::{d, e}}` gives `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            for item in split_top(tree) {
                let item = item.split(" as ").next().unwrap_or("").trim();
                if !item.is_empty() {
                    out.push(format!("{prefix}{item}"));
                }
            }
        }
        Some(open) => {
            let head = tree[..open].trim();
            let close = tree.rfind('}').unwrap_or(tree.len());
            let inner = &tree[open + 1..close];
            for part in split_top(inner) {
                expand(part, &format!("{prefix}{head}"), out);
            }
        }
    }
}

/// Splits on commas that are not inside braces.
fn split_top(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut from) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[from..]);
    parts
}

/// Every path of the code that starts with an identifier: `use` trees expanded, and
/// `a::b::c` runs elsewhere that are not the tail of a longer path.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    // `use` items first, then blank them out so their tails are not read twice.
    let mut plain = String::with_capacity(code.len());
    while let Some(at) = find_use(rest) {
        plain.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        // A re-export (`pub use child::X`) is the parent's API surface, not a dependency of
        // its code on the child: it is no edge.
        let before = rest[..at].trim_end();
        if !(before.ends_with("pub") || before.ends_with(')') && before.contains("pub(")) {
            expand(&after[..end], "", &mut out);
        }
        rest = &after[(end + 1).min(after.len())..];
    }
    plain.push_str(rest);
    let b = plain.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        if ident(b[i]) && (i == 0 || (!ident(b[i - 1]) && b[i - 1] != b':')) {
            let start = i;
            let mut j = i;
            loop {
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                if b[j..].starts_with(b"::") && j + 2 < b.len() && ident(b[j + 2]) {
                    j += 2;
                } else {
                    break;
                }
            }
            let p = &plain[start..j];
            if p.contains("::") {
                out.push(p.to_string());
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Where the next `use ` item starts (at a word boundary), if any.
fn find_use(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(off) = s[from..].find("use ") {
        let at = from + off;
        if at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// The module a path names from inside `here`, if it is a module of this crate other than
/// `here` itself.
fn target(
    path: &str,
    here: &ModPath,
    known: &BTreeMap<ModPath, PathBuf>,
    crate_name: &str,
) -> Option<ModPath> {
    let segs: Vec<&str> = path.split("::").map(str::trim).collect();
    let (mut base, rest): (ModPath, &[&str]) = match segs[0] {
        "crate" => (Vec::new(), &segs[1..]),
        c if c == crate_name => (Vec::new(), &segs[1..]),
        "self" => (here.clone(), &segs[1..]),
        "super" => {
            let mut b = here.clone();
            let mut k = 0;
            while segs.get(k) == Some(&"super") {
                b.pop();
                k += 1;
            }
            (b, &segs[k..])
        }
        first => {
            let mut child = here.clone();
            child.push(first.to_string());
            if !known.contains_key(&child) {
                return None;
            }
            (here.clone(), &segs[..])
        }
    };
    for s in rest {
        let mut next = base.clone();
        next.push((*s).to_string());
        if known.contains_key(&next) {
            base = next;
        } else {
            break;
        }
    }
    // A module using its ancestors' items (`super::X`, `crate::X` defined in `lib.rs`) is how a
    // module tree is built: the parent is the child's namespace, so that is no edge.
    let ancestor = here.starts_with(&base);
    (!ancestor && known.contains_key(&base)).then_some(base)
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        graph: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on: BTreeSet<&'a ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(st: &mut State<'a>, v: &'a ModPath) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        st.on.insert(v);
        for w in st.graph.get(v).into_iter().flatten() {
            if !st.index.contains_key(w) {
                visit(st, w);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if st.on.contains(w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                st.out.push(comp);
            }
        }
    }
    let mut st = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !st.index.contains_key(v) {
            visit(&mut st, v);
        }
    }
    st.out
}

/// The module graph of one crate.
fn graph_of(dir: &str) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let src = tests::root().join(dir).join("src");
    let known = modules(&src);
    let crate_name = dir.replace('-', "_");
    let mut graph = BTreeMap::new();
    for (m, file) in &known {
        let text = std::fs::read_to_string(file).expect("readable source");
        let edges: BTreeSet<ModPath> = paths(&code_of(&text))
            .iter()
            .filter_map(|p| target(p, m, &known, &crate_name))
            .collect();
        graph.insert(m.clone(), edges);
    }
    graph
}

#[test]
fn no_module_import_circles_in_any_crate() {
    let mut found = Vec::new();
    for dir in CRATES {
        for c in circles(&graph_of(dir)) {
            let names: Vec<String> = c
                .iter()
                .map(|m| format!("{dir}::{}", m.join("::")))
                .collect();
            found.push(names.join(" <-> "));
        }
    }
    assert!(found.is_empty(), "import circles:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_a_circle() {
    let mut g = BTreeMap::new();
    let (a, b, c) = (
        vec!["a".to_string()],
        vec!["b".to_string()],
        vec!["c".to_string()],
    );
    g.insert(a.clone(), BTreeSet::from([b.clone()]));
    g.insert(b.clone(), BTreeSet::from([a.clone(), c.clone()]));
    g.insert(c.clone(), BTreeSet::new());
    assert_eq!(circles(&g).len(), 1);
    // And reads paths the way the compiler resolves them.
    let known: BTreeMap<ModPath, PathBuf> =
        [vec![], a.clone(), b.clone(), vec!["a".into(), "x".into()]]
            .into_iter()
            .map(|m| (m, PathBuf::new()))
            .collect();
    let code = code_of(
        "use crate::{a::x::Y, b};\npub use crate::b::Q;\n// crate::c::Z\nfn f() { x::g(); super::b::h(); }",
    );
    let mut edges: Vec<ModPath> = paths(&code)
        .iter()
        .filter_map(|p| target(p, &a, &known, "k"))
        .collect();
    edges.sort();
    edges.dedup();
    assert_eq!(
        edges,
        vec![vec!["a".to_string(), "x".to_string()], b.clone()]
    );
}

/// `[dependencies]` and `[dev-dependencies]` names of a crate's manifest.
fn dependencies(dir: &str) -> Vec<String> {
    let text = std::fs::read_to_string(tests::root().join(dir).join("Cargo.toml"))
        .expect("readable manifest");
    let mut names = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line.ends_with("dependencies]");
            continue;
        }
        if in_deps && let Some((name, _)) = line.split_once('=') {
            names.push(name.trim().to_string());
        }
    }
    names
}

#[test]
fn engines_and_the_shared_language_do_not_depend_on_applications() {
    for (lib, banned) in [
        (
            "protocols",
            &["hub", "edge-agent", "sim", "mqtt-broker", "series-store"][..],
        ),
        (
            "mqtt-broker",
            &["hub", "edge-agent", "sim", "series-store"][..],
        ),
        (
            "series-store",
            &["hub", "edge-agent", "sim", "mqtt-broker"][..],
        ),
        ("edge-agent", &["hub", "sim"][..]),
    ] {
        let deps = dependencies(lib);
        for b in banned {
            assert!(!deps.iter().any(|d| d == b), "{lib} depends on {b}");
        }
    }
}
