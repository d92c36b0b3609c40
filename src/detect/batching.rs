//! Window batches: how many windows go through the image tower at once, and what
//! happens when a batch does not fit the device's memory.
//!
//! On the CPU a batch is `DetectSettings::window_batch` (256 windows in tokens mode,
//! at most 16 images in pixels mode). On a GPU it is the larger of that and what the
//! GPU's free memory holds ([`sized_batch`]): the setting is a floor, so a recipe
//! moves to a GPU unchanged and a large GPU takes every window of a scale at once.
//! Wherever a batch's forward runs out of device memory it is halved and retried
//! ([`in_batches`]), so an estimate that is too high costs a retry, not the image.

use candle_core::{DType, Device};

use super::DetectError;
use super::settings::MAX_WINDOW_BATCH;
use crate::clip::{device_name, free_memory, out_of_memory_reason};

/// The share of the GPU's free memory one batch's activations may fill. The rest is
/// headroom for what the estimate leaves out: cuBLAS's workspace, the allocator's
/// rounding and fragmentation, and what the detector holds beside the batch (the
/// image's tokens and values, the projected window values, other scales' features).
const FREE_MEMORY_SHARE: f64 = 0.5;

/// How many tensors of one window's [tokens, width] size a transformer block on the
/// generic kernels (what GPUs run) holds at its peak, in `forward_windows`: the first
/// block's gathered q/k/v kept through the loop (3), the block's own q/k/v (3) and
/// its input (1), the attention's output (1), the MLP's input after `ln_2` (1) and
/// its hidden layer twice (2 x 4: the matmul's output and the bias add's or the
/// activation's, alive together); 17, rounded up to 20 for the last block's values
/// and the attention's q/k/v copies, which peak at a different moment but about as high.
const LIVE_TOKEN_TENSORS: u64 = 20;

/// Pixels mode: at most this many masked images per forward on the CPU (each is a full
/// forward of every token); a GPU may take more ([`window_batch`]).
pub const PIXELS_BATCH_CPU: usize = 16;

/// The bytes one window of `tokens` tokens (the class token included) holds at the
/// peak of a block of `width` channels and `heads` heads computing in `dtype`: the
/// token tensors ([`LIVE_TOKEN_TENSORS`]) plus the attention scores [heads, tokens,
/// tokens] twice in `dtype` (the logits, the weights) and twice in f32 (softmax runs
/// in f32, see `kernels::softmax_last_dim`).
pub fn window_bytes(tokens: usize, width: usize, heads: usize, dtype: DType) -> u64 {
    let (tokens, width, heads, size) = (tokens as u64, width as u64, heads as u64, dtype.size_in_bytes() as u64);
    tokens * width * LIVE_TOKEN_TENSORS * size + heads * tokens * tokens * (2 * size + 2 * 4)
}

/// The batch that fills [`FREE_MEMORY_SHARE`] of `free_bytes` with windows of
/// `window_bytes` each: at least 1, at most [`MAX_WINDOW_BATCH`] and `windows`.
pub fn sized_batch(free_bytes: u64, window_bytes: u64, windows: usize) -> usize {
    let fits = (free_bytes as f64 * FREE_MEMORY_SHARE / window_bytes.max(1) as f64) as usize;
    fits.clamp(1, MAX_WINDOW_BATCH).min(windows).max(1)
}

/// The batch of `windows` windows of `window_bytes` each on `device`: `setting` on
/// the CPU and wherever the free memory is unknown; on a GPU the larger of `setting`
/// and [`sized_batch`] of its free memory now (the model's weights already taken).
pub fn window_batch(device: &Device, setting: usize, window_bytes: u64, windows: usize) -> usize {
    let sized = free_memory(device).map_or(0, |free| sized_batch(free, window_bytes, windows));
    setting.max(sized).clamp(1, windows.max(1))
}

