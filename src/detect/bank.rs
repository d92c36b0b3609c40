//! A class's memory bank as the detector reads it: the references' CLIP window
//! features per scale or their DINOv2 patch features, where each bank entry came
//! from, and a query's patches matched against a DINOv2 bank. Building banks from
//! reference images is `references`.

use std::collections::HashMap;
use std::path::PathBuf;

use image::DynamicImage;

use super::DetectError;
use super::maps::Grid;
use super::memory::{MemoryBank, Nearest};
use super::settings::{DetectSettings, RefsBackbone, WindowMode};
use crate::dinov2::{Dinov2, GRID};

/// A class's memory bank: the references' CLIP window features at every scale, or
/// their DINOv2 patch features.
pub struct ReferenceBank {
    pub files: Vec<PathBuf>,
    /// Size of each reference image, to map a bank window back to its pixels.
    pub sizes: Vec<(u32, u32)>,
    pub features: BankFeatures,
}

/// What a reference bank holds.
pub enum BankFeatures {
    /// CLIP window features, one bank per window scale (METHOD section 5).
    ClipWindows { window_mode: WindowMode, banks: HashMap<usize, MemoryBank> },
    /// DINOv2 patch features, [`crate::dinov2::GRID`]^2 per reference (METHOD section 5b).
    Dinov2Patches(MemoryBank),
}

impl ReferenceBank {
    /// The CLIP bank of window size `scale`, if it was built.
    pub fn scale(&self, scale: usize) -> Option<&MemoryBank> {
        match &self.features {
            BankFeatures::ClipWindows { banks, .. } => banks.get(&scale),
            BankFeatures::Dinov2Patches(_) => None,
        }
    }

    /// The DINOv2 patch bank, if this is one.
    pub fn dinov2_patches(&self) -> Option<&MemoryBank> {
        match &self.features {
            BankFeatures::Dinov2Patches(bank) => Some(bank),
            BankFeatures::ClipWindows { .. } => None,
        }
    }

    /// Whether this bank serves `settings`: the same backbone, and for CLIP the same
    /// window mode and every scale.
    pub fn serves(&self, settings: &DetectSettings) -> bool {
        match (&self.features, settings.refs_backbone) {
            (BankFeatures::ClipWindows { window_mode, banks }, RefsBackbone::Clip) => {
                *window_mode == settings.window_mode && settings.scales.iter().all(|s| banks.contains_key(s))
            }
            (BankFeatures::Dinov2Patches(_), RefsBackbone::Dinov2) => true,
            _ => false,
        }
    }

    /// The bank of every reference but the `reference`-th (leave-one-out: scoring a
    /// reference against a bank that holds it gives it a few-shot score of 0). `None`
    /// when it is the only one.
    pub fn without(&self, reference: usize) -> Result<Option<ReferenceBank>, DetectError> {
        let features = match &self.features {
            BankFeatures::ClipWindows { window_mode, banks } => {
                let mut rest = HashMap::new();
                for (&s, bank) in banks {
                    match bank.without_reference(reference)? {
                        Some(kept) => rest.insert(s, kept),
                        None => return Ok(None),
                    };
                }
                BankFeatures::ClipWindows { window_mode: *window_mode, banks: rest }
            }
            BankFeatures::Dinov2Patches(bank) => match bank.without_reference(reference)? {
                Some(kept) => BankFeatures::Dinov2Patches(kept),
                None => return Ok(None),
            },
        };
        fn others<T: Clone>(items: &[T], left_out: usize) -> Vec<T> {
            items.iter().enumerate().filter(|(i, _)| *i != left_out).map(|(_, x)| x.clone()).collect()
        }
        Ok(Some(ReferenceBank { files: others(&self.files, reference), sizes: others(&self.sizes, reference), features }))
    }
}

/// Where a window of a reference lies, for showing it beside the query.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReferenceRegion {
    pub file: PathBuf,
    /// Pixel box `[x0, y0, x1, y1)` in the reference image.
    pub region: [u32; 4],
    pub similarity: f32,
}

impl ReferenceBank {
    /// The pixel box of the nearest window `found` at window size `scale` on a
    /// `grid` x `grid` patch grid (DINOv2 patches: scale 1 on its grid).
    pub fn region(&self, found: &Nearest, scale: usize, grid: usize) -> ReferenceRegion {
        let positions = grid + 1 - scale;
        let (top, left) = (found.origin.index / positions, found.origin.index % positions);
        let (w, h) = self.sizes[found.origin.reference];
        let x = |patch: usize| (patch as u64 * u64::from(w) / grid as u64) as u32;
        let y = |patch: usize| (patch as u64 * u64::from(h) / grid as u64) as u32;
        ReferenceRegion {
            file: self.files[found.origin.reference].clone(),
            region: [x(left), y(top), x(left + scale), y(top + scale)],
            similarity: found.similarity,
        }
    }
}

/// A query image's patches against a DINOv2 bank.
pub struct PatchMatch {
    /// Each patch's nearest bank patch, row-major over the 37 x 37 grid.
    pub nearest: Vec<Nearest>,
}

impl PatchMatch {
    /// The query's patches against `bank` (a DINOv2 bank, else an error) by `dino`
    /// (the detector's DINOv2, if it has one).
    pub fn of(dino: Option<&Dinov2>, bank: &ReferenceBank, image: &DynamicImage) -> Result<Self, DetectError> {
        let (Some(dino), Some(patches)) = (dino, bank.dinov2_patches()) else {
            return Err(DetectError::References(
                "a DINOv2 reference bank and the DINOv2 model are needed to match DINOv2 patches".into(),
            ));
        };
        Ok(Self { nearest: patches.nearest(&dino.patch_features(image)?)? })
    }

    /// The patch map [GRID x GRID] of `score` applied to each nearest similarity.
    pub fn map(&self, score: impl Fn(f32) -> f32) -> Grid {
        Grid::new(GRID, GRID, self.nearest.iter().map(|n| score(n.similarity)).collect())
    }
}
