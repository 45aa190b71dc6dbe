//! Configuration diagnostics: errors and warnings that each name the file, the 1-based line of
//! the offending value and the key path (`peer[2].allowed_ips`), plus the collector the parsers
//! push them into so that one pass reports everything it finds.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// One problem that makes a configuration unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line of the offending value; `None` when the problem belongs to the whole file
    /// (a missing section, a file that cannot be read).
    pub line: Option<usize>,
    /// Key path such as `interface.mtu` or `peer[2].allowed_ips` (`peer[N]` counts `[[peer]]`
    /// blocks from 1); empty when no key applies.
    pub key: String,
    pub message: String,
}

/// Something accepted but probably not what the user wants (a key file readable by others, a
/// wg-quick setting tandem ignores). Same fields as [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): messages quote values, keys and
/// paths from the configuration (an include pattern, a file name a glob matched), and one of
/// those with a line break must not split an error in two or forge a second one.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_control() {
            f.write_str(text.get(start..i).unwrap_or_default())?;
            write!(f, "{}", c.escape_default())?;
            start = i + c.len_utf8();
        }
    }
    f.write_str(text.get(start..).unwrap_or_default())
}

fn write_located(
    f: &mut fmt::Formatter<'_>,
    file: &Path,
    line: Option<usize>,
    key: &str,
    message: &str,
) -> fmt::Result {
    write_escaped(f, &file.display().to_string())?;
    if let Some(line) = line {
        write!(f, ":{line}")?;
    }
    if !key.is_empty() {
        f.write_str(": ")?;
        write_escaped(f, key)?;
    }
    f.write_str(": ")?;
    write_escaped(f, message)
}

/// `FILE:LINE: KEY: MESSAGE` (the line and key parts are left out when absent).
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_located(f, &self.file, self.line, &self.key, &self.message)
    }
}

impl std::error::Error for ConfigError {}

/// `warning: FILE:LINE: KEY: MESSAGE`.
impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("warning: ")?;
        write_located(f, &self.file, self.line, &self.key, &self.message)
    }
}

/// Every error found in one configuration file, in line order. Never empty when returned by
/// this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One error per line.
impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Maps byte offsets to 1-based line numbers.
pub(crate) struct LineIndex {
    /// Byte offset at which each line starts; line 1 starts at 0.
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        // The number of line starts at or before `offset` is the 1-based line number.
        self.starts.partition_point(|&start| start <= offset).max(1)
    }
}

/// Collects diagnostics for a configuration: its file and the peer files it includes. Each
/// diagnostic is filed under the *current* file ([`Diagnostics::set_file`]).
pub(crate) struct Diagnostics {
    /// The configuration file itself (first in `files`).
    main: PathBuf,
    /// The file diagnostics go to now.
    file: PathBuf,
    /// Every file seen, with its rank in the order reported: the main file, then the
    /// included ones (a map: a fleet may have thousands of peer files).
    files: HashMap<PathBuf, usize>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
    /// Lines that carry a syntax error: the parser's best-effort value there is a guess, so
    /// further complaints about it would only repeat the syntax error in other words.
    syntax_lines: BTreeSet<(PathBuf, usize)>,
    had_syntax_error: bool,
}

impl Diagnostics {
    pub(crate) fn new(file: &Path) -> Self {
        Diagnostics {
            main: file.to_path_buf(),
            file: file.to_path_buf(),
            files: HashMap::from([(file.to_path_buf(), 0)]),
            errors: Vec::new(),
            warnings: Vec::new(),
            syntax_lines: BTreeSet::new(),
            had_syntax_error: false,
        }
    }

    /// The file diagnostics are filed under now.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The configuration file itself (not an included one).
    pub(crate) fn main_file(&self) -> &Path {
        &self.main
    }

    /// Files further diagnostics under `file` (an included file, or the main one again).
    pub(crate) fn set_file(&mut self, file: &Path) {
        if !self.files.contains_key(file) {
            let rank = self.files.len();
            self.files.insert(file.to_path_buf(), rank);
        }
        self.file = file.to_path_buf();
    }