/// `forward` over `items` in batches of `batch`, the results in order. A batch whose
/// forward runs out of device memory is split in half and the first half retried; the
/// batches after it keep the smaller size (memory does not come back within an image),
/// down to a single item. A single item that still runs out is
/// [`DetectError::OutOfMemory`], naming `device` and the batch that failed first; any
/// other error is returned as it is.
pub fn in_batches<I, T>(
    items: &[I],
    batch: usize,
    device: &Device,
    mut forward: impl FnMut(&[I]) -> candle_core::Result<T>,
) -> Result<Vec<T>, DetectError> {
    let mut size = batch.max(1);
    let mut results = Vec::new();
    let mut start = 0;
    let mut first_failed = None;
    while start < items.len() {
        let chunk = &items[start..items.len().min(start + size)];
        match forward(chunk) {
            Ok(result) => {
                results.push(result);
                start += chunk.len();
            }
            Err(error) => {
                let Some(reason) = out_of_memory_reason(&error) else {
                    return Err(error.into());
                };
                let failed = *first_failed.get_or_insert(chunk.len());
                if chunk.len() == 1 {
                    return Err(DetectError::OutOfMemory { device: device_name(device), batch: failed, reason });
                }
                size = chunk.len() / 2;
            }
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use candle_core::{Device, Tensor};

    use super::*;
    use crate::clip::{Clip, Kernels, ModelRequest, Precision};
    use crate::detect::settings::WindowMode;
    use crate::detect::maps::window_indices;
    use crate::detect::Detector;

    const OUT_OF_MEMORY: &str = "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")";

    #[test]
    fn batches_fill_half_the_free_memory_within_the_limits() {
        // ViT-B-16-plus-240 (896 wide, 14 heads) in f16, a 3 x 3 window: 10 tokens.
        let bytes = window_bytes(10, 896, 14, DType::F16);
        assert_eq!(bytes, 10 * 896 * 20 * 2 + 14 * 100 * 12);
        assert_eq!(window_bytes(10, 896, 14, DType::F32), 10 * 896 * 20 * 4 + 14 * 100 * 16);
        // 40 GB free: far more than the limit holds; capped by the windows, then by the limit.
        assert_eq!(sized_batch(40 << 30, bytes, 169), 169);
        assert_eq!(sized_batch(40 << 30, bytes, 100_000), MAX_WINDOW_BATCH);
        // 100 MB free: half of it in windows of 375,040 bytes.
        assert_eq!(sized_batch(100_000_000, bytes, 10_000), 50_000_000 / bytes as usize);
        // Nothing free, or no windows: still one window a batch.
        assert_eq!(sized_batch(0, bytes, 169), 1);
        assert_eq!(sized_batch(40 << 30, bytes, 0), 1);
        // The CPU has no free-memory query: the setting, at most the windows.
        assert_eq!(window_batch(&Device::Cpu, 256, bytes, 169), 169);
        assert_eq!(window_batch(&Device::Cpu, 64, bytes, 169), 64);
    }

    #[test]
    fn out_of_memory_halves_the_batch_and_keeps_the_order() {
        let items: Vec<u32> = (0..9).collect();
        let tried = RefCell::new(Vec::new());
        let forward = |fits: usize| {
            let tried = &tried;
            move |chunk: &[u32]| -> candle_core::Result<Vec<u32>> {
                tried.borrow_mut().push(chunk.len());
                if chunk.len() > fits { Err(candle_core::Error::Msg(OUT_OF_MEMORY.into())) } else { Ok(chunk.to_vec()) }
            }
        };
        let parts = in_batches(&items, 9, &Device::Cpu, forward(2)).unwrap();
        assert_eq!(parts.concat(), items);
        assert_eq!(*tried.borrow(), [9, 4, 2, 2, 2, 2, 1]);
        tried.borrow_mut().clear();
        let err = in_batches(&items, 9, &Device::Cpu, forward(0)).unwrap_err();
        assert!(matches!(err, DetectError::OutOfMemory { batch: 9, .. }), "{err:?}");
        assert_eq!(*tried.borrow(), [9, 4, 2, 1]);
        // Any other error is the forward's own, at once.
        tried.borrow_mut().clear();
        let other = in_batches(&items, 9, &Device::Cpu, |chunk: &[u32]| -> candle_core::Result<()> {
            tried.borrow_mut().push(chunk.len());
            Err(candle_core::Error::Msg("shape mismatch".into()))
        });
        assert!(matches!(other, Err(DetectError::Tensor(_))));
        assert_eq!(*tried.borrow(), [9]);
    }

    fn tiny_detector(kernels: Kernels) -> Detector {
        let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gelu");
        let files = ModelRequest { model: Some(model.display().to_string()), ..Default::default() }.resolve().unwrap();
        let clip = Clip::load(&files, &Device::Cpu, Precision::F32, kernels).unwrap();
        Detector::new(clip, "tiny-gelu", None)
    }

    /// The engine's tokens mode through a window forward that runs out of memory above
    /// two windows, as a full GPU would: the same features and values as one batch,
    /// bit for bit; and above none, the named error.
    #[test]
    fn window_features_split_on_out_of_memory_equal_the_unsplit_ones() {
        for kernels in Kernels::ALL {
            let detector = tiny_detector(kernels);
            let vision = &detector.clip.model.vision;
            let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])));
            let pixels = detector.pixels(&image).unwrap();
            let windows = window_indices(vision.grid(), 2);
            assert_eq!(windows.len(), 9);
            let (features, values) = detector.window_features(&pixels, 2, WindowMode::Tokens, 9, true).unwrap();
            let tried = RefCell::new(Vec::new());
            let full_above = |fits: usize| {
                let tried = &tried;
                move |embedded: &Tensor, index: &Tensor, with_values: bool| {
                    tried.borrow_mut().push(index.dim(0)?);
                    if index.dim(0)? > fits {
                        return Err(candle_core::Error::Msg(OUT_OF_MEMORY.into()));
                    }
                    vision.forward_windows(embedded, index, with_values)
                }
            };
            let (split_features, split_values) = detector.window_features_tokens_through(&pixels, &windows, 9, true, &full_above(2)).unwrap();
            assert_eq!(*tried.borrow(), [9, 4, 2, 2, 2, 2, 1], "{kernels:?}");
            assert_eq!(split_features.to_vec2::<f32>().unwrap(), features.to_vec2::<f32>().unwrap(), "{kernels:?}");
            let flat = |t: Option<Tensor>| t.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(flat(split_values), flat(values), "{kernels:?}");
            let err = detector.window_features_tokens_through(&pixels, &windows, 9, true, &full_above(0)).unwrap_err();
            assert!(matches!(err, DetectError::OutOfMemory { batch: 9, .. }), "{err:?}");
            let message = err.to_string();
            for said in ["CPU", "window batch of 9", "CUDA_ERROR_OUT_OF_MEMORY", "--precision f16", "--cpu"] {
                assert!(message.contains(said), "`{said}` not in: {message}");
            }
        }
    }
}
