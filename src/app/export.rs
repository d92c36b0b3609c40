//! Exports: the overlay as PNG, the raw map as float32 TIFF, the thresholded mask
//! as PNG, and the scores of the whole list as CSV and JSON.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, RgbaImage};
use serde::Serialize;

use super::state::{AppState, Verdict};
use crate::detect::export::{ExportError, OverlayStyle, render_overlay, threshold_mask, write_atomic, write_map_tiff, write_png};
use crate::detect::maps::Grid;

/// One row of the score table.
#[derive(Debug, Serialize)]
pub struct ScoreRow {
    pub file: String,
    pub name: String,
    pub image_score: Option<f32>,
    pub global_score: Option<f32>,
    pub local_max: Option<f32>,
    pub verdict: Option<&'static str>,
    pub error: Option<String>,
}

/// The scores of the whole list, taken from the state so another thread can write them.
#[derive(Debug, Serialize)]
pub struct ScoreTable {
    pub class: String,
    pub threshold: f32,
    pub images: Vec<ScoreRow>,
}

impl ScoreTable {
    pub fn from_state(state: &AppState) -> Self {
        let images = state
            .entries
            .iter()
            .map(|e| {
                let d = e.analysis.as_ref().map(|a| &a.detection);
                ScoreRow {
                    file: e.path.display().to_string(),
                    name: e.name.clone(),
                    image_score: d.map(|d| d.image_score),
                    global_score: d.map(|d| d.global_score),
                    local_max: d.map(|d| d.local_max),
                    verdict: d.map(|d| Verdict::of(d.image_score, state.settings.threshold).label()),
                    error: e.error.clone(),
                }
            })
            .collect();
        Self { class: state.settings.class.clone(), threshold: state.settings.threshold, images }
    }

    /// `scores.csv` and `scores.json` in `dir`; returns both paths.
    pub fn write(&self, dir: &Path) -> Result<[PathBuf; 2], ExportError> {
        let csv_path = dir.join("scores.csv");
        let mut csv = String::from("file,name,image_score,global_score,local_max,verdict,error\n");
        let number = |v: Option<f32>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        for r in &self.images {
            let fields = [
                csv_field(&r.file),
                csv_field(&r.name),
                number(r.image_score),
                number(r.global_score),
                number(r.local_max),
                r.verdict.unwrap_or_default().to_owned(),
                csv_field(r.error.as_deref().unwrap_or_default()),
            ];
            csv.push_str(&fields.join(","));
            csv.push('\n');
        }
        write_atomic(&csv_path, csv.as_bytes())?;
        let json_path = dir.join("scores.json");
        let json = serde_json::to_string_pretty(self).map_err(|e| ExportError::Write {
            path: json_path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&json_path, json.as_bytes())?;
        Ok([csv_path, json_path])
    }
}

/// The selected image's exports.
pub struct ImageExport {
    /// File stem of the image (`003`): outputs are `003_overlay.png` and so on.
    pub stem: String,
    pub image: Arc<RgbaImage>,
    pub map: Arc<Grid>,
    pub style: OverlayStyle,
    pub threshold: f32,
}

/// Everything into `dir`; returns the files written.
pub fn export_all(dir: &Path, scores: &ScoreTable, image: Option<&ImageExport>) -> Result<Vec<PathBuf>, ExportError> {
    let mut written = scores.write(dir)?.to_vec();
    if let Some(x) = image {
        // The same overlay, with its legend, as `alfa detect` writes.
        let overlay_path = dir.join(format!("{}_overlay.png", x.stem));
        let image = DynamicImage::ImageRgba8(RgbaImage::clone(&x.image));
        write_png(&overlay_path, &render_overlay(&image, &x.map, &x.style)?)?;
        let map_path = dir.join(format!("{}_map.tiff", x.stem));
        write_map_tiff(&map_path, &x.map)?;
        let mask_path = dir.join(format!("{}_mask.png", x.stem));
        write_png(&mask_path, &threshold_mask(&x.map, x.threshold))?;
        written.extend([overlay_path, map_path, mask_path]);
    }
    Ok(written)
}

/// RFC 4180 quoting when needed.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_with_commas_are_quoted() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn export_all_writes_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let map = Arc::new(Grid::new(3, 2, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]));
        let export = ImageExport {
            stem: "part".into(),
            image: Arc::new(RgbaImage::new(3, 2)),
            map: map.clone(),
            style: OverlayStyle::default(),
            threshold: 0.5,
        };
        let scores = ScoreTable { class: "bottle".into(), threshold: 0.5, images: Vec::new() };
        let written = export_all(dir.path(), &scores, Some(&export)).unwrap();
        assert_eq!(written.len(), 5);
        assert!(written.iter().all(|p| p.is_file()));
        let tiff = crate::detect::export::read_map_tiff(&dir.path().join("part_map.tiff")).unwrap();
        assert_eq!(&tiff, map.as_ref());
    }
}
