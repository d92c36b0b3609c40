//! Exports: the overlay as PNG, the raw map as float32 TIFF, the thresholded mask
//! as PNG, and the scores of the whole list as CSV and JSON.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{GrayImage, Luma, Rgba, RgbaImage};
use serde::Serialize;

use super::colormap::Colormap;
use super::state::{AppState, Verdict};
use crate::detect::maps::Grid;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("the map ({map_w}x{map_h}) does not match the image ({image_w}x{image_h})")]
    SizeMismatch { map_w: usize, map_h: usize, image_w: u32, image_h: u32 },
}

fn write_error(path: &Path) -> impl Fn(String) -> ExportError + '_ {
    move |reason| ExportError::Write { path: path.to_owned(), reason }
}

/// How the overlay is coloured (the viewer's settings).
#[derive(Debug, Clone, Copy)]
pub struct OverlayStyle {
    pub colormap: Colormap,
    pub opacity: f32,
    pub low: f32,
    pub high: f32,
}

/// The image with the colour-mapped map blended over it, as the viewer shows it.
pub fn overlay(image: &RgbaImage, map: &Grid, style: OverlayStyle) -> Result<RgbaImage, ExportError> {
    check_size(image, map)?;
    let span = (style.high - style.low).max(1e-6);
    Ok(RgbaImage::from_fn(image.width(), image.height(), |x, y| {
        let Rgba([r, g, b, a]) = *image.get_pixel(x, y);
        let t = (map.at(x as usize, y as usize) - style.low) / span;
        let heat = style.colormap.rgb(t);
        let mix = |base: u8, hot: f32| {
            let v = base as f32 / 255.0 * (1.0 - style.opacity) + hot * style.opacity;
            (v * 255.0).round().clamp(0.0, 255.0) as u8
        };
        Rgba([mix(r, heat[0]), mix(g, heat[1]), mix(b, heat[2]), a])
    }))
}

fn check_size(image: &RgbaImage, map: &Grid) -> Result<(), ExportError> {
    if (map.width as u32, map.height as u32) != image.dimensions() {
        return Err(ExportError::SizeMismatch {
            map_w: map.width,
            map_h: map.height,
            image_w: image.width(),
            image_h: image.height(),
        });
    }
    Ok(())
}

/// 255 where the map is at or above the threshold.
pub fn threshold_mask(map: &Grid, threshold: f32) -> GrayImage {
    GrayImage::from_fn(map.width as u32, map.height as u32, |x, y| {
        Luma([if map.at(x as usize, y as usize) >= threshold { 255 } else { 0 }])
    })
}

/// The raw map as a one-channel float32 TIFF.
pub fn write_map_tiff(map: &Grid, path: &Path) -> Result<(), ExportError> {
    let err = write_error(path);
    let file = std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let mut encoder = tiff::encoder::TiffEncoder::new(std::io::BufWriter::new(file)).map_err(|e| err(e.to_string()))?;
    encoder
        .write_image::<tiff::encoder::colortype::Gray32Float>(map.width as u32, map.height as u32, &map.values)
        .map_err(|e| err(e.to_string()))
}

pub fn write_png<P: image::PixelWithColorType>(
    image: &image::ImageBuffer<P, Vec<P::Subpixel>>,
    path: &Path,
) -> Result<(), ExportError>
where
    [P::Subpixel]: image::EncodableLayout,
{
    image.save_with_format(path, image::ImageFormat::Png).map_err(|e| write_error(path)(e.to_string()))
}

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
        std::fs::write(&csv_path, csv).map_err(|e| write_error(&csv_path)(e.to_string()))?;
        let json_path = dir.join("scores.json");
        let json = serde_json::to_string_pretty(self).map_err(|e| write_error(&json_path)(e.to_string()))?;
        std::fs::write(&json_path, json).map_err(|e| write_error(&json_path)(e.to_string()))?;
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
        let overlay_path = dir.join(format!("{}_overlay.png", x.stem));
        write_png(&overlay(&x.image, &x.map, x.style)?, &overlay_path)?;
        let map_path = dir.join(format!("{}_map.tiff", x.stem));
        write_map_tiff(&x.map, &map_path)?;
        let mask_path = dir.join(format!("{}_mask.png", x.stem));
        write_png(&threshold_mask(&x.map, x.threshold), &mask_path)?;
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

    fn map() -> Grid {
        Grid::new(3, 2, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    }

    #[test]
    fn the_map_round_trips_through_tiff_as_float32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.tiff");
        write_map_tiff(&map(), &path).unwrap();
        let mut decoder = tiff::decoder::Decoder::new(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(decoder.dimensions().unwrap(), (3, 2));
        match decoder.read_image().unwrap() {
            tiff::decoder::DecodingResult::F32(values) => assert_eq!(values, map().values),
            _ => panic!("not float32"),
        }
    }

    #[test]
    fn mask_and_overlay_follow_the_map() {
        let mask = threshold_mask(&map(), 0.5);
        assert_eq!(mask.as_raw(), &[0, 0, 0, 255, 255, 255]);
        let image = RgbaImage::from_pixel(3, 2, Rgba([0, 0, 0, 255]));
        let style = OverlayStyle { colormap: Colormap::Turbo, opacity: 1.0, low: 0.0, high: 1.0 };
        let out = overlay(&image, &map(), style).unwrap();
        assert_eq!(out.get_pixel(2, 1).0[..3], Colormap::Turbo.color32(1.0).to_array()[..3]);
        assert!(overlay(&RgbaImage::new(2, 2), &map(), style).is_err());
    }

    #[test]
    fn csv_fields_with_commas_are_quoted() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
