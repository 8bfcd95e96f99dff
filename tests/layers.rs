//! The layer rule of `src/lib.rs`, enforced: every module of the library is read as text,
//! the modules it names (`crate::…` and `super::…` paths outside `#[cfg(test)]` code) are
//! collected, and the test fails on
//!
//! * an upward reference: storage < error/device/size/codec < drivers (raw, qcow2, vmdk)
//!   < image (probing, chains) < ops/dump;
//! * a driver naming another driver;
//! * a loop between two top-level modules, or between two sibling files of one module (the
//!   parent `mod.rs` aside, which its children share).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layer of each top-level module; a module may name only modules of its own layer or
/// below (drivers: only themselves at their own layer).
const LAYERS: &[(&str, u32)] = &[
    ("storage", 0),
    ("error", 1),
    ("device", 1),
    ("size", 1),
    ("codec", 1),
    ("create_opts", 1),
    ("check_report", 1),
    ("driver", 1),
    ("names", 1),
    ("uuid", 1),
    ("crypto", 1),
    ("raw", 2),
    ("qcow2", 2),
    ("vmdk", 2),
    ("vdi", 2),
    ("vhd", 2),
    ("vhdx", 2),
    ("image", 3),
    ("chain", 3),
    ("probed_raw", 3),
    ("ops", 4),
    ("dump", 4),
    ("nbd", 4),
];

const DRIVER_LAYER: u32 = 2;

/// Module path (`qcow2::check`) → the module paths its code names.
fn references() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading src/") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path
                .strip_prefix(&src)
                .expect("under src/")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().map(String::as_str) == Some("mod") {
                parts.pop();
            }
            if parts == ["lib"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("reading a module");
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            out.insert(parts.join("::"), names_in(code, &parts));
        }
    }
    out
}

/// The module paths `code` names: `crate::a::b`, `use crate::{a, b::c}`, `super::x`.
fn names_in(code: &str, parts: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let module_path = |s: &str| -> String {
        s.split("::")
            .take_while(|p| p.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
            .collect::<Vec<_>>()
            .join("::")
    };
    for line in code.lines().map(str::trim) {
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    let m = module_path(item.trim());
                    if !m.is_empty() {
                        names.insert(m);
                    }
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(after.len());
                let m = module_path(&after[..end]);
                if !m.is_empty() {
                    names.insert(m);
                }
            }
            rest = after;
        }
        let mut rest = line;
        while let Some(i) = rest.find("super::") {
            let after = &rest[i + "super::".len()..];
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
            {
                let mut p = parts[..parts.len().saturating_sub(1)].to_vec();
                p.push(name.to_string());
                names.insert(p.join("::"));
            }
            rest = after;
        }
    }
    names
}

fn layer(top: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == top).map(|&(_, l)| l)
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn no_module_names_a_module_of_a_higher_layer_or_another_driver() {
    let mut bad = Vec::new();
    for (from, targets) in references() {
        let Some(lf) = layer(top(&from)) else {
            bad.push(format!("{from}: not in the layer table"));
            continue;
        };
        for to in targets {
            let Some(lt) = layer(top(&to)) else { continue };
            if lt > lf {
                bad.push(format!("{from} (layer {lf}) names {to} (layer {lt})"));
            } else if lf == DRIVER_LAYER && lt == DRIVER_LAYER && top(&from) != top(&to) {
                bad.push(format!("driver {from} names another driver: {to}"));
            }
        }
    }
    assert!(bad.is_empty(), "layer rule broken:\n{}", bad.join("\n"));
}

