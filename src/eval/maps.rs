//! Scores anomaly maps saved on disk (any method's), in the MVTec AD evaluation layout
//! `DIR/<class>/test/<defect>/<stem>.tiff`: single-channel float32 TIFFs, as the MVTec AD
//! evaluation code reads them.
//!
//! The image score is the map's maximum unless a `scores*.csv` (columns `path`, `score`) is
//! in `DIR/<class>/` or `DIR/`; its paths are relative to the CSV's folder and name the
//! map with or without its extension (`test/crack/000.tiff`, `bottle/test/crack/000`).
//! Masks are resized (nearest) to the map size when they differ.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::EvalError;
use super::csv::{Table, field};
use super::dataset::{Dataset, Mask, Sample};
use super::metrics::{ImageMetrics, PixelMetrics, PixelMetricsAccumulator};
use crate::detect::export::{read_map_tiff, write_atomic, write_map_tiff};
use crate::detect::maps::Grid;

/// The metrics of one class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    /// Number of test images.
    pub images: usize,
    pub image: ImageMetrics,
    /// `None` when some anomalous image has no mask (a class without ground-truth masks).
    pub pixel: Option<PixelMetrics>,
}

/// Where the map of `sample` lies under `maps_dir`: `<class>/test/<defect>/<stem>.tiff`.
pub fn map_path(maps_dir: &Path, class: &str, sample: &Sample) -> PathBuf {
    let stem = sample
        .image
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy();
    maps_dir
        .join(class)
        .join("test")
        .join(&sample.defect)
        .join(format!("{stem}.tiff"))
}

/// A map path without its `.tiff` / `.tif` extension (the key of `scores.csv` rows).
fn without_tiff_extension(path: PathBuf) -> PathBuf {
    let is_tiff = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("tiff") || e.eq_ignore_ascii_case("tif"));
    if is_tiff {
        path.with_extension("")
    } else {
        path
    }
}

/// Maps an evaluation saves for `--maps` to score later (one shard's part of a dataset,
/// or a run kept for comparison): `DIR/<class>/test/<defect>/<stem>.tiff` and, per
/// class, a scores file (`scores.csv`, or one per shard) with the image scores.
pub struct SavedMaps {
    dir: PathBuf,
    scores_file: String,
    /// Per class: map path relative to `DIR/<class>/`, without extension, and score.
    scores: BTreeMap<String, BTreeMap<String, f32>>,
}

impl SavedMaps {
    /// Refuses a folder where a scores file of this name already is for one of
    /// `classes` (an earlier run's: its maps would be silently replaced).
    pub fn new(dir: &Path, scores_file: String, classes: &[String]) -> Result<Self, EvalError> {
        if dir.exists() && !dir.is_dir() {
            return Err(EvalError::Write { path: dir.to_owned(), reason: "it is a file, not a folder: choose a folder".into() });
        }
        for class in classes {
            let existing = dir.join(class).join(&scores_file);
            if existing.exists() {
                return Err(EvalError::Write {
                    path: existing,
                    reason: "an earlier run's scores are there; remove them with their maps, or choose another folder".into(),
                });
            }
        }
        Ok(Self { dir: dir.to_owned(), scores_file, scores: BTreeMap::new() })
    }

    /// Writes `sample`'s map now; its score goes into the scores file at [`Self::finish`].
    pub fn save(&mut self, class: &str, sample: &Sample, score: f32, map: &Grid) -> Result<(), EvalError> {
        let path = map_path(&self.dir, class, sample);
        write_map_tiff(&path, map)?;
        let key = without_tiff_extension(path);
        let relative = key.strip_prefix(self.dir.join(class)).unwrap_or(&key);
        let relative = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        self.scores.entry(class.to_owned()).or_default().insert(relative, score);
        Ok(())
    }

