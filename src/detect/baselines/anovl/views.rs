//! The 22 views of the public AnoVL code's image score (`utils.py: aug`, called by
//! `vl_test.py` on MVTec AD, which averages the global feature's abnormal probability
//! over them): the input; 8 rotations by ±π/16, ±π/8, ±3π/16, ±π/4; 8 translations
//! by (±0.2, ±0.2) and (±0.1, ±0.1) in normalised coordinates; a horizontal flip; a
//! grey copy; rotations by 90, 180 and 270 degrees. `aug` shuffles them, which leaves
//! the mean alone.
//!
//! Like `aug`, the views transform the PREPROCESSED input, the normalised S x S tensor
//! (`vl_test.py` augments `data_transform`'s output: resize, to tensor, normalise), not
//! the RGB image: its grey view weighs the normalised channel values, which no RGB
//! image normalises to, and its resampling happens at the model's resolution.
//!
//! - Rotations and translations are PyTorch's `affine_grid` + `grid_sample` with
//!   `align_corners=True`, bilinear, `padding_mode="reflection"`: output pixel `(x, y)`
//!   at normalised `(u, v) = (-1 + 2x / (S - 1), -1 + 2y / (S - 1))` samples the input at
//!   `theta @ (u, v, 1)`, where `theta` is `[[cos a, -sin a, 0], [sin a, cos a, 0]]`
//!   (`rot_img`) or `[[1, 0, a], [0, 1, b]]` (`translation_img`). A translation by `a`
//!   thus samples `a (S - 1) / 2` pixels to the right (about 24 px for 0.2 at 240 px):
//!   the content moves left. Outside the image, coordinates reflect about the edge
//!   pixels' centres (pixel -k reads pixel k).
//! - The flip, grey copy and quarter turns are kornia's `hflip`, `rgb_to_grayscale`
//!   (0.299 R + 0.587 G + 0.114 B, repeated over the three channels) and `rotate` by
//!   90 k degrees, counter-clockwise as displayed. On a square image kornia's quarter
//!   turns sample pixel centres (up to float32's cos(90°) ≈ -4e-8), so they are the
//!   exact pixel permutations of the `image` crate's `rotate270` (90°), `rotate180`
//!   and `rotate90` (270°).

use std::f64::consts::PI;

use candle_core::{DType, IndexOp, Tensor};
use image::{ImageBuffer, Rgb, imageops};

/// One normalised image, channels interleaved (values are not limited to [0, 1]).
pub type Planes = ImageBuffer<Rgb<f32>, Vec<f32>>;

/// The number of views `aug` makes, the input included.
pub const VIEW_COUNT: usize = 22;

/// `aug`'s small rotations, in radians, in its order.
pub const SMALL_ROTATIONS: [f64; 8] = [
    -PI / 4.0,
    -3.0 * PI / 16.0,
    -PI / 8.0,
    -PI / 16.0,
    PI / 16.0,
    PI / 8.0,
    3.0 * PI / 16.0,
    PI / 4.0,
];

/// `aug`'s translations `(a, b)` in normalised coordinates (the image spans [-1, 1]).
pub const TRANSLATIONS: [(f64, f64); 8] = [
    (0.2, 0.2),
    (-0.2, 0.2),
    (-0.2, -0.2),
    (0.2, -0.2),
    (0.1, 0.1),
    (-0.1, 0.1),
    (-0.1, -0.1),
    (0.1, -0.1),
];

/// kornia's `rgb_to_grayscale` weights (R, G, B).
pub const GREY_WEIGHTS: [f32; 3] = [0.299, 0.587, 0.114];

/// One of `aug`'s views.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum View {
    Original,
    /// `rot_img(x, angle)`.
    Rotation(f64),
    /// `translation_img(x, a, b)`.
    Translation(f64, f64),
    /// `hflip_img`.
    HorizontalFlip,
    /// `grey_img`.
    Grey,
    /// `rot90_img(x, k)`: k quarter turns counter-clockwise (k = 1, 2, 3).
    QuarterTurns(u8),
}

