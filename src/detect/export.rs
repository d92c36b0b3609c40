//! Files a detection leaves behind: the float32 anomaly map as TIFF (the MVTec AD
//! evaluation format) and the heatmap overlay as PNG with a colour legend.
//! Every file is written atomically, so an interrupted run never leaves a
//! half-written map that a later evaluation would read.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};

use super::colormap::Colormap;
use super::maps::Grid;
use super::threshold::Verdict;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("cannot read the map {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("the map ({map_w}x{map_h}) does not match the image ({image_w}x{image_h})")]
    SizeMismatch { map_w: usize, map_h: usize, image_w: u32, image_h: u32 },
}

/// `crate::files::write_atomic`, naming the file in the error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    crate::files::write_atomic(path, bytes).map_err(|e| ExportError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The map as a single-channel float32 TIFF, values unchanged.
pub fn map_tiff_bytes(map: &Grid) -> Result<Vec<u8>, tiff::TiffError> {
    let mut out = Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut out)?.write_image::<tiff::encoder::colortype::Gray32Float>(
        map.width as u32,
        map.height as u32,
        &map.values,
    )?;
    Ok(out.into_inner())
}

pub fn write_map_tiff(path: &Path, map: &Grid) -> Result<(), ExportError> {
    let bytes = map_tiff_bytes(map).map_err(|e| ExportError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Reads a single-channel float TIFF map (any tool's; 64-bit floats are narrowed to 32).
pub fn read_map_tiff(path: &Path) -> Result<Grid, ExportError> {
    let failed = |reason: String| ExportError::Read {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
    let mut decoder = tiff::decoder::Decoder::new(std::io::BufReader::new(file)).map_err(|e| failed(e.to_string()))?;
    let (width, height) = decoder.dimensions().map_err(|e| failed(e.to_string()))?;
    let colour = decoder.colortype().map_err(|e| failed(e.to_string()))?;
    if !matches!(colour, tiff::ColorType::Gray(_)) {
        return Err(failed(format!("an anomaly map must be single-channel float, this TIFF is {colour:?}")));
    }
    let values = match decoder.read_image().map_err(|e| failed(e.to_string()))? {
        tiff::decoder::DecodingResult::F32(v) => v,
        tiff::decoder::DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
        _ => return Err(failed("an anomaly map must hold float samples, this TIFF holds integers".into())),
    };
    if values.len() != width as usize * height as usize {
        return Err(failed(format!("{} values for {width} x {height} pixels", values.len())));
    }
    Ok(Grid::new(width as usize, height as usize, values))
}

#[derive(Debug, Clone)]
pub struct OverlayStyle {
    /// Map values shown from the first colour to the last; outside is clamped.
    pub range: (f32, f32),
    /// Weight of the heatmap over the image.
    pub opacity: f32,
    pub colormap: Colormap,
    /// Lines written above the image (name, score, verdict), so an overlay seen on
    /// its own still says what it shows.
    pub caption: Vec<String>,
    /// The region threshold: where the map crosses it is outlined in white.
    pub outline: Option<f32>,
    /// An OK/NG badge in the top-right corner of the caption.
    pub badge: Option<Verdict>,
}

impl Default for OverlayStyle {
    fn default() -> Self {
        Self {
            range: (0.0, 1.0),
            opacity: 0.5,
            colormap: Colormap::Turbo,
            caption: Vec::new(),
            outline: None,
            badge: None,
        }
    }
}

/// The legend panel never gets smaller than this, so it stays readable beside tiny images.
const MIN_LEGEND_HEIGHT: u32 = 200;

/// The image with the heatmap blended over it and a colour legend on the right
/// labelled with the map values of `style.range`. `map` must have the image's size.
pub fn render_overlay(image: &DynamicImage, map: &Grid, style: &OverlayStyle) -> Result<RgbImage, ExportError> {
    let base = image.to_rgb8();
    let (w, h) = base.dimensions();
    if (map.width, map.height) != (w as usize, h as usize) {
        return Err(ExportError::SizeMismatch {
            map_w: map.width,
            map_h: map.height,
            image_w: w,
            image_h: h,
        });
    }
    let (lo, hi) = style.range;
    let span = (hi - lo).max(f32::EPSILON);
    let alpha = style.opacity.clamp(0.0, 1.0);

    let font_px = (h as f32 / 28.0).clamp(12.0, 48.0);
    let legend_w = (font_px * 5.0).ceil() as u32;
    let line_h = (font_px * 1.4).ceil() as u32;
    let caption_lines = style.caption.len().max(usize::from(style.badge.is_some())) as u32;
    let header = if caption_lines == 0 { 0 } else { caption_lines * line_h + line_h / 3 };
    let canvas_h = h.max(MIN_LEGEND_HEIGHT) + header;
    let mut canvas = RgbImage::from_pixel(w + legend_w, canvas_h, Rgb([255, 255, 255]));
    for (x, y, p) in base.enumerate_pixels() {
        let c = style.colormap.rgb8((map.at(x as usize, y as usize) - lo) / span);
        let blend = |i: usize| (f32::from(p[i]) * (1.0 - alpha) + f32::from(c[i]) * alpha).round() as u8;
        canvas.put_pixel(x, y + header, Rgb([blend(0), blend(1), blend(2)]));
    }
    if let Some(threshold) = style.outline {
        for (x, y) in region_boundary(map, threshold) {
            canvas.put_pixel(x as u32, y as u32 + header, Rgb([255, 255, 255]));
        }
    }

    // Colour bar: top is the high end of the range.
    let margin = (font_px * 0.8) as u32;
    let bar_x = w + margin / 2;
    let bar_w = (font_px * 0.9) as u32;
    let (bar_top, bar_bottom) = (header + margin, canvas_h - margin);
    let bar_h = (bar_bottom - bar_top).max(1);
    for y in bar_top..bar_bottom {
        let t = 1.0 - (y - bar_top) as f32 / bar_h as f32;
        let c = Rgb(style.colormap.rgb8(t));
        for x in bar_x..bar_x + bar_w {
            canvas.put_pixel(x, y, c);
        }
    }
    let font = FontRef::try_from_slice(epaint_default_fonts::HACK_REGULAR).expect("egui's bundled font parses");
    let scaled = font.as_scaled(PxScale::from(font_px));
    for i in 0..=4 {
        let t = i as f32 / 4.0;
        let y = bar_bottom as f32 - t * bar_h as f32;
        let x = bar_x + bar_w + 3;
        for dx in 0..3 {
            canvas.put_pixel(x - 3 + dx, (y as u32).min(canvas_h - 1), Rgb([0, 0, 0]));
        }
        let label = format!("{:.2}", lo + t * (hi - lo));
        draw_text(&mut canvas, &scaled, &label, x as f32 + 2.0, y - font_px / 2.0, BLACK);
    }
    for (i, line) in style.caption.iter().enumerate() {
        draw_text(&mut canvas, &scaled, line, font_px * 0.4, (i as u32 * line_h) as f32 + font_px * 0.2, BLACK);
    }
    if let Some(verdict) = style.badge {
        let fill = match verdict {
            Verdict::Ok => Rgb([0, 140, 60]),
            Verdict::Ng => Rgb([200, 30, 30]),
        };
        let badge_w = (font_px * 2.6) as u32;
        let x0 = canvas.width().saturating_sub(badge_w + (font_px * 0.3) as u32);
        let y0 = (font_px * 0.15) as u32;
        for y in y0..(y0 + line_h).min(canvas_h) {
            for x in x0..(x0 + badge_w).min(canvas.width()) {
                canvas.put_pixel(x, y, fill);
            }
        }
        draw_text(&mut canvas, &scaled, verdict.label(), x0 as f32 + font_px * 0.45, y0 as f32 + font_px * 0.2, WHITE);
    }
    Ok(canvas)
}

const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// The pixels of the region at or above `threshold` that touch a pixel below it (or
/// the image's edge does not count: a region filling the image has no outline there).
fn region_boundary(map: &Grid, threshold: f32) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (w, h) = (map.width, map.height);
    (0..h).flat_map(move |y| (0..w).map(move |x| (x, y))).filter(move |&(x, y)| {
        let inside = |x: usize, y: usize| map.at(x, y) >= threshold;
        inside(x, y)
            && ((x > 0 && !inside(x - 1, y))
                || (x + 1 < w && !inside(x + 1, y))
                || (y > 0 && !inside(x, y - 1))
                || (y + 1 < h && !inside(x, y + 1)))
    })
}

/// Text in `colour` with its top-left corner at (x, y), clipped to the canvas.
fn draw_text<F: Font>(canvas: &mut RgbImage, font: &ab_glyph::PxScaleFont<F>, text: &str, x: f32, y: f32, colour: Rgb<u8>) {
    let mut caret = x;
    for ch in text.chars() {
        let mut glyph = font.scaled_glyph(ch);
        glyph.position = ab_glyph::point(caret, y + font.ascent());
        caret += font.h_advance(glyph.id);
        let Some(outline) = font.outline_glyph(glyph) else { continue };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let (px, py) = (bounds.min.x as i64 + gx as i64, bounds.min.y as i64 + gy as i64);
            if px >= 0 && py >= 0 && (px as u32) < canvas.width() && (py as u32) < canvas.height() {
                let p = canvas.get_pixel_mut(px as u32, py as u32);
                for (v, c) in p.0.iter_mut().zip(colour.0) {
                    *v = (f32::from(*v) * (1.0 - coverage) + f32::from(c) * coverage).round() as u8;
                }
            }
        });
    }
}

/// 255 where the map is at or above `threshold`, else 0.
pub fn threshold_mask(map: &Grid, threshold: f32) -> GrayImage {
    GrayImage::from_fn(map.width as u32, map.height as u32, |x, y| {
        Luma([if map.at(x as usize, y as usize) >= threshold { 255 } else { 0 }])
    })
}

/// Any 8-bit image as PNG, atomically.
pub fn write_png<P: image::PixelWithColorType>(
    path: &Path,
    image: &image::ImageBuffer<P, Vec<P::Subpixel>>,
) -> Result<(), ExportError>
where
    [P::Subpixel]: image::EncodableLayout,
{
    let mut bytes = Cursor::new(Vec::new());
    image.write_to(&mut bytes, ImageFormat::Png).map_err(|e| ExportError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiff_round_trip_keeps_every_value() {
        let dir = tempfile::tempdir().unwrap();
        let map = Grid::new(3, 2, vec![0.0, 0.25, 1.0, -1.5, f32::MIN_POSITIVE, 0.123_456_79]);
        let path = dir.path().join("a/b/map.tiff");
        write_map_tiff(&path, &map).unwrap();
        assert_eq!(read_map_tiff(&path).unwrap(), map);
        assert_eq!(std::fs::read_dir(dir.path().join("a/b")).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn overlay_blends_the_map_and_adds_a_legend() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 30, Rgb([128, 128, 128])));
        let mut values = vec![0.0; 40 * 30];
        values[15 * 40 + 20] = 1.0;
        let map = Grid::new(40, 30, values);
        let style = OverlayStyle::default();
        let overlay = render_overlay(&image, &map, &style).unwrap();
        assert!(overlay.width() > 40 && overlay.height() == MIN_LEGEND_HEIGHT);
        let hot = style.colormap.rgb8(1.0);
        let expected = |i: usize| ((128.0 + f32::from(hot[i])) / 2.0).round() as u8;
        assert_eq!(overlay.get_pixel(20, 15).0, [expected(0), expected(1), expected(2)]);
        assert_ne!(overlay.get_pixel(20, 15), overlay.get_pixel(0, 0));
        // The legend has dark text pixels.
        let legend_dark = (40..overlay.width())
            .flat_map(|x| (0..overlay.height()).map(move |y| (x, y)))
            .filter(|&(x, y)| overlay.get_pixel(x, y).0.iter().all(|&v| v < 60))
            .count();
        assert!(legend_dark > 20, "{legend_dark}");
        let wrong_size = DynamicImage::ImageRgb8(RgbImage::new(4, 4));
        assert!(matches!(render_overlay(&wrong_size, &map, &style), Err(ExportError::SizeMismatch { .. })));
    }

    #[test]
    fn a_caption_goes_above_the_image() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(40, 30, Rgb([128, 128, 128])));
        let map = Grid::new(40, 30, vec![0.0; 40 * 30]);
        let plain = render_overlay(&image, &map, &OverlayStyle::default()).unwrap();
        let style = OverlayStyle { caption: vec!["broken_large/015.png".into(), "score 0.734 NG".into()], ..Default::default() };
        let captioned = render_overlay(&image, &map, &style).unwrap();
        let header = captioned.height() - plain.height();
        assert!(header > 20, "{header}");
        // The image moved down by the header; the header has dark text pixels.
        assert_eq!(captioned.get_pixel(5, header + 5), plain.get_pixel(5, 5));
        let dark = (0..40).flat_map(|x| (0..header).map(move |y| (x, y))).filter(|&(x, y)| captioned.get_pixel(x, y).0[0] < 60).count();
        assert!(dark > 10, "{dark}");
    }

    #[test]
    fn threshold_masks_follow_the_map() {
        let map = Grid::new(3, 2, vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(threshold_mask(&map, 0.5).as_raw(), &[0, 0, 0, 255, 255, 255]);
    }
}