    /// How a place in another file is named from the current one: `line 5` in the same
    /// file, `FILE:5` in another.
    pub(crate) fn place(&self, file: &Path, line: Option<usize>) -> Option<String> {
        match line {
            Some(l) if file == self.file => Some(format!("line {l}")),
            Some(l) => Some(format!("{}:{l}", file.display())),
            None if file != self.file => Some(file.display().to_string()),
            None => None,
        }
    }

    pub(crate) fn syntax(&mut self, line: Option<usize>, message: impl Into<String>) {
        self.had_syntax_error = true;
        if let Some(line) = line {
            self.syntax_lines.insert((self.file.clone(), line));
        }
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            key: "syntax".to_owned(),
            message: message.into(),
        });
    }

    pub(crate) fn error(
        &mut self,
        line: Option<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        if line.is_some_and(|l| self.syntax_lines.contains(&(self.file.clone(), l))) {
            return;
        }
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// A required key or section is absent. Not reported after a syntax error, since the
    /// broken line may be exactly where it was given.
    pub(crate) fn missing(
        &mut self,
        line: Option<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        if !self.had_syntax_error {
            self.error(line, key, message);
        }
    }

    pub(crate) fn warn(
        &mut self,
        line: Option<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.warnings.push(ConfigWarning {
            file: self.file.clone(),
            line,
            key: key.into(),
            message: message.into(),
        });
    }

    /// Errors (if any) or warnings, each sorted by file (the main one first, then the
    /// included ones in the order read) and line; file-wide ones first.
    pub(crate) fn finish(self) -> Result<Vec<ConfigWarning>, ConfigErrors> {
        let Diagnostics {
            mut errors,
            mut warnings,
            files,
            ..
        } = self;
        let rank = |f: &Path| files.get(f).copied().unwrap_or(usize::MAX);
        if errors.is_empty() {
            warnings.sort_by_key(|w| (rank(&w.file), w.line));
            Ok(warnings)
        } else {
            errors.sort_by_key(|e| (rank(&e.file), e.line));
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_formats() {
        let e = ConfigError {
            file: PathBuf::from("/etc/tandem/tnd0.toml"),
            line: Some(7),
            key: "peer[2].allowed_ips".into(),
            message: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/tandem/tnd0.toml:7: peer[2].allowed_ips: bad"
        );
        let w = ConfigWarning {
            file: PathBuf::from("a.conf"),
            line: None,
            key: String::new(),
            message: "hm".into(),
        };
        assert_eq!(w.to_string(), "warning: a.conf: hm");
        let all = ConfigErrors(vec![e.clone(), e]);
        assert_eq!(all.to_string().lines().count(), 2);
    }

    /// Found by the `config_toml` fuzz target: an include pattern with a line break
    /// (`"miss\ng.toml"`) was quoted raw in its error, which then printed as two lines.
    #[test]
    fn values_with_line_breaks_stay_on_one_line() {
        let e = ConfigError {
            file: PathBuf::from("/etc/tandem/peers.d/a\nb.toml"),
            line: Some(4),
            key: "interface.include".into(),
            message: "cannot read included file /etc/tandem/miss\ng.tom-l: No such file".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/tandem/peers.d/a\\nb.toml:4: interface.include: cannot read included file \
             /etc/tandem/miss\\ng.tom-l: No such file"
        );
        let all = ConfigErrors(vec![e.clone(), e]);
        assert_eq!(all.to_string().lines().count(), 2);
        let w = ConfigWarning {
            file: PathBuf::from("a.conf"),
            line: None,
            key: "k\r".into(),
            message: "\u{1b}[31mred".into(),
        };
        assert_eq!(w.to_string(), "warning: a.conf: k\\r: \\u{1b}[31mred");
    }

    #[test]
    fn line_index() {
        let idx = LineIndex::new("a\nbb\n\nc");
        assert_eq!(idx.line_of(0), 1);
        assert_eq!(idx.line_of(1), 1); // the newline belongs to its line
        assert_eq!(idx.line_of(2), 2);
        assert_eq!(idx.line_of(5), 3);
        assert_eq!(idx.line_of(6), 4);
        assert_eq!(idx.line_of(100), 4);
    }
}
