//! The shape of `src/` (issue 26): no import circle between its files, and no file over 600
//! lines.
//!
//! A file's imports are the paths it names outside its tests, comments and string literals:
//! `crate::…`, `self::…`, `super::…` and its own submodules' `child::…`, with `use` groups
//! expanded at every depth. A path is resolved to the deepest module file it reaches and then
//! through that module's re-exports (`pub use`), so naming `crate::backend::X` reaches the file
//! that defines `X`. A module's `mod child;` declarations and its `pub use` re-exports are not
//! imports of its own (it only passes names on), unless the module also uses a re-exported
//! name itself; everything else is, including a parent's `use child::f` and a child's
//! `use super::*`. A circle is a set of files each reaching the others through such imports: a
//! newcomer cannot read one of them without the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

type Module = Vec<String>;

/// Every `.rs` file under `src/` by its module path (`src/a/mod.rs` and `src/a.rs` are `a`).
fn modules() -> BTreeMap<Module, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(&root).unwrap().with_extension("");
            let mut module: Module = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            (module, path)
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `text` with comments and string and character literals blanked (newlines kept, so offsets
/// and line numbers stay), lifetimes left alone.
fn blank_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let previous_is_ident = i > 0 && is_ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if !previous_is_ident && (c == 'r' || (c == 'b' && next == Some('r'))) && {
            let mut j = i + if c == 'b' { 2 } else { 1 };
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            chars.get(j) == Some(&'"')
        } {
            // A raw string: r"…", r#"…"#, br"…".
            let mut j = i + if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while chars[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|k| chars.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(chars[i..j.min(chars.len())].iter().map(|&c| blank(c)));
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && (!previous_is_ident || is_byte_prefix(&chars, i)) {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime ('a), which stays.
            let literal_end = if next == Some('\\') {
                (i + 3..chars.len()).find(|&j| chars[j] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match literal_end {
                Some(end) => {
                    out.extend(std::iter::repeat_n(' ', end + 1 - i));
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether the `'` at `i` opens a byte literal: it follows a `b` that is not part of a longer
/// identifier (`b'"'`).
fn is_byte_prefix(chars: &[char], i: usize) -> bool {
    i >= 1 && chars[i - 1] == 'b' && !(i >= 2 && is_ident(chars[i - 2]))
}

/// The end (exclusive) of the item starting at `from`: its first `;` (or `,`, for a field)
/// outside brackets, the brace closing its first `{`, or the bracket closing what it is in.
fn item_end(code: &str, from: usize) -> usize {
    let mut depth = 0i32;
    for (i, c) in code[from..].char_indices() {
        match c {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => {
                depth -= 1;
                if depth < 0 {
                    return from + i;
                }
                if depth == 0 && c == '}' {
                    return from + i + 1;
                }
            }
            ';' | ',' if depth == 0 => return from + i + 1,
            _ => {}
        }
    }
    code.len()
}

/// Whether an attribute's `cfg(...)` content compiles its item for tests only: `test`, or
/// `all(..., test, ...)` (never `not(test)` or `any(test, ...)`).
fn test_only(cfg: &str) -> bool {
    let cfg: String = cfg.chars().filter(|c| !c.is_whitespace()).collect();
    cfg == "test"
        || cfg
            .strip_prefix("all(")
            .and_then(|inner| inner.strip_suffix(')'))
            .is_some_and(|inner| split_top_commas(inner).any(|part| part == "test"))
}

fn split_top_commas(text: &str) -> impl Iterator<Item = &str> {
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter()
}

/// The next test-only `#[cfg(...)]` attribute at or after `from`: its start and the end of its
/// `]`.
fn next_test_attribute(code: &str, mut from: usize) -> Option<(usize, usize)> {
    while let Some(found) = code[from..].find("#[cfg(") {
        let at = from + found;
        let inner = at + "#[cfg(".len();
        let close = inner + matching_paren(&code[inner..]);
        from = inner;
        if close < code.len() && test_only(&code[inner..close]) {
            let end = code[close..].find(']').map_or(code.len(), |n| close + n + 1);
            return Some((at, end));
        }
    }
    None
}

/// Where the bracket closing an already opened `open` is in `text` (its length if none).
fn matching(text: &str, open: char, close: char) -> usize {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            if depth == 0 {
                return i;
            }
            depth -= 1;
        }
    }
    text.len()
}

fn matching_paren(text: &str) -> usize {
    matching(text, '(', ')')
}

const ITEM_KEYWORDS: [&str; 14] = [
    "fn", "impl", "mod", "struct", "enum", "union", "trait", "type", "use", "const", "static", "unsafe",
    "async", "extern",
];

/// The end of what a test-only attribute ending at `from` applies to: an item (to its `;` or
/// the brace closing its body, whatever its signature holds), or else a field, variant or
/// statement (to its `,` or `;`, or the bracket closing what it is in).
fn test_item_end(code: &str, from: usize) -> usize {
    let mut at = from;
    loop {
        let rest = &code[at..];
        let trimmed = rest.trim_start();
        at += rest.len() - trimmed.len();
        if trimmed.starts_with("#[") {
            at += 1 + trimmed[1..].find(']').map_or(trimmed.len() - 1, |n| n + 1);
        } else {
            break;
        }
    }
    let mut words = code[at..].split(|c: char| !is_ident(c)).filter(|w| !w.is_empty());
    let mut first = words.next().unwrap_or_default();
    if first == "pub" {
        first = words
            .find(|w| *w != "crate" && *w != "super" && *w != "self" && *w != "in")
            .unwrap_or_default();
    }
    if !ITEM_KEYWORDS.contains(&first) {
        return item_end(code, at);
    }
    let mut depth = 0i32;
    for (i, c) in code[at..].char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ';' if depth == 0 => return at + i + 1,
            '{' => return at + i + 1 + matching_brace(&code[at + i + 1..]) + 1,
            _ => {}
        }
    }
    code.len()
}

/// The source without comments, literals and test-only items (each such item alone is cut,
/// not the rest of the file; a file that opens with `#![cfg(test)]` is all test).
fn code(text: &str) -> String {
    let mut code = blank_literals(text);
    if code.trim_start().starts_with("#![cfg(test)]") {
        return String::new();
    }
    // `pub(in crate::a)` names where an item is visible, not what it imports.
    while let Some(at) = code.find("pub(in ") {
        let end = at + 4 + matching_paren(&code[at + 4..]);
        code.replace_range(at + 3..=end, &" ".repeat(end - at - 2));
    }
    while let Some((at, attribute_end)) = next_test_attribute(&code, 0) {
        let end = test_item_end(&code, attribute_end).min(code.len());
        let blanked: String = code[at..end]
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
        code.replace_range(at..end, &blanked);
    }
    code
}

/// A path as written: its segments, the name it is known by (the last segment or its `as`
/// alias), whether it was named by a `pub use` (a re-export), and whether it ends in `::*`
/// (then `segments` is the module it takes every name from).
#[derive(Debug, Clone, PartialEq)]
struct Named {
    segments: Vec<String>,
    alias: Option<String>,
    reexport: bool,
    glob: bool,
}

/// The spans of `pub use …;` statements (`pub(crate)`, `pub(super)` included).
fn reexport_spans(code: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("pub") {
        let at = from + found;
        from = at + 3;
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let mut rest = &code[at + 3..];
        if !rest.starts_with(|c: char| c.is_whitespace() || c == '(') {
            continue;
        }
        if let Some(inner) = rest.trim_start().strip_prefix('(') {
            let Some(close) = inner.find(')') else { continue };
            rest = &inner[close + 1..];
        }
        if rest
            .trim_start()
            .strip_prefix("use")
            .is_some_and(|r| r.starts_with(char::is_whitespace))
        {
            spans.push((at, item_end(code, at)));
        }
    }
    spans
}

/// The paths a file names that start with `crate`, `self`, `super` or one of `children`.
fn paths(code: &str, children: &BTreeSet<String>) -> Vec<Named> {
    let reexports = reexport_spans(code);
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let starts = is_ident(c)
            && !c.is_ascii_digit()
            && (i == 0 || {
                let before = chars[i - 1].1;
                !is_ident(before) && before != ':' && before != '$'
            });
        if !starts {
            i += 1;
            continue;
        }
        let word_end = code[at..]
            .find(|c: char| !is_ident(c))
            .map_or(code.len(), |n| at + n);
        let word = &code[at..word_end];
        let rooted = matches!(word, "crate" | "self" | "super") || children.contains(word);
        if rooted && code[word_end..].starts_with("::") {
            let reexport = reexports.iter().any(|&(start, end)| (start..end).contains(&at));
            let end = expand(code, at, Vec::new(), reexport, &mut out);
            i = chars.partition_point(|&(offset, _)| offset < end);
        } else {
            i = chars.partition_point(|&(offset, _)| offset < word_end);
        }
    }
    out
}

/// Reads the path at `at` (after `prefix`), groups expanded recursively; returns where it ends.
fn expand(code: &str, mut at: usize, mut prefix: Vec<String>, reexport: bool, out: &mut Vec<Named>) -> usize {
    let mut glob = false;
    loop {
        let rest = &code[at..];
        let skipped = rest.len() - rest.trim_start().len();
        at += skipped;
        let rest = &code[at..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut position = at + 1;
            let close = at + 1 + matching_brace(group);
            while position < close {
                let before = position;
                position = expand(code, position, prefix.clone(), reexport, out);
                if position <= before {
                    // Nothing this reader understands (a macro, say): on to the next member.
                    position = code[before..close].find(',').map_or(close, |n| before + n);
                }
                let rest = &code[position..close];
                let skipped = rest.len() - rest.trim_start().len();
                position += skipped;
                if code[position..].starts_with(',') {
                    position += 1;
                }
                if code[position..close].trim().is_empty() {
                    break;
                }
            }
            return close + 1;
        }
        let raw = usize::from(rest.starts_with("r#")) * 2;
        let end = raw
            + rest[raw..]
                .find(|c: char| !is_ident(c))
                .unwrap_or(rest.len() - raw);
        if end == raw {
            if rest.starts_with('*') {
                at += 1;
                glob = true;
            }
            break;
        }
        prefix.push(rest[raw..end].to_owned());
        at += end;
        if code[at..].starts_with("::") {
            at += 2;
        } else {
            break;
        }
    }
    let rest = &code[at..];
    let mut alias = None;
    if let Some(after) = rest.trim_start().strip_prefix("as ") {
        let after = after.trim_start();
        let end = after.find(|c: char| !is_ident(c)).unwrap_or(after.len());
        alias = Some(after[..end].to_owned());
        at = code.len() - after.len() + end;
    }
    if !prefix.is_empty() {
        out.push(Named {
            segments: prefix,
            alias,
            reexport,
            glob,
        });
    }
    at
}

fn matching_brace(text: &str) -> usize {
    matching(text, '{', '}')
}

/// The names of the submodules a file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x {`).
fn children(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("mod ") {
        let at = from + found;
        from = at + 4;
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = code[at + 4..].trim_start();
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if end > 0 {
            out.insert(rest[..end].to_owned());
        }
    }
    out
}

/// A file's own path (as written) made absolute: `super`, `self` and child names resolved.
fn absolute(module: &Module, segments: &[String]) -> Module {
    let mut base = module.clone();
    let mut rest = segments;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        _ => {}
    }
    base.extend(rest.iter().cloned());
    base
}

struct Source {
    code: String,
    named: Vec<Named>,
}

/// The files each file imports.
fn imports() -> BTreeMap<Module, BTreeSet<Module>> {
    let modules = modules();
    let sources: BTreeMap<Module, Source> = modules
        .iter()
        .filter(|(module, _)| module.last().is_none_or(|last| last != "tests"))
        .map(|(module, file)| {
            let code = code(&std::fs::read_to_string(file).unwrap());
            let children = children(&code);
            let named = paths(&code, &children)
                .into_iter()
                .map(|mut named| {
                    named.segments = absolute(module, &named.segments);
                    named
                })
                .collect();
            (module.clone(), Source { code, named })
        })
        .collect();
    // Each module's re-exports: the name it passes on, and the absolute path it names.
    let reexports: BTreeMap<&Module, BTreeMap<String, &Module>> = sources
        .iter()
        .map(|(module, source)| {
            let names = source
                .named
                .iter()
                .filter(|named| named.reexport && !named.glob)
                .filter_map(|named| {
                    let name = named.alias.clone().or_else(|| named.segments.last().cloned())?;
                    Some((name, &named.segments))
                })
                .collect();
            (module, names)
        })
        .collect();
    // And the modules each one re-exports whole (`pub use x::*`).
    let globs: BTreeMap<&Module, Vec<&Module>> = sources
        .iter()
        .map(|(module, source)| {
            let whole = source
                .named
                .iter()
                .filter(|named| named.reexport && named.glob)
                .map(|named| &named.segments)
                .collect();
            (module, whole)
        })
        .collect();
    let resolve = |path: &[String]| follow(path, &modules, &reexports, &globs, 0);
    fn follow(
        path: &[String],
        modules: &BTreeMap<Module, PathBuf>,
        reexports: &BTreeMap<&Module, BTreeMap<String, &Module>>,
        globs: &BTreeMap<&Module, Vec<&Module>>,
        depth: usize,
    ) -> Module {
        let Some(file) = (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| modules.contains_key(prefix))
        else {
            return Module::new();
        };
        if depth < 8
            && let Some(next) = path.get(file.len())
            && let Some(target) = reexports.get(&file).and_then(|names| names.get(next))
            && target.as_slice() != path
        {
            let mut followed = (*target).clone();
            followed.extend(path[file.len() + 1..].iter().cloned());
            return follow(&followed, modules, reexports, globs, depth + 1);
        }
        if depth < 8
            && path.len() > file.len()
            && let Some(whole) = globs.get(&file).and_then(|whole| whole.first())
        {
            let mut followed = (*whole).clone();
            followed.extend(path[file.len()..].iter().cloned());
            return follow(&followed, modules, reexports, globs, depth + 1);
        }
        file
    }
    let mut graph = BTreeMap::new();
    for (module, source) in &sources {
        let mut targets = BTreeSet::new();
        for named in &source.named {
            // A re-export imports only when the module uses the name itself (a whole module
            // re-exported is never a use of its own).
            if named.reexport && named.glob {
                continue;
            }
            if named.reexport {
                let name = named.alias.clone().or_else(|| named.segments.last().cloned());
                let used = name.is_some_and(|name| uses_word(&source.code, &name));
                if !used {
                    continue;
                }
            }
            let mut reached = vec![resolve(&named.segments)];
            if named.glob {
                // `use super::*`: every name the module passes on that this file uses reaches
                // the file defining it.
                for (name, path) in reexports.get(&reached[0]).into_iter().flatten() {
                    if uses_word(&source.code, name) {
                        reached.push(resolve(path));
                    }
                }
            }
            for target in reached {
                if target != *module && !target.is_empty() && sources.contains_key(&target) {
                    targets.insert(target);
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// Whether `word` occurs in `code` outside `use` statements, as a whole identifier.
fn uses_word(code: &str, word: &str) -> bool {
    let mut outside = code.to_owned();
    let mut from = 0;
    while let Some(found) = outside[from..].find("use ") {
        let at = from + found;
        from = at + 4;
        if outside[..at].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let end = item_end(&outside, at);
        let blanked = " ".repeat(end - at);
        outside.replace_range(at..end, &blanked);
    }
    let mut from = 0;
    while let Some(found) = outside[from..].find(word) {
        let at = from + found;
        from = at + word.len();
        let before = outside[..at].chars().next_back();
        let after = outside[at + word.len()..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            return true;
        }
    }
    false
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        next: usize,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(state: &mut State<'a>, node: &'a Module) {
        state.index.insert(node, state.next);
        state.low.insert(node, state.next);
        state.next += 1;
        state.stack.push(node);
        state.on_stack.insert(node);
        let graph = state.graph;
        for target in graph.get(node).into_iter().flatten() {
            if !state.index.contains_key(target) {
                visit(state, target);
                let low = state.low[target].min(state.low[node]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.index[target].min(state.low[node]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.clone());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                state.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node) {
            visit(&mut state, node);
        }
    }
    state.out
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

#[test]
fn no_import_circle_between_source_files() {
    let graph = imports();
    let found: Vec<String> = circles(&graph)
        .iter()
        .map(|circle| {
            let members: BTreeSet<&Module> = circle.iter().collect();
            circle
                .iter()
                .map(|member| {
                    let into: Vec<String> = graph[member]
                        .iter()
                        .filter(|target| members.contains(target))
                        .map(name)
                        .collect();
                    format!("{} -> {}", name(member), into.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .collect();
    assert!(found.is_empty(), "import circles in src/:\n{}", found.join("\n"));
}

#[test]
fn no_source_file_over_600_lines() {
    let long: Vec<String> = modules()
        .values()
        .filter_map(|path| {
            let lines = std::fs::read_to_string(path).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", path.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

/// The checker itself: a circle it must find, and what it must and must not count as imports.
#[test]
fn the_checker_finds_a_circle_and_reads_paths_as_rust_does() {
    let module = |s: &str| -> Module { s.split("::").map(str::to_owned).collect() };
    let mut graph = BTreeMap::new();
    graph.insert(module("a"), BTreeSet::from([module("b")]));
    graph.insert(module("b"), BTreeSet::from([module("c")]));
    graph.insert(module("c"), BTreeSet::from([module("a")]));
    graph.insert(module("d"), BTreeSet::from([module("a")]));
    let found = circles(&graph);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].len(), 3);

    let source = r##"
        mod entries;
        pub use entries::Passed;
        use crate::{decode::{Claims, keys::KeyStamp}, config::MAX as LIMIT};
        use entries::helper;
        let x = super::super::y::Z;
        /* crate::in_a_comment::X */ let s = "crate::in_a_string::X"; let r = r#"self::raw"#;
        let c = '"'; let l: &'static str = crate::after_literals::X;
        #[cfg(test)]
        mod tests { use crate::only_in_tests::X; }
        fn after_tests() { crate::after_tests::f() }
    "##;
    let code = code(source);
    let children = children(&code);
    assert_eq!(children, BTreeSet::from(["entries".to_owned()]));
    let parsed: Vec<Named> = paths(&code, &children);
    let segments: Vec<Vec<String>> = parsed.iter().map(|n| n.segments.clone()).collect();
    let has = |path: &str| segments.contains(&module(path));
    assert!(has("crate::decode::Claims"), "{segments:?}");
    assert!(has("crate::decode::keys::KeyStamp"), "{segments:?}");
    assert!(has("crate::config::MAX"), "{segments:?}");
    assert!(has("entries::helper"), "{segments:?}");
    assert!(has("super::super::y::Z"), "{segments:?}");
    assert!(
        !has("super::y::Z"),
        "a second `super` is not a path of its own: {segments:?}"
    );
    assert!(has("crate::after_literals::X"), "{segments:?}");
    assert!(
        has("crate::after_tests::f"),
        "only the test module is cut: {segments:?}"
    );
    for hidden in [
        "crate::in_a_comment::X",
        "crate::in_a_string::X",
        "self::raw",
        "crate::only_in_tests::X",
    ] {
        assert!(!has(hidden), "{hidden} is not code: {segments:?}");
    }
    let alias = parsed
        .iter()
        .find(|n| n.segments == module("crate::config::MAX"))
        .unwrap();
    assert_eq!(alias.alias.as_deref(), Some("LIMIT"));
    let passed = parsed
        .iter()
        .find(|n| n.segments == module("entries::Passed"))
        .unwrap();
    assert!(passed.reexport);
    assert!(
        !parsed
            .iter()
            .find(|n| n.segments == module("entries::helper"))
            .unwrap()
            .reexport
    );
    assert_eq!(
        absolute(&module("a::b"), &module("super::super::y::Z")),
        module("y::Z")
    );
    assert_eq!(
        absolute(&module("a::b"), &module("entries::f")),
        module("a::b::entries::f")
    );
    assert!(uses_word("pub use x::Name; fn f() -> Name {}", "Name"));
    assert!(!uses_word("pub use x::Name; fn f() -> Named {}", "Name"));
}

/// README is the front door (issue 26): at most 15 KB, and every page of the manual
/// (`src/docs/*.md`, each a module of `docs`) is linked from it.
#[test]
fn readme_is_a_front_door_to_every_page_of_the_manual() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.len() <= 15 * 1024, "README.md is {} bytes", readme.len());
    let index = std::fs::read_to_string(root.join("src/docs/mod.rs")).unwrap();
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(root.join("src/docs")).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "md") {
            pages.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(pages.len() >= 10, "{pages:?}");
    for page in &pages {
        assert!(
            index.contains(&format!(
                "#[doc = include_str!(\"{page}.md\")]\npub mod {page} {{}}"
            )),
            "src/docs/{page}.md is not a module of docs"
        );
        assert!(
            readme.contains(&format!("/tower_jwt_revocation/docs/{page}/index.html")),
            "README.md does not link to docs::{page}"
        );
    }
}

/// What the review of the checker found it misread (issue 26): byte and escaped-quote literals,
/// test-only items with generic signatures or `all(test, ..)`, raw identifiers, glob
/// re-exports and `pub(in ..)` visibility.
#[test]
fn the_checker_reads_literals_test_items_and_globs() {
    let module = |s: &str| -> Module { s.split("::").map(str::to_owned).collect() };
    let source = r##"
        mod x;
        pub use x::*;
        let quote = b'"'; let q = crate::after_byte::X;
        let escaped = '\''; let e = crate::after_quote::X;
        #[cfg(test)]
        pub(super) fn finish(self) -> Result<(), Overflow> { crate::in_test_fn::X }
        fn after() { crate::after_test_fn::X }
        #[cfg(all(test, feature = "moka"))]
        mod more { use crate::all_test::X; }
        #[cfg(not(test))]
        fn not_test() { crate::not_test::X }
        #[cfg(test)]
        const TABLE: [u8; 2] = [1, 2];
        fn after_const() { crate::after_const::X }
        use crate::{r#type::X, y::Z};
        pub(in crate::visible) fn f() {}
    "##;
    let code = code(source);
    let children = children(&code);
    let parsed = paths(&code, &children);
    let segments: Vec<Vec<String>> = parsed.iter().map(|n| n.segments.clone()).collect();
    let has = |path: &str| segments.contains(&module(path));
    for seen in [
        "crate::after_byte::X",
        "crate::after_quote::X",
        "crate::after_test_fn::X",
        "crate::not_test::X",
        "crate::after_const::X",
        "crate::type::X",
        "crate::y::Z",
    ] {
        assert!(has(seen), "{seen} is code: {segments:?}");
    }
    for hidden in ["crate::in_test_fn::X", "crate::all_test::X", "crate::visible"] {
        assert!(!has(hidden), "{hidden} is not an import: {segments:?}");
    }
    let glob = parsed.iter().find(|n| n.segments == module("x")).unwrap();
    assert!(glob.glob && glob.reexport, "{glob:?}");
    assert!(self::code(r#"#![cfg(test)] use crate::a::B;"#).trim().is_empty());
}
