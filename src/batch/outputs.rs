//! The files a batch writes: per image `<stem>.tiff` (the map), `<stem>_overlay.png`
//! and `<stem>.json` (the record, written last, so its presence means the image is
//! done), and per run `scores.csv`, `summary.json` and `report.html`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::BatchError;
use crate::detect::inputs::InputImage;
use crate::detect::threshold::Verdict;
use crate::eval::csv::{Table, field};
use crate::files::write_atomic;

/// The outputs of one image.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub map: PathBuf,
    pub overlay: PathBuf,
    pub record: PathBuf,
}

impl Outputs {
    pub fn of(out: &Path, image: &InputImage) -> Self {
        let with_suffix = |suffix: &str| {
            let mut name = image.output_stem.as_os_str().to_owned();
            name.push(suffix);
            out.join(name)
        };
        Self { map: with_suffix(".tiff"), overlay: with_suffix("_overlay.png"), record: with_suffix(".json") }
    }

    pub fn all(&self) -> [&Path; 3] {
        [&self.map, &self.overlay, &self.record]
    }

    /// The record of an image a previous run finished: all three files are there and
    /// the record (written last, atomically) parses. `None` when any is missing.
    pub fn finished(&self) -> Result<Option<serde_json::Value>, BatchError> {
        if !self.all().iter().all(|p| p.is_file()) {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&self.record).map_err(|e| BatchError::io(&self.record, e))?;
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(record) if record.get("image_score").is_some_and(serde_json::Value::is_number) => Ok(Some(record)),
            _ => Ok(None),
        }
    }
}

/// Creates `out` and checks that files can be written in it, so that a wrong output
/// folder is refused before the model is downloaded and loaded, not after every
/// image failed. The folders it created are removed again if they are still empty
/// when the returned guard is dropped (a run refused later, e.g. for its model or
/// precision, leaves no empty folder behind), unless [`OutputFolder::keep`] is called.
pub fn prepare_output_folder(out: &Path) -> Result<OutputFolder, BatchError> {
    if out.exists() && !out.is_dir() {
        return Err(BatchError::Invalid(format!(
            "the output folder {} is a file, not a folder: pass a folder (it is created if needed)",
            out.display()
        )));
    }
    let created: Vec<PathBuf> = out.ancestors().take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists()).map(Path::to_owned).collect();
    let folder = OutputFolder { created };
    std::fs::create_dir_all(out).map_err(|e| {
        BatchError::Invalid(format!("cannot create the output folder {}: {e} (choose another folder)", out.display()))
    })?;
    tempfile::NamedTempFile::new_in(out)
        .map_err(|e| BatchError::Output { path: out.to_owned(), reason: format!("cannot write files there: {e}") })?;
    Ok(folder)
}

/// The folders [`prepare_output_folder`] created, deepest first: on drop, each is
/// removed while it is empty (`remove_dir` never removes anything else).
#[derive(Debug)]
pub struct OutputFolder {
    created: Vec<PathBuf>,
}

impl OutputFolder {
    /// Leaves the folders in place, empty or not (a watch writes into its folder later).
    pub fn keep(mut self) {
        self.created.clear();
    }
}

impl Drop for OutputFolder {
    fn drop(&mut self) {
        for dir in &self.created {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
}

/// One row of `scores.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    pub score: f32,
    pub verdict: Option<Verdict>,
}

/// `scores.csv` (`path,score,verdict`; paths relative to the output folder, as `alfa
/// eval --maps` reads them): `rows` replace rows for the same maps, others (from
/// earlier runs into the same folder) stay.
pub fn merge_scores(path: &Path, rows: BTreeMap<String, ScoreRow>) -> Result<(), BatchError> {
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    if path.is_file() {
        let table = Table::read(path).map_err(|e| BatchError::io(path, e))?;
        let (Some(p), Some(s)) = (table.column("path"), table.column("score")) else {
            return Err(BatchError::io(path, "no `path` and `score` columns: move the file away or choose another output folder"));
        };
        let v = table.column("verdict");
        for (_, row) in &table.rows {
            let cell = |i: Option<usize>| i.and_then(|i| row.get(i)).map_or("", String::as_str);
            lines.insert(cell(Some(p)).to_owned(), format!("{},{}", cell(Some(s)), cell(v)));
        }
    }
    for (p, row) in rows {
        lines.insert(p, format!("{},{}", row.score, row.verdict.map(Verdict::label).unwrap_or_default()));
    }
    let mut csv = String::from("path,score,verdict\n");
    for (p, rest) in lines {
        csv.push_str(&format!("{},{rest}\n", field(&p)));
    }
    write_atomic(path, csv.as_bytes()).map_err(|e| BatchError::write(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_merge_with_earlier_runs_and_keep_their_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores.csv");
        std::fs::write(&path, "path,score\nold/a,0.25\nb,0.5\n").unwrap();
        let rows = BTreeMap::from([
            ("b".to_owned(), ScoreRow { score: 0.75, verdict: Some(Verdict::Ng) }),
            ("c,1".to_owned(), ScoreRow { score: 0.125, verdict: Some(Verdict::Ok) }),
        ]);
        merge_scores(&path, rows).unwrap();
        let expected = "path,score,verdict\nb,0.75,NG\n\"c,1\",0.125,OK\nold/a,0.25,\n";
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
        merge_scores(&path, BTreeMap::new()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), expected, "a second merge reads the quoted path back");
    }

    #[test]
    fn only_complete_outputs_count_as_finished() {
        let dir = tempfile::tempdir().unwrap();
        let image = InputImage { path: "x.png".into(), output_stem: "x".into(), class: None };
        let outputs = Outputs::of(dir.path(), &image);
        std::fs::write(&outputs.map, b"tiff").unwrap();
        std::fs::write(&outputs.record, br#"{"image_score": 0.5}"#).unwrap();
        assert!(outputs.finished().unwrap().is_none(), "the overlay is missing");
        std::fs::write(&outputs.overlay, b"png").unwrap();
        assert_eq!(outputs.finished().unwrap().unwrap()["image_score"], 0.5);
        std::fs::write(&outputs.record, br#"{"image_sc"#).unwrap();
        assert!(outputs.finished().unwrap().is_none(), "a cut record is not finished");
    }
}
