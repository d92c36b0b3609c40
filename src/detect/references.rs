//! Few-shot references: a class's normal reference images and the memory bank
//! built from them (METHOD section 5: CLIP window features; 5b: DINOv2 patches).
//!
//! The images live in the class's recipe, `<recipes>/<class>/refs/`, as copies (the user's files are
//! never moved or changed). Their features are cached on disk per backbone and model
//! (CLIP: also per window mode and scale) and per image content, so a bank is rebuilt
//! only for new images or when the model changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use image::DynamicImage;

use super::DetectError;
use super::bank::{BankFeatures, ReferenceBank};
use super::engine::Detector;
use super::inputs::is_image;
use super::memory::MemoryBank;
use super::settings::{DetectSettings, RefsBackbone, WindowMode};
use super::text_cache::fnv1a;
use crate::clip::{self, Precision};

/// The images in `dir`, sorted; a missing folder has none.
pub fn list_references(dir: &Path) -> Result<Vec<PathBuf>, DetectError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let failed = |e: std::io::Error| DetectError::References(format!("cannot list {}: {e}", dir.display()));
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(failed)? {
        let path = entry.map_err(failed)?.path();
        if path.is_file() && is_image(&path) {
            images.push(path);
        }
    }
    images.sort();
    Ok(images)
}

/// Copies `images` into `dir` (decoding each first, so a broken file is refused);
/// returns the copies. An image already there (same name, same bytes) is skipped;
/// a name taken by other bytes gets a numeric suffix.
pub fn add_references(dir: &Path, images: &[PathBuf]) -> Result<Vec<PathBuf>, DetectError> {
    for image in images {
        clip::open_image(image)?;
    }
    copy_references(dir, images)
}

/// What `add_readable_references` did.
#[derive(Debug, Default)]
pub struct ReferencesAdded {
    /// The new copies.
    pub added: Vec<PathBuf>,
    /// Files that could not be decoded, with the reason: not copied.
    pub refused: Vec<(PathBuf, String)>,
}

/// `add_references` for many files at once (a dropped folder): the readable images
/// are copied, the others are refused and named instead of failing the rest.
pub fn add_readable_references(dir: &Path, images: &[PathBuf]) -> Result<ReferencesAdded, DetectError> {
    let mut readable = Vec::with_capacity(images.len());
    let mut refused = Vec::new();
    for image in images {
        match clip::open_image(image) {
            Ok(_) => readable.push(image.clone()),
            Err(e) => refused.push((image.clone(), e.to_string())),
        }
    }
    Ok(ReferencesAdded { added: copy_references(dir, &readable)?, refused })
}

fn copy_references(dir: &Path, images: &[PathBuf]) -> Result<Vec<PathBuf>, DetectError> {
    std::fs::create_dir_all(dir).map_err(|e| DetectError::References(format!("cannot create {}: {e}", dir.display())))?;
    let mut added = Vec::new();
    for image in images {
        let same_name = image.file_name().map(|n| dir.join(n));
        if same_name.as_ref().is_some_and(|copy| same_bytes(image, copy)) {
            continue;
        }
        let stem = image.file_stem().and_then(|s| s.to_str()).unwrap_or("reference");
        let ext = image.extension().and_then(|s| s.to_str()).unwrap_or("png");
        let mut target = dir.join(format!("{stem}.{ext}"));
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{stem}-{n}.{ext}"));
            n += 1;
        }
        // Through `write_atomic`: a copy is whole or absent, and gets the mode a new file
        // gets (not the original's, which may be read-only).
        let bytes = std::fs::read(image).map_err(|e| DetectError::References(format!("cannot read {}: {e}", image.display())))?;
        crate::files::write_atomic(&target, &bytes).map_err(|e| {
            DetectError::References(format!("cannot copy {} to {}: {e}", image.display(), target.display()))
        })?;
        added.push(target);
    }
    Ok(added)
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).ok();
    a == b || (size(a).is_some() && size(a) == size(b) && std::fs::read(a).ok() == std::fs::read(b).ok())
}

/// Removes the references named `names` (file names in `dir`) and returns them.
pub fn remove_references(dir: &Path, names: &[String]) -> Result<Vec<PathBuf>, DetectError> {
    let present = list_references(dir)?;
    let mut removed = Vec::new();
    for name in names {
        let file_name = Path::new(name).file_name().unwrap_or_default();
        let Some(path) = present.iter().find(|p| p.file_name() == Some(file_name)) else {
            let known: Vec<String> =
                present.iter().filter_map(|p| p.file_name()?.to_str().map(str::to_owned)).collect();
            return Err(DetectError::References(format!(
                "`{name}` is not a reference in {} (there: {})",
                dir.display(),
                if known.is_empty() { "none".into() } else { known.join(", ") }
            )));
        };
        std::fs::remove_file(path).map_err(|e| DetectError::References(format!("cannot remove {}: {e}", path.display())))?;
        removed.push(path.clone());
    }
    Ok(removed)
}