#[test]
fn no_two_modules_name_each_other() {
    let refs = references();
    let mut bad = Vec::new();
    // Top-level modules.
    let mut tops: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, targets) in &refs {
        for to in targets {
            if top(from) != top(to) {
                tops.entry(top(from)).or_default().insert(top(to));
            }
        }
    }
    for (a, targets) in &tops {
        for b in targets {
            if a < b && tops.get(b).is_some_and(|t| t.contains(a)) {
                bad.push(format!("{a} <-> {b}"));
            }
        }
    }
    // Sibling files of one module.
    for (from, targets) in &refs {
        for to in targets {
            let (Some((pf, _)), Some((pt, _))) = (from.rsplit_once("::"), to.rsplit_once("::"))
            else {
                continue;
            };
            let sibling = |m: &str| refs.contains_key(m);
            if pf == pt && from < to && sibling(to) {
                let back = refs.get(to).is_some_and(|t| {
                    t.iter()
                        .any(|x| x == from || x.starts_with(&format!("{from}::")))
                });
                if back {
                    bad.push(format!("{from} <-> {to}"));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "modules that name each other:\n{}",
        bad.join("\n")
    );
}

/// Functions allowed over [`MAX_FUNCTION_LINES`], as `(file under src/, function name)`:
/// none. A parser that really reads as a table of fields may be listed here, with the
/// reason beside it; the test fails on an entry that is no longer long, so the list cannot
/// go stale.
const LONG_FUNCTIONS_ALLOWED: &[(&str, &str)] = &[];

/// Longest a library function may be, counted from its `fn` line to its closing brace.
const MAX_FUNCTION_LINES: usize = 100;

/// The name of the function a line declares (`pub(crate) async fn name<T>(`), if it does.
fn declared_function(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return None;
    }
    let mut words = trimmed.split_whitespace();
    while let Some(word) = words.next() {
        if word == "fn" {
            let rest = words.next()?;
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            return (end > 0).then(|| &rest[..end]);
        }
        let modifier = word.starts_with("pub")
            || matches!(word, "const" | "async" | "unsafe" | "extern" | "\"C\"");
        if !modifier {
            return None;
        }
    }
    None
}

/// Each function of `text` longer than `max` lines: `(name, first line, length)`. A function
/// runs from its `fn` line to the first later line that is `}` at the same indent; a
/// declaration without a body (a trait method ending in `;`) is skipped.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = declared_function(line) else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let close = format!("{}}}", &line[..indent]);
        let signature_end = lines[i..]
            .iter()
            .position(|l| l.contains('{') || l.trim_end().ends_with(';'));
        let has_body = signature_end.is_some_and(|k| lines[i + k].contains('{'));
        if !has_body {
            continue;
        }
        let end = lines
            .iter()
            .enumerate()
            .skip(i + 1)
            .find(|(_, later)| later.trim_end() == close)
            .map(|(j, _)| j);
        if let Some(end) = end {
            let length = end - i + 1;
            if length > max {
                out.push((name.to_string(), i + 1, length));
            }
        }
    }
    out
}

#[test]
fn the_function_scan_measures_from_fn_to_its_closing_brace() {
    let mut text =
        String::from("impl A {\n    pub(crate) fn long(\n        x: u8,\n    ) -> u8 {\n");
    for _ in 0..4 {
        text.push_str("        let _ = x;\n");
    }
    text.push_str("        x\n    }\n\n    fn declared(&self);\n}\n");
    text.push_str("trait B {\n    fn declared_over_lines(\n        &self,\n    ) -> u8;\n}\n");
    assert_eq!(long_functions(&text, 9), vec![]);
    assert_eq!(long_functions(&text, 8), vec![("long".to_string(), 2, 9)]);
    assert_eq!(declared_function("    // fn commented() {"), None);
    assert_eq!(declared_function("let f = fn_pointer;"), None);
}

#[test]
fn no_library_function_is_longer_than_a_hundred_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading src/") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
                let rel = path.strip_prefix(&src).expect("under src/");
                let rel = rel.to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&path).expect("reading a module");
                for (name, line, length) in long_functions(&text, MAX_FUNCTION_LINES) {
                    found.push((rel.clone(), name, line, length));
                }
            }
        }
    }
    let mut bad = Vec::new();
    for (file, name, line, length) in &found {
        if !LONG_FUNCTIONS_ALLOWED.contains(&(file.as_str(), name.as_str())) {
            bad.push(format!("src/{file}:{line}: fn {name} is {length} lines"));
        }
    }
    for (file, name) in LONG_FUNCTIONS_ALLOWED {
        if !found.iter().any(|(f, n, _, _)| f == file && n == name) {
            bad.push(format!(
                "src/{file}: fn {name} is allowed to be long but is not (drop it from the list)"
            ));
        }
    }
    bad.sort();
    assert!(
        bad.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n{}",
        bad.join("\n")
    );
}
