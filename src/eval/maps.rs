//! Scores anomaly maps saved on disk (any method's), in the MVTec AD evaluation layout
//! `DIR/<class>/test/<defect>/<stem>.tiff`: single-channel float32 TIFFs, as the MVTec AD
//! evaluation code reads them.
//!
//! The image score is the map's maximum unless a `scores.csv` (columns `path,score`) is
//! in `DIR/<class>/` or `DIR/`; its paths are relative to the CSV's folder and name the
//! map with or without its extension (`test/crack/000.tiff`, `bottle/test/crack/000`).
//! Masks are resized (nearest) to the map size when they differ.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use super::EvalError;
use super::dataset::{Dataset, Mask, Sample};
use super::metrics::{ImageMetrics, PixelMetrics, PixelMetricsAccumulator};

/// The metrics of one class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    /// Number of test images.
    pub images: usize,
    pub image: ImageMetrics,
    /// `None` when some anomalous image has no mask (a folder dataset without `masks/`).
    pub pixel: Option<PixelMetrics>,
}

/// A row-major float map read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMap {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
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

/// Image and pixel metrics of `class` from the maps under `maps_dir`.
pub fn score_class_maps(
    dataset: &Dataset,
    class: &str,
    maps_dir: &Path,
) -> Result<ClassMetrics, EvalError> {
    let samples = dataset.test_samples(class)?;
    let csv_scores = read_scores_csv(maps_dir, class)?;
    let with_pixels = samples.iter().all(|s| !s.label || s.mask.is_some());
    let mut pixels = with_pixels.then(PixelMetricsAccumulator::new);
    let mut scores = Vec::with_capacity(samples.len());
    for sample in &samples {
        let path = map_path(maps_dir, class, sample);
        let map = read_tiff_map(&path)?;
        let max_score = map.values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scores.push(
            csv_scores
                .get(&without_tiff_extension(path.clone()))
                .copied()
                .unwrap_or(max_score),
        );
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

/// Reads a single-channel float TIFF (32-bit; 64-bit is narrowed to 32).
pub fn read_tiff_map(path: &Path) -> Result<ScoreMap, EvalError> {
    let image_error = |reason: String| EvalError::Image {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(|source| EvalError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut decoder = tiff::decoder::Decoder::new(BufReader::new(file))
        .map_err(|e| image_error(e.to_string()))?;
    let (width, height) = decoder
        .dimensions()
        .map_err(|e| image_error(e.to_string()))?;
    let colour = decoder
        .colortype()
        .map_err(|e| image_error(e.to_string()))?;
    if !matches!(colour, tiff::ColorType::Gray(_)) {
        return Err(image_error(format!(
            "an anomaly map must be single-channel float, this TIFF is {colour:?}"
        )));
    }
    let values = match decoder
        .read_image()
        .map_err(|e| image_error(e.to_string()))?
    {
        tiff::decoder::DecodingResult::F32(v) => v,
        tiff::decoder::DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        _ => {
            return Err(image_error(
                "an anomaly map must hold float samples, this TIFF holds integers".into(),
            ));
        }
    };
    Ok(ScoreMap {
        width: width as usize,
        height: height as usize,
        values,
    })
}

/// Image scores from `scores.csv` in `maps_dir/<class>/` or `maps_dir/`, keyed by the
/// map path without extension; empty when there is no such file.
fn read_scores_csv(maps_dir: &Path, class: &str) -> Result<HashMap<PathBuf, f32>, EvalError> {
    let mut scores = HashMap::new();
    for dir in [maps_dir.join(class), maps_dir.to_owned()] {
        let path = dir.join("scores.csv");
        if !path.is_file() {
            continue;
        }
        let csv_error = |line: u64, reason: String| EvalError::Csv {
            path: path.clone(),
            line: line as usize,
            reason,
        };
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(&path)
            .map_err(|e| csv_error(1, e.to_string()))?;
        for record in reader.records() {
            let record = record
                .map_err(|e| csv_error(e.position().map_or(0, |p| p.line()), e.to_string()))?;
            let line = record.position().map_or(0, |p| p.line());
            let (Some(map), Some(score)) = (record.get(0), record.get(1)) else {
                return Err(csv_error(line, "expected two columns: path,score".into()));
            };
            let score: f32 = score
                .parse()
                .map_err(|_| csv_error(line, format!("score `{score}` is not a number")))?;
            scores
                .entry(without_tiff_extension(dir.join(map)))
                .or_insert(score);
        }
    }
    Ok(scores)
}