/// `aug`'s views in its order (before its shuffle).
pub fn public_code_view_list() -> Vec<View> {
    let mut views = vec![View::Original];
    views.extend(SMALL_ROTATIONS.iter().map(|&a| View::Rotation(a)));
    views.extend(TRANSLATIONS.iter().map(|&(a, b)| View::Translation(a, b)));
    views.extend([View::HorizontalFlip, View::Grey]);
    views.extend((1..=3).map(View::QuarterTurns));
    views
}

/// The views of a preprocessed input `pixels` [1, 3, S, S]: [22, 3, S, S], in `aug`'s
/// order (view 0 is the input).
pub fn public_code_views(pixels: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = pixels.dims4()?;
    if b != 1 || c != 3 || h != w {
        candle_core::bail!("AnoVL's views take one square RGB input [1, 3, S, S], got {:?}", pixels.dims());
    }
    let hwc = pixels.i(0)?.to_dtype(DType::F32)?.permute((1, 2, 0))?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let input = Planes::from_raw(w as u32, h as u32, hwc).expect("S * S * 3 values");
    let list = public_code_view_list();
    let mut data = Vec::with_capacity(list.len() * 3 * h * w);
    for view in &list {
        data.extend(apply(*view, &input).into_raw());
    }
    Tensor::from_vec(data, (list.len(), h, w, 3), pixels.device())?
        .permute((0, 3, 1, 2))?
        .contiguous()?
        .to_dtype(pixels.dtype())
}

/// `view` of `input` (square for the quarter turns, as every model input is).
pub fn apply(view: View, input: &Planes) -> Planes {
    match view {
        View::Original => input.clone(),
        View::Rotation(angle) => {
            let (sin, cos) = angle.sin_cos();
            warp(input, |u, v| (cos * u - sin * v, sin * u + cos * v))
        }
        View::Translation(a, b) => warp(input, |u, v| (u + a, v + b)),
        View::HorizontalFlip => imageops::flip_horizontal(input),
        View::Grey => {
            let mut grey = input.clone();
            for pixel in grey.pixels_mut() {
                let Rgb([r, g, b]) = *pixel;
                let y = GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b;
                *pixel = Rgb([y, y, y]);
            }
            grey
        }
        View::QuarterTurns(k) => match k % 4 {
            0 => input.clone(),
            // The image crate turns clockwise; kornia's positive angles turn counter-clockwise.
            1 => imageops::rotate270(input),
            2 => imageops::rotate180(input),
            _ => imageops::rotate90(input),
        },
    }
}

/// `grid_sample(input, affine_grid(theta), align_corners=True, padding_mode="reflection")`:
/// `theta` maps an output pixel's normalised coordinates to the input's.
fn warp(input: &Planes, theta: impl Fn(f64, f64) -> (f64, f64)) -> Planes {
    let (w, h) = (input.width() as usize, input.height() as usize);
    let normalised = |i: usize, n: usize| if n > 1 { -1.0 + 2.0 * i as f64 / (n - 1) as f64 } else { -1.0 };
    let pixel = |g: f64, n: usize| (g + 1.0) / 2.0 * n.saturating_sub(1) as f64;
    Planes::from_fn(w as u32, h as u32, |x, y| {
        let (gx, gy) = theta(normalised(x as usize, w), normalised(y as usize, h));
        bilinear(input, reflect(pixel(gx, w), w), reflect(pixel(gy, h), h))
    })
}

/// PyTorch's `reflect_coordinates` for `align_corners=True` (reflection about the first
/// and last pixels' centres), then clipped to the image.
fn reflect(coordinate: f64, size: usize) -> f64 {
    if size <= 1 {
        return 0.0;
    }
    let span = (size - 1) as f64;
    let distance = coordinate.abs();
    let extra = distance % span;
    let reflected = if ((distance / span).floor() as u64).is_multiple_of(2) { extra } else { span - extra };
    reflected.clamp(0.0, span)
}