/// `shots` of `candidates` drawn without replacement, repeatably for a `seed`
/// (SplitMix64 + Fisher-Yates: the same draw on every platform and version).
pub fn draw(candidates: &[PathBuf], shots: usize, seed: u64) -> Vec<PathBuf> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut pool = candidates.to_vec();
    let take = shots.min(pool.len());
    for i in 0..take {
        let j = i + (next() % (pool.len() - i) as u64) as usize;
        pool.swap(i, j);
    }
    pool.truncate(take);
    pool
}

/// The outcome of building a bank.
pub struct BankBuild {
    /// `None` when no reference could be used: zero-shot.
    pub bank: Option<ReferenceBank>,
    /// References whose features were computed now / read from the disk cache.
    pub computed: usize,
    pub reused: usize,
    /// References that could not be decoded, with the reason: skipped, not fatal.
    pub skipped: Vec<(PathBuf, String)>,
}

impl Detector {
    /// The memory bank of the reference `files` for the scales and window mode of
    /// `settings`; a file that cannot be read or decoded is skipped and reported.
    pub fn build_reference_bank(
        &self,
        files: &[PathBuf],
        settings: &DetectSettings,
        progress: impl FnMut(usize, usize),
    ) -> Result<BankBuild, DetectError> {
        self.build_reference_bank_unless(files, settings, progress, &|| false)
    }

