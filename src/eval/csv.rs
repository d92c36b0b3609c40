//! The two CSV files the evaluation reads: VisA's `split_csv/1cls.csv` and the
//! `path,score,verdict` files `alfa detect` writes (with [`field`]). Both are plain
//! tables; double-quoted fields (with `""` for a quote) are accepted, fields spanning lines are not.
//! Hand-written because the `csv` crate switches on serde's `default` feature,
//! which rebuilds every serde user in the tree (candle, wgpu, ...) for two tiny files.

use std::path::Path;

use super::EvalError;

/// A header and the rows after it, each with its 1-based line number.
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    pub fn read(path: &Path) -> Result<Self, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
            path: path.to_owned(),
            source,
        })?;
        let error = |line: usize, reason: String| EvalError::Csv {
            path: path.to_owned(),
            line,
            reason,
        };
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r')));
        let header = match lines.next() {
            Some((n, l)) => split(l).map_err(|r| error(n, r))?,
            None => return Err(error(1, "the file is empty".into())),
        };
        let mut rows = Vec::new();
        for (n, line) in lines.filter(|(_, l)| !l.trim().is_empty()) {
            rows.push((n, split(line).map_err(|r| error(n, r))?));
        }
        Ok(Self { header, rows })
    }

    /// The index of the column named `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }
}

/// `text` as one CSV field: quoted when it holds a comma, a quote or a line break.
pub fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The trimmed fields of one line.
fn split(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (',', false) => fields.push(std::mem::take(&mut field).trim().to_owned()),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    fields.push(field.trim().to_owned());
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_are_quoted() {
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(field("plain"), "plain");
    }

    #[test]
    fn fields_are_split_trimmed_and_unquoted() {
        assert_eq!(split("a, b ,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(split(r#""x, y","say ""hi""",,z"#).unwrap(), ["x, y", r#"say "hi""#, "", "z"]);
        assert!(split(r#""open"#).is_err());
    }

    #[test]
    fn tables_keep_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "path,score\r\nbottle/a.tiff,0.5\r\n\r\nb.tiff,0.25\r\n").unwrap();
        let table = Table::read(&path).unwrap();
        assert_eq!(table.column("score"), Some(1));
        assert_eq!(table.rows, [(2, vec!["bottle/a.tiff".to_owned(), "0.5".to_owned()]), (4, vec!["b.tiff".to_owned(), "0.25".to_owned()])]);
    }
}
