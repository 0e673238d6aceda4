//! The INI dialect of X2Go's session-profiles file (Python `configparser` rules, minus
//! interpolation): `[section]` headers, `key = value` or `key: value` options (keys are
//! lower-cased), `#` and `;` comment lines, indented continuation lines, and a `[DEFAULT]`
//! section whose options every other section inherits. Duplicate sections or options are errors,
//! as in `configparser`'s strict mode. `%` is kept literally.

use super::ProfileError;

/// Largest file accepted.
pub const MAX_FILE: usize = 4 << 20;
/// Longest line accepted.
pub const MAX_LINE: usize = 64 << 10;
/// Most sections accepted.
pub const MAX_SECTIONS: usize = 10_000;

/// One option as written, with the line it started on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Lower-cased key.
    pub key: String,
    /// Value, trimmed; continuation lines joined with `\n`.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// A section as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The name between the brackets, trimmed.
    pub name: String,
    /// 1-based line of the header.
    pub line: usize,
    /// Options in file order.
    pub entries: Vec<Entry>,
}

/// Parses the text into the `[DEFAULT]` entries and the other sections in file order.
pub fn parse(text: &str) -> Result<(Vec<Entry>, Vec<Section>), ProfileError> {
    if text.len() > MAX_FILE {
        return Err(ProfileError::at(
            None,
            format!("the file is larger than {MAX_FILE} bytes"),
        ));
    }
    let mut defaults: Vec<Entry> = Vec::new();
    let mut sections: Vec<Section> = Vec::new();
    // Index into `sections`, or None for [DEFAULT]; outer None before any header.
    let mut current: Option<Option<usize>> = None;
    let mut seen_default = false;
    let mut last_was_option = false;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.len() > MAX_LINE {
            return Err(ProfileError::at(
                Some(n),
                format!("line longer than {MAX_LINE} bytes"),
            ));
        }
        let trimmed = line.trim();
        if trimmed.is_empty() {
            last_was_option = false;
            continue;
        }
        if trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        let indented = line.starts_with([' ', '\t']);
        if indented && last_was_option {
            let entries = match current {
                Some(Some(s)) => &mut sections[s].entries,
                _ => &mut defaults,
            };
            if let Some(e) = entries.last_mut() {
                e.value.push('\n');
                e.value.push_str(trimmed);
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err(ProfileError::at(
                    Some(n),
                    "a section header must end with `]`",
                ));
            };
            let name = name.trim();
            if name.is_empty() {
                return Err(ProfileError::at(Some(n), "empty section name"));
            }
            if name.chars().any(|c| c.is_control()) {
                return Err(ProfileError::at(
                    Some(n),
                    "control characters in a section name",
                ));
            }
            if name == "DEFAULT" {
                if seen_default {
                    return Err(ProfileError::at(Some(n), "section [DEFAULT] appears twice"));
                }
                seen_default = true;
                current = Some(None);
            } else {
                if let Some(s) = sections.iter().find(|s| s.name == name) {
                    return Err(ProfileError::at(
                        Some(n),
                        format!("section [{name}] appears twice (first on line {})", s.line),
                    ));
                }
                if sections.len() >= MAX_SECTIONS {
                    return Err(ProfileError::at(
                        Some(n),
                        format!("more than {MAX_SECTIONS} sections"),
                    ));
                }
                sections.push(Section {
                    name: name.to_owned(),
                    line: n,
                    entries: Vec::new(),
                });
                current = Some(Some(sections.len() - 1));
            }
            last_was_option = false;
            continue;
        }
        let Some(cur) = current else {
            return Err(ProfileError::at(
                Some(n),
                "an option before the first [section] header",
            ));
        };
        let at = trimmed.find(['=', ':']).ok_or_else(|| {
            ProfileError::at(Some(n), "expected `key = value`, a [section] or a comment")
        })?;
        let key = trimmed[..at].trim().to_lowercase();
        let value = trimmed[at + 1..].trim().to_owned();
        if key.is_empty() {
            return Err(ProfileError::at(Some(n), "empty key"));
        }
        let entries = match cur {
            Some(s) => &mut sections[s].entries,
            None => &mut defaults,
        };
        if let Some(e) = entries.iter().find(|e| e.key == key) {
            return Err(ProfileError::at(
                Some(n),
                format!(
                    "key `{key}` appears twice in one section (first on line {})",
                    e.line
                ),
            ));
        }
        entries.push(Entry {
            key,
            value,
            line: n,
        });
        last_was_option = true;
    }
    Ok((defaults, sections))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn configparser_rules() {
        let text = "# comment\n[DEFAULT]\nCommand = XFCE\n\n[a]\nname: A pool\nhost = h1,\n   h2\n; note\n[b]\n";
        let (d, s) = parse(text).unwrap();
        assert_eq!(d[0].key, "command");
        assert_eq!(d[0].value, "XFCE");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].entries[0].value, "A pool");
        assert_eq!(s[0].entries[1].value, "h1,\nh2");
        assert_eq!(s[1].name, "b");
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("key = v\n", 1),
            ("[a]\nx = 1\nx = 2\n", 3),
            ("[a]\n[a]\n", 2),
            ("[a]\njust words\n", 2),
            ("[a\n", 1),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
        }
    }
}