    /// `build_reference_bank` that stops with `DetectError::Cancelled` before the next
    /// image once `cancelled` says so (the app's Cancel button).
    pub fn build_reference_bank_unless(
        &self,
        files: &[PathBuf],
        settings: &DetectSettings,
        mut progress: impl FnMut(usize, usize),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<BankBuild, DetectError> {
        let mut images = Vec::with_capacity(files.len());
        let mut skipped = Vec::new();
        for file in files {
            match clip::open_image(file) {
                Ok(image) => images.push((file.clone(), image)),
                Err(e) => skipped.push((file.clone(), e.to_string())),
            }
        }
        let mut build = self.reference_bank_unless(&images, settings, &mut progress, cancelled)?;
        build.skipped = skipped;
        Ok(build)
    }

    /// The memory bank of decoded reference images. Features are cached under
    /// `<cache>/references/<model>/`, keyed by the pixels, the window mode and the scale.
    pub fn reference_bank(
        &self,
        images: &[(PathBuf, DynamicImage)],
        settings: &DetectSettings,
        progress: impl FnMut(usize, usize),
    ) -> Result<BankBuild, DetectError> {
        self.reference_bank_unless(images, settings, progress, &|| false)
    }

    fn reference_bank_unless(
        &self,
        images: &[(PathBuf, DynamicImage)],
        settings: &DetectSettings,
        progress: impl FnMut(usize, usize),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<BankBuild, DetectError> {
        settings.validate(self.clip.model.vision.grid())?;
        match settings.refs_backbone {
            RefsBackbone::Clip => self.clip_reference_bank(images, settings, progress, cancelled),
            RefsBackbone::Dinov2 => self.dinov2_reference_bank(images, progress, cancelled),
        }
    }

    /// The bank of DINOv2 patch features, cached under `<cache>/references/<model>/`
    /// (the DINOv2 weights' identity) keyed by the pixels.
    fn dinov2_reference_bank(
        &self,
        images: &[(PathBuf, DynamicImage)],
        mut progress: impl FnMut(usize, usize),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<BankBuild, DetectError> {
        let dino = self.dinov2().ok_or_else(|| {
            DetectError::References("DINOv2 reference banks need the DINOv2 model, and none is loaded".into())
        })?;
        let cache = self.cache_dir().map(|d| d.join("references").join(format!("{:016x}", fnv1a(dino.identity().as_bytes()))));
        let mut blocks = Vec::with_capacity(images.len());
        let (mut computed, mut reused) = (0, 0);
        for (i, (_, image)) in images.iter().enumerate() {
            progress(i, images.len());
            if cancelled() {
                return Err(DetectError::Cancelled);
            }
            let file = cache.as_ref().map(|d| d.join(format!("{}-dinov2.safetensors", pixels_key(image))));
            let (features, fresh) = cached_features(file, &dino.device, || Ok(dino.patch_features(image)?))?;
            if fresh { computed += 1 } else { reused += 1 }
            blocks.push(features);
        }
        progress(images.len(), images.len());
        let bank = if images.is_empty() {
            None
        } else {
            Some(ReferenceBank {
                files: images.iter().map(|(f, _)| f.clone()).collect(),
                sizes: images.iter().map(|(_, i)| (i.width(), i.height())).collect(),
                features: BankFeatures::Dinov2Patches(MemoryBank::new(&blocks)?),
            })
        };
        Ok(BankBuild { bank, computed, reused, skipped: Vec::new() })
    }

    /// The bank of CLIP window features, cached under `<cache>/references/<model>/`
    /// keyed by the pixels, the window mode and the scale.
    fn clip_reference_bank(
        &self,
        images: &[(PathBuf, DynamicImage)],
        settings: &DetectSettings,
        mut progress: impl FnMut(usize, usize),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<BankBuild, DetectError> {
        // Image features depend on the image tower's precision (text features do not);
        // f32 keeps the key of caches written before bf16 existed. bf16 on the native
        // CPU kernels (f32 activations) and in candle's bf16 (GPUs) differ: the latter
        // is keyed by its type too.
        let vision = &self.clip.model.vision;
        let tower = match (vision.precision(), vision.dtype()) {
            (Precision::F32, _) => self.model_identity().to_owned(),
            (other, DType::F32) => format!("{} {}", self.model_identity(), other.name()),
            (other, dtype) => format!("{} {} {dtype:?}", self.model_identity(), other.name()),
        };
        let cache = self.cache_dir().map(|d| d.join("references").join(format!("{:016x}", fnv1a(tower.as_bytes()))));
        let mode = match settings.window_mode {
            WindowMode::Tokens => "tokens",
            WindowMode::Pixels => "pixels",
        };
        let mut per_scale: HashMap<usize, Vec<Tensor>> = HashMap::new();
        let (mut computed, mut reused) = (0, 0);
        for (i, (_, image)) in images.iter().enumerate() {
            progress(i, images.len());
            if cancelled() {
                return Err(DetectError::Cancelled);
            }
            let key = format!("{}-{mode}", pixels_key(image));
            let file = |s: usize| cache.as_ref().map(|d| d.join(format!("{key}-s{s}.safetensors")));
            let mut pixels = None;
            for &s in &settings.scales {
                let (features, _) = cached_features(file(s), &self.clip.device, || {
                    if pixels.is_none() {
                        pixels = Some(self.pixels(image)?);
                    }
                    let pixels = pixels.as_ref().expect("set above");
                    Ok(self.window_features(pixels, s, settings.window_mode, settings.window_batch, false)?.0)
                })?;
                per_scale.entry(s).or_default().push(features);
            }
            if pixels.is_some() { computed += 1 } else { reused += 1 }
        }
        progress(images.len(), images.len());
        let bank = if images.is_empty() {
            None
        } else {
            let banks = per_scale
                .into_iter()
                .map(|(s, blocks)| Ok((s, MemoryBank::new(&blocks)?)))
                .collect::<Result<_, candle_core::Error>>()?;
            Some(ReferenceBank {
                files: images.iter().map(|(f, _)| f.clone()).collect(),
                sizes: images.iter().map(|(_, i)| (i.width(), i.height())).collect(),
                features: BankFeatures::ClipWindows { window_mode: settings.window_mode, banks },
            })
        };
        Ok(BankBuild { bank, computed, reused, skipped: Vec::new() })
    }
}

/// A reference's cache key: a hash of its pixels and its size.
fn pixels_key(image: &DynamicImage) -> String {
    let rgb = image.to_rgb8();
    format!("{:016x}-{}x{}", fnv1a(rgb.as_raw()), rgb.width(), rgb.height())
}

/// The features cached in `file`, else `compute`d and written there (best effort: a
/// cache that cannot be written only costs time later); `true` when computed now.
fn cached_features(
    file: Option<PathBuf>,
    device: &candle_core::Device,
    compute: impl FnOnce() -> Result<Tensor, DetectError>,
) -> Result<(Tensor, bool), DetectError> {
    let cached = file
        .as_ref()
        .and_then(|f| candle_core::safetensors::load(f, device).ok())
        .and_then(|mut t| t.remove("features"));
    if let Some(features) = cached {
        return Ok((features, false));
    }
    let features = compute()?;
    if let Some(f) = file
        && let Some(dir) = f.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let _ = candle_core::safetensors::save(&HashMap::from([("features", features.clone())]), f);
    }
    Ok((features, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_repeatable_distinct_and_bounded() {
        let files: Vec<PathBuf> = (0..10).map(|i| PathBuf::from(format!("{i}.png"))).collect();
        let a = draw(&files, 4, 7);
        assert_eq!(a, draw(&files, 4, 7));
        assert_ne!(a, draw(&files, 4, 8));
        let mut unique = a.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        assert_eq!(draw(&files, 50, 1).len(), 10);
        assert!(draw(&files, 0, 1).is_empty());
    }
}
