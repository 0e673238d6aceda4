//! A layer-order check of a crate's own imports, read from its sources.
//!
//! A crate's guard test lists every module with a layer number and calls [`check`]; each
//! `crate::…` or `super::…` path that reaches up or sideways is a [`Violation`]. The scan is
//! lexical (no parser dependency): comments and literals are skipped, and paths are read from
//! `use` trees, code and macro bodies alike. Paths relative to a module's own scope (`self::…`,
//! `child::…`) are not followed: they stay inside the module or go down into its children.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// One row of the order table: a module below `crate` (`lib` or `main` for the root), its layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    /// The module path below `crate`, segments joined by `::`.
    pub module: &'static str,
    /// 0 is the top; a module may import only modules of a strictly greater number.
    pub layer: u32,
}

/// An import that breaks the order, or a file that the table does not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The file as `src/…`, so that it reads (and clicks) from the crate's directory.
    pub file: PathBuf,
    /// The 1-based line of the first such import in the file (1 for an unknown module).
    pub line: usize,
    /// The table entry the file belongs to (for an unknown module, the file's own module path).
    pub from: String,
    /// The table entry the path reaches (empty for an unknown module).
    pub to: String,
    /// What the import breaks.
    pub kind: Kind,
}

/// What a [`Violation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// An import of a module higher up (a smaller layer number).
    Upward {
        /// The importing module's layer.
        from_layer: u32,
        /// The imported module's layer.
        to_layer: u32,
    },
    /// An import between two different modules of one layer.
    Sibling {
        /// The layer both are in.
        layer: u32,
    },
    /// A file whose module no table entry covers.
    UnknownModule,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        let (from, to) = (&self.from, &self.to);
        match self.kind {
            Kind::Upward {
                from_layer,
                to_layer,
            } => write!(
                f,
                "{from} -> {to}: upward edge (layer {from_layer} imports layer {to_layer})"
            ),
            Kind::Sibling { layer } => {
                write!(f, "{from} -> {to}: sibling edge (both in layer {layer})")
            }
            Kind::UnknownModule => write!(f, "module {from} is not in the layer table"),
        }
    }
}