/// Bilinear interpolation at `(x, y)` inside the image; neighbours past the last
/// row or column (weight 0 there) are skipped, as in `grid_sample`.
fn bilinear(input: &Planes, x: f64, y: f64) -> Rgb<f32> {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let mut out = [0f64; 3];
    for (dx, dy, weight) in [(0, 0, (1.0 - fx) * (1.0 - fy)), (1, 0, fx * (1.0 - fy)), (0, 1, (1.0 - fx) * fy), (1, 1, fx * fy)] {
        let (px, py) = (x0 as u32 + dx, y0 as u32 + dy);
        if px < input.width() && py < input.height() {
            let Rgb(value) = input.get_pixel(px, py);
            for (o, v) in out.iter_mut().zip(value) {
                *o += weight * f64::from(*v);
            }
        }
    }
    Rgb(out.map(|v| v as f32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values unique per pixel and channel, not in [0, 1] (normalised inputs are not).
    fn distinct(size: u32) -> Planes {
        Planes::from_fn(size, size, |x, y| Rgb([x as f32 + 100.0 * y as f32, -1.5 - x as f32, 0.25 * y as f32]))
    }

    fn at(p: &Planes, x: u32, y: u32) -> [f32; 3] {
        p.get_pixel(x, y).0
    }

    #[test]
    fn the_public_code_makes_22_views_starting_with_the_input() {
        let list = public_code_view_list();
        assert_eq!(list.len(), VIEW_COUNT);
        assert_eq!(list[0], View::Original);
        assert_eq!(list[1], View::Rotation(-PI / 4.0));
        assert_eq!(list[8], View::Rotation(PI / 4.0));
        assert_eq!(list[9], View::Translation(0.2, 0.2));
        assert_eq!(list[16], View::Translation(0.1, -0.1));
        assert_eq!(&list[17..], [View::HorizontalFlip, View::Grey, View::QuarterTurns(1), View::QuarterTurns(2), View::QuarterTurns(3)]);
    }

    #[test]
    fn quarter_turns_move_a_marked_pixel_counter_clockwise() {
        let s = 7;
        let mut input = Planes::new(s, s);
        input.put_pixel(6, 2, Rgb([1.0, 2.0, 3.0])); // right of centre, a little up
        let find = |p: &Planes| {
            let hits: Vec<(u32, u32)> = p.enumerate_pixels().filter(|(_, _, v)| v.0 != [0.0; 3]).map(|(x, y, _)| (x, y)).collect();
            assert_eq!(hits.len(), 1);
            assert_eq!(p.get_pixel(hits[0].0, hits[0].1).0, [1.0, 2.0, 3.0]);
            hits[0]
        };
        // Counter-clockwise as displayed (y down): (x, y) -> (y, S-1-x).
        assert_eq!(find(&apply(View::QuarterTurns(1), &input)), (2, 0)); // right -> top
        assert_eq!(find(&apply(View::QuarterTurns(2), &input)), (0, 4)); // -> left
        assert_eq!(find(&apply(View::QuarterTurns(3), &input)), (4, 6)); // -> bottom
        assert_eq!(find(&apply(View::HorizontalFlip, &input)), (0, 2));
        // kornia's rotation by 90 degrees is the same affine map sampled at the pixel centres.
        let input = distinct(s);
        let turned = apply(View::QuarterTurns(1), &input);
        let c = (s - 1) as f64 / 2.0;
        for (x, y, value) in turned.enumerate_pixels() {
            // Source of destination (x, y) under kornia's matrix [[cos, sin], [-sin, cos]] about the centre.
            let (sx, sy) = (c - (y as f64 - c), c + (x as f64 - c));
            assert_eq!(value.0, at(&input, sx as u32, sy as u32), "({x}, {y})");
        }
    }

    #[test]
    fn translations_shift_by_a_times_half_the_span_and_reflect_at_the_edges() {
        // S = 21: 0.2 is 2 pixels, 0.1 is 1 pixel.
        let input = distinct(21);
        let shifted = apply(View::Translation(0.2, -0.1), &input);
        for (x, y, value) in shifted.enumerate_pixels() {
            let (sx, sy) = (x as i64 + 2, y as i64 - 1);
            // Reflection about the edge pixels: -1 reads 1, 21 reads 19, 22 reads 18.
            let reflect = |v: i64| if v < 0 { -v } else if v > 20 { 40 - v } else { v };
            let expected = at(&input, reflect(sx) as u32, reflect(sy) as u32);
            for (g, e) in value.0.iter().zip(expected) {
                assert!((g - e).abs() < 1e-4, "({x}, {y}): {:?} vs {expected:?}", value.0);
            }
        }
        // At 32 px, 0.2 is 3.1 pixels: bilinear between pixels 3 and 4 of a ramp.
        let ramp = Planes::from_fn(32, 32, |x, y| Rgb([x as f32, y as f32, 0.0]));
        let shifted = apply(View::Translation(0.2, 0.2), &ramp);
        assert!((at(&shifted, 0, 5)[0] - 3.1).abs() < 1e-5 && (at(&shifted, 0, 5)[1] - 8.1).abs() < 1e-5);
        // Past the right edge: 31 + 3.1 = 34.1 reflects to 27.9.
        assert!((at(&shifted, 31, 0)[0] - 27.9).abs() < 1e-4, "{:?}", at(&shifted, 31, 0));
    }

    #[test]
    fn small_rotations_sample_the_rotated_grid_and_reflect_outside() {
        let s = 21u32;
        let c = 10.0;
        let ramp = Planes::from_fn(s, s, |x, y| Rgb([x as f32, y as f32, 1.0]));
        for angle in SMALL_ROTATIONS {
            let rotated = apply(View::Rotation(angle), &ramp);
            let (sin, cos) = angle.sin_cos();
            // The centre stays; a pixel d to the right samples (c + d cos a, c + d sin a):
            // what was at angle +a (below-right, y down) comes to the right.
            assert_eq!(at(&rotated, 10, 10), [10.0, 10.0, 1.0]);
            let got = at(&rotated, 14, 10);
            assert!((f64::from(got[0]) - (c + 4.0 * cos)).abs() < 1e-4, "{angle}: {got:?}");
            assert!((f64::from(got[1]) - (c + 4.0 * sin)).abs() < 1e-4, "{angle}: {got:?}");
            assert!((got[2] - 1.0).abs() < 1e-6);
        }
        // The top-left corner under +pi/4 samples y = c (1 - sqrt 2) < 0: reflected.
        let rotated = apply(View::Rotation(PI / 4.0), &ramp);
        let got = at(&rotated, 0, 0);
        assert!((f64::from(got[0]) - c).abs() < 1e-4, "{got:?}");
        assert!((f64::from(got[1]) - c * (2f64.sqrt() - 1.0)).abs() < 1e-4, "{got:?}");
    }

    #[test]
    fn grey_weighs_the_normalised_channels_as_kornia_and_repeats_them() {
        let input = distinct(5);
        let grey = apply(View::Grey, &input);
        for (x, y, value) in grey.enumerate_pixels() {
            let [r, g, b] = at(&input, x, y);
            let expected = 0.299 * r + 0.587 * g + 0.114 * b;
            assert_eq!(value.0, [expected; 3], "({x}, {y})");
        }
    }

    #[test]
    fn views_of_a_tensor_keep_the_layout() {
        let input = distinct(6);
        let chw: Vec<f32> = (0..3).flat_map(|ch| input.pixels().map(move |p| p.0[ch])).collect();
        let pixels = Tensor::from_vec(chw, (1, 3, 6, 6), &candle_core::Device::Cpu).unwrap();
        let views = public_code_views(&pixels).unwrap();
        assert_eq!(views.dims(), [22, 3, 6, 6]);
        let view = |i: usize| views.i(i).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(view(0), pixels.i(0).unwrap().to_vec3::<f32>().unwrap());
        // View 17, the flip: channel 1 at (x, y) is the input's at (5 - x, y).
        assert_eq!(view(17)[1][2][0], at(&input, 5, 2)[1]);
        // View 19, a quarter turn: channel 0 at (x, y) = (2, 0) is the input's (5, 2).
        assert_eq!(view(19)[0][0][2], at(&input, 5, 2)[0]);
        assert!(public_code_views(&Tensor::zeros((1, 3, 4, 6), DType::F32, &candle_core::Device::Cpu).unwrap()).is_err());
    }
}
