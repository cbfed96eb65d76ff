//! File positions for configuration errors that TOML parsing alone does not
//! place: a value out of range or malformed (found after parsing, so it
//! names its key but not where it is), and a line the TOML lexer cannot
//! read (whose message names neither the key nor the fix).

use super::ConfigError;

/// `error` from reading `text` (named `source`), with the position of the
/// key it names when that key is in the file, as `FILE:LINE:COLUMN`.
/// Errors about command-line flags and those without a key stay as they
/// are.
pub(super) fn locate(error: ConfigError, text: &str, source: &str) -> ConfigError {
    let ConfigError::Invalid { message } = error else { return error };
    match key_path(&message).and_then(|path| value_offset(text, path)) {
        Some(offset) => {
            let (line, column) = line_column(text, offset);
            ConfigError::Parse { location: format!("{source}:{line}:{column}"), message }
        }
        None => ConfigError::Invalid { message },
    }
}

/// The key path an `Invalid` message starts with (`limits.max_inflight`
/// in `limits.max_inflight = 0: must be ...`, `listener[1].bind`).
fn key_path(message: &str) -> Option<&str> {
    let end = message.find([' ', ':']).unwrap_or(message.len());
    let path = &message[..end];
    let is_key = |c: char| c.is_ascii_alphanumeric() || "_.[]".contains(c);
    (!path.is_empty() && !path.starts_with('-') && path.chars().all(is_key)).then_some(path)
}

/// The byte offset of the value of `path` (`a.b[2].c`) in `text`.
fn value_offset(text: &str, path: &str) -> Option<usize> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = document.as_item();
    for segment in path.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, index)) => (name, Some(index.trim_end_matches(']').parse::<usize>().ok()?)),
            None => (segment, None),
        };
        item = item.get(name)?;
        if let Some(index) = index {
            item = item.get(index)?;
        }
    }
    item.span().map(|span| span.start)
}

/// For a TOML syntax error at `offset`: the key written on that line, with
/// the table it is in (`limits.max_inflight`), if the line has `KEY =`.
pub(super) fn key_on_line(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |at| at + 1);
    let line = text[start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    let is_key = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
    if key.is_empty() || !key.chars().all(is_key) {
        return None;
    }
    let table = text[..start].lines().rev().map(str::trim).find(|l| l.starts_with('['));
    let table = table.map(|header| header.trim_matches(['[', ']']).trim());
    Some(match table {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key.to_owned(),
    })
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn located(text: &str) -> String {
        let error = Config::from_toml(text, "f.toml", &Overrides::default()).unwrap_err();
        locate(error, text, "f.toml").to_string()
    }

    #[test]
    fn a_value_out_of_range_is_given_its_line_and_column() {
        assert_eq!(
            located("shards = 999\n"),
            "config error: f.toml:1:10: shards = 999: must be between 0 and 256 (0 = one shard \
             per core)"
        );
        assert_eq!(
            located("# limits\n[limits]\n  max_inflight = 0\n"),
            "config error: f.toml:3:18: limits.max_inflight = 0: must be between 1 and 65535"
        );
        let listeners = "[[listener]]\nbind = \"127.0.0.1:1\"\n[[listener]]\nbind = \"1.2.3\"\n";
        assert!(located(listeners).starts_with("config error: f.toml:4:8: listener[1].bind"));
    }

    #[test]
    fn errors_about_flags_or_without_a_key_keep_their_words() {
        let overrides = Overrides { shards: Some(999), ..Overrides::default() };
        let error = Config::from_toml("", "f.toml", &overrides).unwrap_err();
        let message = error.to_string();
        assert_eq!(locate(error, "", "f.toml").to_string(), message);
        assert_eq!(key_path("--shards 999: no"), None);
    }

    #[test]
    fn a_line_without_a_value_names_its_key() {
        let text = "shards = 2\n[limits]\nmax_inflight = \n";
        assert_eq!(key_on_line(text, text.len() - 1).as_deref(), Some("limits.max_inflight"));
        assert_eq!(key_on_line("shards = \n", 9).as_deref(), Some("shards"));
        assert_eq!(key_on_line("[limits\n", 7), None);
    }
}