/// Checks every `.rs` file below `src` against `table`; violations come sorted by file and line.
pub fn check(src: impl AsRef<Path>, table: &[Layer]) -> io::Result<Vec<Violation>> {
    let src = src.as_ref();
    let mut paths = Vec::new();
    collect(src, &mut paths)?;
    paths.sort();
    // Reported paths start with the directory's own name ("src/…"), as compilers print them.
    let shown = PathBuf::from(src.file_name().unwrap_or_default());
    let files: Vec<(PathBuf, FileModule)> = paths
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(src).ok()?.to_path_buf();
            let module = file_module(&rel)?;
            Some((rel, module))
        })
        .collect();
    // A path into a module file that the table misses is not "something in the root": that
    // file is reported once as unknown instead of every import of it as an edge into `lib`.
    let file_tops: HashSet<&str> = files
        .iter()
        .filter(|(_, m)| !m.root)
        .filter_map(|(_, m)| m.segments.first().map(String::as_str))
        .collect();
    let has_lib = files.iter().any(|(_, m)| m.root && m.name == "lib");

    let mut out = Vec::new();
    for (rel, module) in &files {
        let file = shown.join(rel);
        let own = if module.root {
            entry(table, &[module.name.as_str()])
        } else {
            entry(table, &module.segments)
        };
        let Some(from) = own else {
            out.push(Violation {
                file,
                line: 1,
                from: module.name.clone(),
                to: String::new(),
                kind: Kind::UnknownModule,
            });
            continue;
        };
        let root_name = match (module.root, has_lib) {
            (true, _) => module.name.as_str(),
            (false, true) => "lib",
            (false, false) => "main",
        };
        let root = entry(table, &[root_name]);
        let path = src.join(rel);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut seen = HashSet::new();
        for (target, line) in targets(&lex(&text), &module.segments) {
            let into_file = target
                .first()
                .is_some_and(|s| file_tops.contains(s.as_str()));
            let to = match (entry(table, &target), root) {
                (Some(to), _) => to,
                (None, Some(root)) if !into_file => root,
                (None, _) => continue,
            };
            if to.module == from.module || to.layer > from.layer {
                continue;
            }
            let kind = if to.layer == from.layer {
                Kind::Sibling { layer: to.layer }
            } else {
                Kind::Upward {
                    from_layer: from.layer,
                    to_layer: to.layer,
                }
            };
            if seen.insert((to.module, kind)) {
                out.push(Violation {
                    file: file.clone(),
                    line,
                    from: from.module.to_owned(),
                    to: to.module.to_owned(),
                    kind,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.file, a.line, &a.to).cmp(&(&b.file, b.line, &b.to)));
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    for item in std::fs::read_dir(dir).map_err(context)? {
        let item = item.map_err(context)?;
        let path = item.path();
        if item.file_type().map_err(context)?.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Where a file sits in the module tree.
struct FileModule {
    /// The path below `crate`, for resolving `super` (empty for a crate root).
    segments: Vec<String>,
    /// The name the table knows it by: the path joined by `::`, or `lib` / `main`.
    name: String,
    root: bool,
}

fn file_module(rel: &Path) -> Option<FileModule> {
    let mut segments = rel
        .iter()
        .map(|s| s.to_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    let last = segments.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if segments.is_empty() && (stem == "lib" || stem == "main") {
        return Some(FileModule {
            segments,
            name: stem.to_owned(),
            root: true,
        });
    }
    if stem != "mod" {
        segments.push(stem.to_owned());
    }
    Some(FileModule {
        name: segments.join("::"),
        segments,
        root: false,
    })
}

/// The longest table entry that is a whole-segment prefix of `path`.
fn entry<'t, S: AsRef<str>>(table: &'t [Layer], path: &[S]) -> Option<&'t Layer> {
    table
        .iter()
        .filter(|l| {
            let n = l.module.split("::").count();
            n <= path.len() && l.module.split("::").zip(path).all(|(a, b)| a == b.as_ref())
        })
        .max_by_key(|l| l.module.split("::").count())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Star,
    Other(char),
}

#[derive(Debug)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Tokens that matter for paths; comments and literals vanish, but their newlines still count.
fn lex(text: &str) -> Vec<Token> {
    let c: Vec<char> = text.chars().collect();
    let at = |i: usize| c.get(i).copied();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while let Some(ch) = at(i) {
        let simple = match ch {
            '{' => Some(Tok::Open),
            '}' => Some(Tok::Close),
            ',' => Some(Tok::Comma),
            '*' => Some(Tok::Star),
            _ => None,
        };
        if let Some(tok) = simple {
            out.push(Token { tok, line });
            i += 1;
        } else if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == Some('/') {
            while at(i).is_some_and(|c| c != '\n') {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == Some('*') {
            i = skip_block_comment(&c, i + 2, &mut line);
        } else if ch == '"' {
            i = skip_string(&c, i + 1, &mut line);
        } else if ch == '\'' {
            i = skip_char_or_lifetime(&c, i, &mut line);
        } else if ch == ':' && at(i + 1) == Some(':') {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else if ch == '_' || ch.is_alphabetic() {
            let start = i;
            while at(i).is_some_and(|c| c == '_' || c.is_alphanumeric()) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            match (word.as_str(), at(i)) {
                ("b" | "c", Some('"')) => i = skip_string(&c, i + 1, &mut line),
                ("b", Some('\'')) => i = skip_char_or_lifetime(&c, i, &mut line),
                ("r" | "br" | "cr", Some('"' | '#')) if raw_string_opens(&c, i) => {
                    i = skip_raw_string(&c, i, &mut line);
                }
                // A raw identifier: the `r#` is not part of the name.
                ("r", Some('#')) => i += 1,
                _ => out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                }),
            }
        } else if ch.is_ascii_digit() {
            // Suffixes and exponents (`1u32`, `1e5`) are not identifiers.
            while at(i).is_some_and(|c| c == '_' || c.is_alphanumeric()) {
                i += 1;
            }
        } else {
            out.push(Token {
                tok: Tok::Other(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

fn skip_block_comment(c: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut depth = 1;
    while depth > 0 && i < c.len() {
        match (c[i], c.get(i + 1).copied()) {
            ('/', Some('*')) => {
                depth += 1;
                i += 2;
            }
            ('*', Some('/')) => {
                depth -= 1;
                i += 2;
            }
            (ch, _) => {
                *line += usize::from(ch == '\n');
                i += 1;
            }
        }
    }
    i
}

/// Skips to past the closing quote; `i` is just after the opening one.
fn skip_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    while let Some(&ch) = c.get(i) {
        match ch {
            // The escaped character may be a newline (a line continuation).
            '\\' => {
                *line += usize::from(c.get(i + 1) == Some(&'\n'));
                i += 2;
            }
            '"' => return i + 1,
            _ => {
                *line += usize::from(ch == '\n');
                i += 1;
            }
        }
    }
    i
}

fn raw_string_opens(c: &[char], mut i: usize) -> bool {
    while c.get(i) == Some(&'#') {
        i += 1;
    }
    c.get(i) == Some(&'"')
}

/// Skips `#…#"…"#…#`; `i` is at the first `#` or the quote.
fn skip_raw_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut hashes = 0;
    while c.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    i += 1;
    while let Some(&ch) = c.get(i) {
        if ch == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        *line += usize::from(ch == '\n');
        i += 1;
    }
    i
}

/// At a `'`: skips a char literal whole, or only the quote of a lifetime or label.
fn skip_char_or_lifetime(c: &[char], i: usize, line: &mut usize) -> usize {
    match (c.get(i + 1), c.get(i + 2)) {
        (Some('\\'), _) => {
            let mut j = i + 3;
            while c.get(j).is_some_and(|&ch| ch != '\'') {
                j += 1;
            }
            j + 1
        }
        (Some(&ch), Some('\'')) => {
            *line += usize::from(ch == '\n');
            i + 3
        }
        _ => i + 1,
    }
}

fn is(token: Option<&Token>, tok: &Tok) -> bool {
    token.is_some_and(|t| t.tok == *tok)
}

fn is_ident(token: Option<&Token>, word: &str) -> bool {
    matches!(token, Some(Token { tok: Tok::Ident(w), .. }) if w == word)
}

/// Every `crate::…` and `super::…` path as its module path below `crate`, with its line.
/// `file` is the file's module path, which `super` resolves against (with inline `mod x { … }`
/// blocks added, so that a test module's `super::*` is the file itself).
fn targets(tokens: &[Token], file: &[String]) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, t) in tokens.iter().enumerate() {
        let prev = i.checked_sub(1).and_then(|k| tokens.get(k));
        match &t.tok {
            Tok::Open => {
                depth += 1;
                if let Some((_, name)) = pending.take_if(|(at, _)| *at == i) {
                    inline.push((name, depth));
                }
            }
            Tok::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(w) if w == "mod" => {
                if let Some(Tok::Ident(name)) = tokens.get(i + 1).map(|t| &t.tok)
                    && is(tokens.get(i + 2), &Tok::Open)
                {
                    pending = Some((i + 2, name.clone()));
                }
            }
            Tok::Ident(w)
                if (w == "crate" || w == "super")
                    && is(tokens.get(i + 1), &Tok::PathSep)
                    && !is(prev, &Tok::PathSep)
                    // `pub(in crate::x)` limits visibility; it imports nothing.
                    && !(is_ident(prev, "in")
                        && is(i.checked_sub(2).and_then(|k| tokens.get(k)), &Tok::Other('('))) =>
            {
                if w == "crate" {
                    tree(tokens, i + 2, Vec::new(), &mut out);
                    continue;
                }
                let mut base: Vec<String> = file.to_vec();
                base.extend(inline.iter().map(|(name, _)| name.clone()));
                let mut j = i;
                let mut valid = true;
                loop {
                    valid &= base.pop().is_some();
                    if is(tokens.get(j + 1), &Tok::PathSep) && is_ident(tokens.get(j + 2), "super")
                    {
                        j += 2;
                    } else {
                        break;
                    }
                }
                if !valid {
                    continue;
                }
                if is(tokens.get(j + 1), &Tok::PathSep) {
                    tree(tokens, j + 2, base, &mut out);
                } else {
                    out.push((base, tokens[j].line));
                }
            }
            _ => {}
        }
    }
    out
}

/// Reads a path (or `use` tree) from just after a `::`, pushing each leaf with its line; returns
/// the index after what it read.
fn tree(
    tokens: &[Token],
    mut j: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, usize)>,
) -> usize {
    loop {
        match tokens.get(j).map(|t| &t.tok) {
            Some(Tok::Ident(w)) => {
                // `a::{self}` is `a` itself.
                if w != "self" {
                    prefix.push(w.clone());
                }
                if is(tokens.get(j + 1), &Tok::PathSep) {
                    j += 2;
                    continue;
                }
                out.push((prefix, tokens[j].line));
                return j + 1;
            }
            Some(Tok::Star) => {
                out.push((prefix, tokens[j].line));
                return j + 1;
            }
            Some(Tok::Open) => {
                j += 1;
                loop {
                    match tokens.get(j).map(|t| &t.tok) {
                        None => return j,
                        Some(Tok::Close) => return j + 1,
                        Some(Tok::Comma) => j += 1,
                        Some(_) => {
                            j = tree(tokens, j, prefix.clone(), out);
                            // Past `as name` (or anything unexpected) to the member's end.
                            let mut nested = 0usize;
                            while let Some(t) = tokens.get(j) {
                                match t.tok {
                                    Tok::Comma | Tok::Close if nested == 0 => break,
                                    Tok::Open => nested += 1,
                                    Tok::Close => nested -= 1,
                                    _ => {}
                                }
                                j += 1;
                            }
                        }
                    }
                }
            }
            // A turbofish or a stray `::`: the path so far is the target.
            _ => {
                if let Some(t) = j.checked_sub(1).and_then(|k| tokens.get(k)) {
                    out.push((prefix, t.line));
                }
                return j;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A source tree in the temp dir, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn new(files: &[(&str, &str)]) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "switchboard-layers-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            for (path, text) in files {
                let path = root.join("src").join(path);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            Self(root)
        }

        fn src(&self) -> PathBuf {
            self.0.join("src")
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The 1-based line of the only line containing `marker`, so tests need no hand counting.
    fn line_of(text: &str, marker: &str) -> usize {
        let hits: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(marker))
            .map(|(n, _)| n + 1)
            .collect();
        assert_eq!(hits.len(), 1, "marker {marker} must be on exactly one line");
        hits[0]
    }

    fn v(file: &str, line: usize, from: &str, to: &str, kind: Kind) -> Violation {
        Violation {
            file: file.into(),
            line,
            from: from.into(),
            to: to.into(),
            kind,
        }
    }

    const TABLE: &[Layer] = &[
        Layer {
            module: "lib",
            layer: 0,
        },
        Layer {
            module: "http",
            layer: 1,
        },
        Layer {
            module: "http::api",
            layer: 2,
        },
        Layer {
            module: "http::x2go",
            layer: 2,
        },
        Layer {
            module: "engine",
            layer: 3,
        },
        Layer {
            module: "metrics",
            layer: 4,
        },
    ];

    const LIB: &str = "\
//! The crate; see [`crate::engine`].
pub mod engine;
pub mod http;
pub mod metrics;
pub mod probe;
use crate::engine::Engine;
pub struct Config;
pub fn lock() {}
";

    const HTTP: &str = "\
pub mod api;
pub mod x2go;
use super::engine::run; // from a mod.rs, super is the crate root: engine, allowed
use crate::probe::Probe; // probe is reported as a file, not as an edge into lib
pub struct Router;
fn f() -> super::Config { // MARK-http-root
    todo!()
}
";

    const API: &str = "\
use super::x2go::Thing; // MARK-sibling
use crate::{
    engine,
    http::Router, // MARK-group
};
use crate::http::Router as Again; // the same edge again: reported once, at its first line
pub fn hosts() {
    crate::metrics::record(1);
}
#[cfg(test)]
mod tests {
    use super::*;
    use super::hosts as h;
}
";

    const X2GO: &str = "\
use crate::engine::{self, Engine};
pub struct Thing;
fn f() { crate::metrics::record(2); let _ = engine::Engine; }
";

    const ENGINE: &str = "\
use crate::metrics;
pub struct Engine;
pub fn run() { metrics::record(3); }
mod inner {
    mod deeper {
        use super::super::Engine;
    }
}
";

    const METRICS: &str = r###"
// crate::engine in a line comment
/// crate::engine in a doc comment
/* crate::engine in a block /* nested crate::engine */
   comment that spans lines */
pub fn record(n: u32) {
    let _ = "crate::engine in a string";
    let _ = "a string over
lines with crate::engine and \" an escaped quote";
    let _ = r#"crate::engine "quoted" in a raw string"#;
    let _ = b"crate::engine";
    let _ = ('"', '\'', '{', b'}');
    let _: &'static str = "";
    'outer: loop { break 'outer; }
    crate::engine::tick(n); // MARK-upward
}
"###;

    const PROBE: &str = "use crate::engine::Engine;\n";

    #[test]
    fn reports_each_bad_edge_once_and_nothing_else() {
        let tree = Tree::new(&[
            ("lib.rs", LIB),
            ("http/mod.rs", HTTP),
            ("http/api.rs", API),
            ("http/x2go.rs", X2GO),
            ("engine.rs", ENGINE),
            ("metrics.rs", METRICS),
            ("probe.rs", PROBE),
        ]);
        let got = check(tree.src(), TABLE).unwrap();
        let want = vec![
            v(
                "src/http/api.rs",
                line_of(API, "MARK-sibling"),
                "http::api",
                "http::x2go",
                Kind::Sibling { layer: 2 },
            ),
            v(
                "src/http/api.rs",
                line_of(API, "MARK-group"),
                "http::api",
                "http",
                Kind::Upward {
                    from_layer: 2,
                    to_layer: 1,
                },
            ),
            v(
                "src/http/mod.rs",
                line_of(HTTP, "MARK-http-root"),
                "http",
                "lib",
                Kind::Upward {
                    from_layer: 1,
                    to_layer: 0,
                },
            ),
            v(
                "src/metrics.rs",
                line_of(METRICS, "MARK-upward"),
                "metrics",
                "engine",
                Kind::Upward {
                    from_layer: 4,
                    to_layer: 3,
                },
            ),
            v("src/probe.rs", 1, "probe", "", Kind::UnknownModule),
        ];
        assert_eq!(got, want);
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown[3],
            format!(
                "src/metrics.rs:{}: metrics -> engine: upward edge (layer 4 imports layer 3)",
                line_of(METRICS, "MARK-upward")
            )
        );
        assert_eq!(
            shown[0],
            "src/http/api.rs:1: http::api -> http::x2go: sibling edge (both in layer 2)"
        );
        assert_eq!(
            shown[4],
            "src/probe.rs:1: module probe is not in the layer table"
        );
    }

    #[test]
    fn a_file_belongs_to_its_longest_entry() {
        let tree = Tree::new(&[
            ("lib.rs", ""),
            ("http/mod.rs", ""),
            ("http/api/mod.rs", ""),
            (
                "http/api/hosts.rs",
                "use crate::engine::Engine;\nuse crate::http::x2go::T;\n",
            ),
            ("http/x2go.rs", ""),
            ("engine.rs", ""),
            ("metrics.rs", ""),
        ]);
        let table = &[
            Layer {
                module: "lib",
                layer: 0,
            },
            Layer {
                module: "http",
                layer: 1,
            },
            Layer {
                module: "http::api",
                layer: 5,
            },
            Layer {
                module: "engine",
                layer: 3,
            },
            Layer {
                module: "metrics",
                layer: 4,
            },
        ];
        // http::x2go falls to http; http::api::hosts to http::api.
        let got = check(tree.src(), table).unwrap();
        assert_eq!(
            got,
            vec![
                v(
                    "src/http/api/hosts.rs",
                    1,
                    "http::api",
                    "engine",
                    Kind::Upward {
                        from_layer: 5,
                        to_layer: 3
                    }
                ),
                v(
                    "src/http/api/hosts.rs",
                    2,
                    "http::api",
                    "http",
                    Kind::Upward {
                        from_layer: 5,
                        to_layer: 1
                    }
                ),
            ]
        );
    }

    fn paths_of(code: &str, file: &[&str]) -> Vec<(String, usize)> {
        let file: Vec<String> = file.iter().map(|s| s.to_string()).collect();
        targets(&lex(code), &file)
            .into_iter()
            .map(|(p, l)| (p.join("::"), l))
            .collect()
    }

    #[test]
    fn reads_use_trees_and_inline_paths() {
        let got = paths_of(
            "use crate::a::{self, B as C, b::{c, d::*}};\n\
             let x = crate::m::f::<u8>(crate::n::G);\n\
             pub(in crate::vis) fn f() {}\n\
             pub(crate) fn g() { self::h(); $crate::mac::x!(); }\n\
             use super::super::up;\n",
            &["p", "q", "r"],
        );
        let want = [
            ("a", 1),
            ("a::B", 1),
            ("a::b::c", 1),
            ("a::b::d", 1),
            ("m::f", 2),
            ("n::G", 2),
            ("mac::x", 4),
            ("p::up", 5),
        ];
        assert_eq!(got, want.map(|(p, l)| (p.to_string(), l)));
    }

    #[test]
    fn super_in_inline_modules_and_mod_rs() {
        let code =
            "mod tests {\n use super::*;\n mod deep { use super::super::X; }\n}\nuse super::Y;\n";
        // The file src/a/b.rs: module a::b.
        assert_eq!(
            paths_of(code, &["a", "b"]),
            [
                ("a::b".to_string(), 2),
                ("a::b::X".to_string(), 3),
                ("a::Y".to_string(), 5)
            ]
        );
        // From the crate root, `super` has nowhere to go.
        assert_eq!(paths_of("use super::Y;", &[]), Vec::new());
        let module = file_module(Path::new("a/mod.rs")).unwrap();
        assert_eq!((module.name.as_str(), module.root), ("a", false));
        let module = file_module(Path::new("lib.rs")).unwrap();
        assert_eq!(
            (module.name.as_str(), module.root, module.segments.len()),
            ("lib", true, 0)
        );
        assert_eq!(file_module(Path::new("a/b.rs")).unwrap().name, "a::b");
    }

    #[test]
    fn literals_and_comments_hide_paths_but_keep_lines() {
        let code = "/* a /* b */ crate::x\n */ 'a'; '\\u{7b}'; r##\"crate::y\"#\n\"##;\n\
                    \"\\\n\"; br#\"\"#; fn f<'a>(_: &'a u8) {} let r#fn = 1; crate::z; crate::ok";
        assert_eq!(
            paths_of(code, &[]),
            [("z".to_string(), 5), ("ok".to_string(), 5)]
        );
    }
}
