//! OpenCLIP's evaluation transform, reproduced to the pixel.
//!
//! OpenCLIP resizes with PIL (torchvision on PIL images), whose 8-bit resampler
//! differs from the `image` crate's (PIL runs the horizontal pass first, rounds the
//! intermediate image to 8 bits and uses 22-bit fixed-point weights). Features of
//! resized images are only comparable with the reference if the pixels are the
//! same, so the resampler below follows Pillow's `Resample.c` exactly for 8-bit
//! images; the fixture tests measure the remaining difference.

use std::ops::Range;

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};

use super::config::PreprocessConfig;

/// Resampling filter of `preprocess_cfg.interpolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bicubic,
    Bilinear,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Self::Bicubic => 2.0,
            Self::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            // Keys' cubic with a = -0.5, as Pillow.
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Self::Bilinear => (1.0 - x).max(0.0),
        }
    }
}

/// Pillow's fixed-point precision for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel of a window: first input index, and fixed-point weights.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    kernel_size: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-range resize
/// from `in_size` to `out_size`, for the output pixels in `window` only.
fn coefficients(in_size: usize, out_size: usize, window: Range<usize>, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let kernel_size = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(window.len());
    let mut weights = vec![0i32; window.len() * kernel_size];
    let mut row = vec![0f64; kernel_size];
    for (i, xx) in window.enumerate() {
        let center = (xx as f64 + 0.5) * scale;
        // Pillow truncates `center -/+ support + 0.5` with a C cast (towards zero).
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let mut total = 0.0;
        for (x, w) in row.iter_mut().enumerate().take(xmax) {
            *w = filter.weight((x as f64 + xmin as f64 - center + 0.5) / filter_scale);
            total += *w;
        }
        for x in 0..xmax {
            let w = if total != 0.0 { row[x] / total } else { row[x] };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            weights[i * kernel_size + x] = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients { bounds, weights, kernel_size }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One resampling pass along x (`horizontal`) or y over a `channels`-interleaved
/// 8-bit image of `w` x `h`, to `out` pixels along that axis of which only those in
/// `window` are computed (the result has `window.len()` pixels along the axis).
fn resample_pass(
    src: &[u8],
    (w, h): (usize, usize),
    (out, window): (usize, Range<usize>),
    channels: usize,
    horizontal: bool,
    filter: Filter,
) -> Vec<u8> {
    let round = 1i64 << (PRECISION_BITS - 1);
    let c = coefficients(if horizontal { w } else { h }, out, window.clone(), filter);
    let (out_w, out_h) = if horizontal { (window.len(), h) } else { (w, window.len()) };
    // Distance between neighbouring samples along the pass, in bytes.
    let step = if horizontal { channels } else { w * channels };
    let mut dst = vec![0u8; out_w * out_h * channels];
    for y in 0..out_h {
        for x in 0..out_w {
            let (along, (first, taps)) = if horizontal { (x, c.bounds[x]) } else { (y, c.bounds[y]) };
            let weights = &c.weights[along * c.kernel_size..][..taps];
            let base = if horizontal { (y * w + first) * channels } else { (first * w + x) * channels };
            for ch in 0..channels {
                let acc = weights.iter().enumerate().fold(round, |acc, (i, &kw)| {
                    acc + src[base + i * step + ch] as i64 * kw as i64
                });
                dst[(y * out_w + x) * channels + ch] = clip8(acc);
            }
        }
    }
    dst
}

/// Pillow's two-pass resize. Pillow 13 runs the horizontal pass first unless the
/// image shrinks vertically by more than twice its horizontal change (found by the
/// fixture generator over ~7,100 size pairs; `tests/fixtures/pil_preprocess_reference.py`).
///
/// Only the pixels of `window` (columns, rows) of the `out_w` x `out_h` result are
/// computed, each exactly as in the full resize: a centre crop of a very long resized
/// side (a thin image) costs the crop, not the whole side (it could be gigabytes).
fn resample(
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    (window_x, window_y): (Range<usize>, Range<usize>),
    channels: usize,
    filter: Filter,
) -> Vec<u8> {
    let vertical_first = out_h < h && 2 * (out_w as i64 - w as i64) > (out_h as i64 - h as i64);
    let mut data = src.to_vec();
    let mut size = (w, h);
    let passes = if vertical_first { [false, true] } else { [true, false] };
    for horizontal in passes {
        let (from, to, window) = if horizontal { (w, out_w, &window_x) } else { (h, out_h, &window_y) };
        if from != to {
            data = resample_pass(&data, size, (to, window.clone()), channels, horizontal, filter);
        } else if window.len() != from {
            // Pillow skips the pass (the size does not change); the window only crops.
            data = crop_axis(&data, size, window.clone(), channels, horizontal);
        } else {
            continue;
        }
        size = if horizontal { (window.len(), size.1) } else { (size.0, window.len()) };
    }
    data
}

/// The columns (`horizontal`) or rows of `window` of a `channels`-interleaved image.
fn crop_axis(src: &[u8], (w, h): (usize, usize), window: Range<usize>, channels: usize, horizontal: bool) -> Vec<u8> {
    if horizontal {
        src.chunks_exact(w * channels)
            .take(h)
            .flat_map(|row| &row[window.start * channels..window.end * channels])
            .copied()
            .collect()
    } else {
        src[window.start * w * channels..window.end * w * channels].to_vec()
    }
}

/// PIL's `Image.resize` followed by conversion to RGB. Images with an alpha channel
/// are resized premultiplied, as PIL resizes RGBA as RGBa, then alpha is dropped.
pub fn resize_like_pil(image: &DynamicImage, (out_w, out_h): (u32, u32), filter: Filter) -> RgbImage {
    let window = (0..out_w as usize, 0..out_h as usize);
    resize_window_like_pil(image, (out_w as usize, out_h as usize), window, filter)
}

/// The `window` (columns, rows) of [`resize_like_pil`]'s result, computed alone.
fn resize_window_like_pil(
    image: &DynamicImage,
    size_out: (usize, usize),
    window: (Range<usize>, Range<usize>),
    filter: Filter,
) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = (window.0.len() as u32, window.1.len() as u32);
    if (w, h) == size_out {
        let (x, y) = (window.0.start as u32, window.1.start as u32);
        return image::imageops::crop_imm(&image.to_rgb8(), x, y, out_w, out_h).to_image();
    }
    if !image.color().has_alpha() {
        let data = resample(image.to_rgb8().as_raw(), (w, h), size_out, window, 3, filter);
        return RgbImage::from_raw(out_w, out_h, data).expect("resample returns w * h * 3 bytes");
    }
    // Pillow's MULDIV255: round(c * a / 255) in integers.
    let premultiply = |c: u8, a: u8| {
        let t = c as u32 * a as u32 + 128;
        (((t >> 8) + t) >> 8) as u8
    };
    let premultiplied: Vec<u8> = image
        .to_rgba8()
        .pixels()
        .flat_map(|p| [premultiply(p[0], p[3]), premultiply(p[1], p[3]), premultiply(p[2], p[3]), p[3]])
        .collect();
    let resized = resample(&premultiplied, (w, h), size_out, window, 4, filter);
    let rgb: Vec<u8> = resized
        .chunks_exact(4)
        .flat_map(|p| {
            let a = p[3] as u32;
            // Pillow's RGBa -> RGBA: floor division, and no change at a = 0 or 255.
            let un = |c: u8| if a == 0 || a == 255 { c } else { (255 * c as u32 / a).min(255) as u8 };
            [un(p[0]), un(p[1]), un(p[2])]
        })
        .collect();
    RgbImage::from_raw(out_w, out_h, rgb).expect("resample returns w * h * 4 bytes")
}

/// Python's `round()` for `x.5` values: half to even (torchvision's centre crop uses it).
fn half_diff_rounded(diff: usize) -> usize {
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 { half + 1 } else { half }
}

/// OpenCLIP's eval transform from `preprocess_cfg` and the model's image size.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub filter: Filter,
    pub resize_mode: ResizeMode,
    /// Padding colour of `longest` mode.
    pub fill: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResizeMode {
    /// Shortest side to the size, then centre crop (OpenCLIP's default).
    Shortest,
    /// Longest side to the size, then centre pad.
    Longest,
    /// Both sides to the size, ignoring the aspect ratio.
    Squash,
}

impl Preprocessor {
    pub fn new(cfg: &PreprocessConfig, size: usize) -> Self {
        Self {
            size: size as u32,
            mean: cfg.mean,
            std: cfg.std,
            filter: if cfg.interpolation == "bilinear" { Filter::Bilinear } else { Filter::Bicubic },
            resize_mode: match cfg.resize_mode.as_str() {
                "longest" => ResizeMode::Longest,
                "squash" => ResizeMode::Squash,
                _ => ResizeMode::Shortest,
            },
            fill: cfg.fill_color.unwrap_or(0),
        }
    }

    /// The square RGB image the model sees, before normalisation.
    pub fn crop(&self, image: &DynamicImage) -> RgbImage {
        let s = self.size as usize;
        let (w, h) = (image.width() as usize, image.height() as usize);
        let (rw, rh) = match self.resize_mode {
            ResizeMode::Squash => (s, s),
            ResizeMode::Shortest => {
                // torchvision: the short side becomes `s`, the long one int(s * long / short).
                let (short, long) = (w.min(h), w.max(h));
                let long_new = s * long / short;
                if w <= h { (s, long_new) } else { (long_new, s) }
            }
            ResizeMode::Longest => {
                // OpenCLIP's ResizeKeepRatio(longest=1), then CenterCropOrPad pads.
                let ratio = w.max(h) as f64 / s as f64;
                (((w as f64 / ratio).round() as usize).max(1), ((h as f64 / ratio).round() as usize).max(1))
            }
        };
        // Only the centre crop of the resized image is computed: the long side of a thin
        // image resized in `shortest` mode can be millions of pixels.
        let (window_x, window_y) = (center_crop_window(rw, s), center_crop_window(rh, s));
        let offset = (((s - window_x.len()) / 2) as u32, ((s - window_y.len()) / 2) as u32);
        Cropped {
            image: resize_window_like_pil(image, (rw, rh), (window_x, window_y), self.filter),
            offset,
            size: self.size,
        }
        .into_padded(self.fill)
    }

    /// Normalised pixels [3, S, S].
    pub fn tensor(&self, image: &DynamicImage, device: &Device) -> candle_core::Result<Tensor> {
        let rgb = self.crop(image);
        let s = self.size as usize;
        let mut data = vec![0f32; 3 * s * s];
        for (i, p) in rgb.pixels().enumerate() {
            for c in 0..3 {
                data[c * s * s + i] = (p[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Tensor::from_vec(data, (3, s, s), device)
    }

    /// A batch [B, 3, S, S].
    pub fn batch(&self, images: &[DynamicImage], device: &Device) -> candle_core::Result<Tensor> {
        let tensors = images
            .iter()
            .map(|im| self.tensor(im, device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::stack(&tensors, 0)
    }
}

/// A crop that may need padding: torchvision pads with zeros (or the fill colour)
/// when the image is smaller than the crop, and crops at the rounded centre.
/// Padding (only in `longest` mode, or for degenerate sizes): torchvision puts the
/// extra pixel on the right/bottom, i.e. the left/top pad is the floor of half.
struct Cropped {
    image: RgbImage,
    /// Where the image goes on the `size` square, and the square's side.
    offset: (u32, u32),
    size: u32,
}

impl Cropped {
    fn into_padded(self, fill: u8) -> RgbImage {
        if self.image.width() == self.size && self.image.height() == self.size {
            return self.image;
        }
        let mut out = RgbImage::from_pixel(self.size, self.size, image::Rgb([fill; 3]));
        image::imageops::replace(&mut out, &self.image, self.offset.0 as i64, self.offset.1 as i64);
        out
    }
}

/// torchvision's `center_crop` along one side of `full` pixels: the pixels it keeps
/// (all of a side shorter than `size`; it is padded, see [`Cropped`]).
fn center_crop_window(full: usize, size: usize) -> Range<usize> {
    let crop = full.min(size);
    let start = half_diff_rounded(full - crop);
    start..start + crop
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::GenericImageView;

    #[test]
    fn python_round_half_to_even() {
        // round(0.5)=0, round(1.5)=2, round(2.5)=2, round(3.5)=4
        assert_eq!(half_diff_rounded(1), 0);
        assert_eq!(half_diff_rounded(3), 2);
        assert_eq!(half_diff_rounded(5), 2);
        assert_eq!(half_diff_rounded(7), 4);
        assert_eq!(half_diff_rounded(8), 4);
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (inp, out) in [(100, 37), (37, 100), (240, 240), (900, 240)] {
            let c = coefficients(inp, out, 0..out, Filter::Bicubic);
            for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                let sum: i64 = c.weights[xx * c.kernel_size..][..n].iter().map(|&w| w as i64).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= n as i64, "{inp}->{out} at {xx}: {sum}");
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let im = DynamicImage::ImageRgb8(RgbImage::from_pixel(53, 31, image::Rgb([200, 10, 77])));
        let out = resize_like_pil(&im, (20, 47), Filter::Bicubic);
        assert!(out.pixels().all(|p| p.0 == [200, 10, 77]));
    }

    #[test]
    fn shortest_side_resize_then_centre_crop() {
        let pre = Preprocessor::new(&PreprocessConfig::default(), 16);
        let im = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 32, |x, _| image::Rgb([(x * 4) as u8, 0, 0])));
        let out = pre.crop(&im);
        assert_eq!(out.dimensions(), (16, 16));
        // 64x32 -> 32x16, centre 16 columns are input columns 16..48: red rises left to right.
        assert!(out.get_pixel(0, 8)[0] < out.get_pixel(15, 8)[0]);
        assert!(out.get_pixel(0, 8)[0] > 40);
        let t = pre.tensor(&im, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[3, 16, 16]);
    }

    #[test]
    fn a_window_of_the_resize_is_the_same_window_of_the_full_resize() {
        let pattern = |x: u32, y: u32| [(x * 37 + y * 11) as u8, (x * x + 3 * y) as u8, (x ^ (y * 7)) as u8];
        let rgb = |w, h| DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| image::Rgb(pattern(x, y))));
        let rgba = |w, h| {
            DynamicImage::ImageRgba8(image::RgbaImage::from_fn(w, h, |x, y| {
                let [r, g, b] = pattern(x, y);
                image::Rgba([r, g, b, (x * 50 + y * 20) as u8])
            }))
        };
        for image in [rgb(13, 7), rgb(5, 40), rgba(9, 11), rgb(16, 16)] {
            for (out_w, out_h) in [(30, 12), (4, 60), (16, 16), (13, 7), (13, 20), (40, 7)] {
                for filter in [Filter::Bicubic, Filter::Bilinear] {
                    let full = resize_like_pil(&image, (out_w, out_h), filter);
                    for (x, y) in [(0..out_w, 0..out_h), (1..out_w - 1, 2..out_h - 2), (3..4, 0..out_h), (0..out_w, 5..6)] {
                        let expected = image::imageops::crop_imm(&full, x.start, y.start, x.len() as u32, y.len() as u32);
                        let window = (x.start as usize..x.end as usize, y.start as usize..y.end as usize);
                        let got = resize_window_like_pil(&image, (out_w as usize, out_h as usize), window, filter);
                        assert!(
                            got == expected.to_image(),
                            "{:?} -> {out_w}x{out_h} {filter:?}, window {x:?} x {y:?}",
                            image.dimensions()
                        );
                    }
                }
            }
        }
    }

    /// Found by `cargo fuzz run image_preprocess` (fuzz/): the shortest-side resize of a
    /// thin image made the whole long side (200,000 x 1 -> 48,000,000 x 240 pixels, 35 GB)
    /// before cropping 240 x 240 of it; an 11528 x 8 JPEG took 250 MB and seconds.
    #[test]
    fn thin_images_resize_only_their_centre_crop() {
        let pre = Preprocessor::new(&PreprocessConfig::default(), 240);
        let wide = DynamicImage::ImageRgb8(RgbImage::from_pixel(200_000, 1, image::Rgb([200, 10, 77])));
        let out = pre.crop(&wide);
        assert_eq!(out.dimensions(), (240, 240));
        assert!(out.pixels().all(|p| p.0 == [200, 10, 77]));
        let tall = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(1, 20_000, image::Rgba([9, 99, 199, 255])));
        assert!(pre.crop(&tall).pixels().all(|p| p.0 == [9, 99, 199]));

        let jpeg = crate::clip::decode_image(include_bytes!("../../tests/fixtures/fuzz/thin_11528x8.jpg")).unwrap();
        assert_eq!(jpeg.dimensions(), (11528, 8));
        assert_eq!(pre.tensor(&jpeg, &Device::Cpu).unwrap().dims(), &[3, 240, 240]);
    }
}
