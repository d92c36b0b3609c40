//! OpenCLIP's evaluation transform, reproduced to the pixel.
//!
//! OpenCLIP resizes with PIL (torchvision on PIL images), whose 8-bit resampler
//! differs from the `image` crate's (PIL runs the horizontal pass first, rounds the
//! intermediate image to 8 bits and uses 22-bit fixed-point weights). Features of
//! resized images are only comparable with the reference if the pixels are the
//! same, so the resampler below follows Pillow's `Resample.c` exactly for 8-bit
//! images; the fixture tests measure the remaining difference.

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

/// Per output pixel: first input index, and fixed-point weights.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    kernel_size: usize,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-range resize.
fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let kernel_size = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * kernel_size];
    let mut row = vec![0f64; kernel_size];
    for xx in 0..out_size {
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
            weights[xx * kernel_size + x] = if w < 0.0 { (fixed - 0.5) as i32 } else { (fixed + 0.5) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients { bounds, weights, kernel_size }
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One resampling pass along x (`horizontal`) or y over a `channels`-interleaved
/// 8-bit image of `w` x `h`, to `out` pixels along that axis.
fn resample_pass(
    src: &[u8],
    (w, h): (usize, usize),
    out: usize,
    channels: usize,
    horizontal: bool,
    filter: Filter,
) -> Vec<u8> {
    let round = 1i64 << (PRECISION_BITS - 1);
    let c = coefficients(if horizontal { w } else { h }, out, filter);
    let (out_w, out_h) = if horizontal { (out, h) } else { (w, out) };
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
fn resample(
    src: &[u8],
    (w, h): (usize, usize),
    (out_w, out_h): (usize, usize),
    channels: usize,
    filter: Filter,
) -> Vec<u8> {
    let vertical_first = out_h < h && 2 * (out_w as i64 - w as i64) > (out_h as i64 - h as i64);
    let mut data = src.to_vec();
    let mut size = (w, h);
    let passes = if vertical_first { [false, true] } else { [true, false] };
    for horizontal in passes {
        let (from, to) = if horizontal { (size.0, out_w) } else { (size.1, out_h) };
        if from != to {
            data = resample_pass(&data, size, to, channels, horizontal, filter);
            size = if horizontal { (to, size.1) } else { (size.0, to) };
        }
    }
    data
}

/// PIL's `Image.resize` followed by conversion to RGB. Images with an alpha channel
/// are resized premultiplied, as PIL resizes RGBA as RGBa, then alpha is dropped.
pub fn resize_like_pil(image: &DynamicImage, (out_w, out_h): (u32, u32), filter: Filter) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let size_out = (out_w as usize, out_h as usize);
    if (w, h) == size_out {
        return image.to_rgb8();
    }
    if !image.color().has_alpha() {
        let data = resample(image.to_rgb8().as_raw(), (w, h), size_out, 3, filter);
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
    let resized = resample(&premultiplied, (w, h), size_out, 4, filter);
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
        let s = self.size;
        let (w, h) = (image.width(), image.height());
        let (rw, rh) = match self.resize_mode {
            ResizeMode::Squash => (s, s),
            ResizeMode::Shortest => {
                // torchvision: the short side becomes `s`, the long one int(s * long / short).
                let (short, long) = (w.min(h), w.max(h));
                let long_new = (s as u64 * long as u64 / short as u64) as u32;
                if w <= h { (s, long_new) } else { (long_new, s) }
            }
            ResizeMode::Longest => {
                // OpenCLIP's ResizeKeepRatio(longest=1), then CenterCropOrPad pads.
                let ratio = w.max(h) as f64 / s as f64;
                (((w as f64 / ratio).round() as u32).max(1), ((h as f64 / ratio).round() as u32).max(1))
            }
        };
        center_crop(&resize_like_pil(image, (rw, rh), self.filter), s).into_padded(self.fill)
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

/// torchvision's `center_crop`: crops where the image is larger, pads where smaller.
fn center_crop(image: &RgbImage, size: u32) -> Cropped {
    let (w, h) = (image.width(), image.height());
    let crop_w = w.min(size);
    let crop_h = h.min(size);
    let left = half_diff_rounded((w - crop_w) as usize) as u32;
    let top = half_diff_rounded((h - crop_h) as usize) as u32;
    let cropped = image::imageops::crop_imm(image, left, top, crop_w, crop_h).to_image();
    // Padding (only in `longest` mode, or for degenerate sizes): torchvision puts the
    // extra pixel on the right/bottom, i.e. the left/top pad is the floor of half.
    let offset = ((size - crop_w) / 2, (size - crop_h) / 2);
    Cropped { image: cropped, offset, size }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let c = coefficients(inp, out, Filter::Bicubic);
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
}