    /// Writes each class's scores file; returns how many maps were saved.
    pub fn finish(self) -> Result<usize, EvalError> {
        let mut saved = 0;
        for (class, rows) in &self.scores {
            let mut csv = String::from("path,score\n");
            for (path, score) in rows {
                csv.push_str(&format!("{},{score}\n", field(path)));
            }
            let path = self.dir.join(class).join(&self.scores_file);
            write_atomic(&path, csv.as_bytes())?;
            saved += rows.len();
        }
        Ok(saved)
    }
}

/// Image and pixel metrics of `class` from the maps under `maps_dir`.
pub fn score_class_maps(
    dataset: &Dataset,
    class: &str,
    maps_dir: &Path,
) -> Result<ClassMetrics, EvalError> {
    let samples = dataset.test_samples(class)?;
    let csv_scores = read_scores_csv(maps_dir, class)?;
    evaluate_class(class, &samples, |sample| {
        let path = map_path(maps_dir, class, sample);
        let map = read_map_tiff(&path).map_err(|e| EvalError::Image {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let score = csv_scores.get(&without_tiff_extension(path)).copied().unwrap_or_else(|| map.max());
        Ok((score, map))
    })
}

/// Image and pixel metrics of `class` from `score`, which gives each test sample's
/// image score and anomaly map (any size: masks are resized to it). Maps are
/// consumed one at a time, so memory stays bounded (see [`PixelMetricsAccumulator`]).
pub fn evaluate_class(
    class: &str,
    samples: &[Sample],
    mut score: impl FnMut(&Sample) -> Result<(f32, Grid), EvalError>,
) -> Result<ClassMetrics, EvalError> {
    let with_pixels = samples.iter().all(|s| !s.label || s.mask.is_some());
    let mut pixels = with_pixels.then(PixelMetricsAccumulator::new);
    let mut scores = Vec::with_capacity(samples.len());
    for sample in samples {
        let (image_score, map) = score(sample)?;
        scores.push(image_score);
        if let Some(acc) = pixels.as_mut() {
            let mask = match &sample.mask {
                Some(mask) => Mask::load_resized(mask, map.width, map.height)?,
                None => Mask::empty(map.width, map.height),
            };
            acc.add(&map.values, &mask.pixels, map.width, map.height)?;
        }
    }
    let labels: Vec<bool> = samples.iter().map(|s| s.label).collect();
    Ok(ClassMetrics {
        class: class.to_owned(),
        images: samples.len(),
        image: ImageMetrics::compute(&scores, &labels)?,
        pixel: pixels.map(PixelMetricsAccumulator::finish).transpose()?,
    })
}

/// Image scores from the `scores*.csv` files (`alfa detect` writes `scores.csv`, and
/// `scores-shard-I-of-N.csv` per shard) in `maps_dir/<class>/` or `maps_dir/`, keyed by
/// the map path without extension; empty when there is no such file.
fn read_scores_csv(maps_dir: &Path, class: &str) -> Result<HashMap<PathBuf, f32>, EvalError> {
    let mut scores = HashMap::new();
    for dir in [maps_dir.join(class), maps_dir.to_owned()] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.starts_with("scores") && name.ends_with(".csv") && p.is_file()
            })
            .collect();
        files.sort();
        for path in files {
            let csv_error = |line: usize, reason: String| EvalError::Csv { path: path.clone(), line, reason };
            let table = Table::read(&path)?;
            let (Some(map_column), Some(score_column)) = (table.column("path"), table.column("score")) else {
                return Err(csv_error(1, "expected the columns path and score".into()));
            };
            for (line, record) in &table.rows {
                let (Some(map), Some(score)) = (record.get(map_column), record.get(score_column)) else {
                    return Err(csv_error(*line, format!("expected {} columns", table.header.len())));
                };
                let score: f32 =
                    score.parse().map_err(|_| csv_error(*line, format!("score `{score}` is not a number")))?;
                scores.entry(without_tiff_extension(dir.join(map))).or_insert(score);
            }
        }
    }
    Ok(scores)
}
