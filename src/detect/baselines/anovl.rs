//! AnoVL (Deng et al.): training-free adaptation (TFA) and test-time adaptation (TTA).
//!
//! TFA, as AnoVL's public code builds it (the CLIP Surgery dual path): beside the
//! unchanged original path, a V-V path starts from the tokens entering block 1 and
//! in every block adds `OutProj(softmax(V V^T / sqrt(d_head)) V)` (per head) to its own
//! running tokens, with `V` the value projection of `ln_1` of the ORIGINAL path's
//! tokens; it skips the MLP. Dense features are `ln_post(.) @ proj` of the V-V
//! tokens after every quarter of the depth (blocks 3, 6, 9, 12 of a 12-block ViT);
//! each gives a map against the domain-aware state prompts (AnoVL eq. 8), and the
//! maps are averaged. The image score is the original path's global feature.
//!
//! TTA (AnoVL eqs. 9-11): `P' = softmax(P w^T) T + P` with `w` initialised to
//! `T = [f+, f-]`, trained per image for a few AdamW steps on
//! `L = L_d + L_p`:
//! - `L_d = -1/(2M) sum_i [log(1 - S(p'_i)) + log S(p'_i + d_i)]`: clean adapted tokens
//!   are normal, noise-corrupted ones abnormal (eq. 10);
//! - `L_p = -1/M sum_i sum_c S_c(p_i) log S_c(p'_i)`: TFA's two-class prediction on the
//!   unadapted tokens is the soft label of the adapted ones (eq. 11; the OCR'd
//!   equation shows the abnormal term, the public code's loss sums both classes).
//!
//! `S` is the two-class softmax at CLIP's logit scale of the cosines to `[f+, f-]`.

use candle_core::{D, IndexOp, Module, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use image::DynamicImage;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::winclip::{TEMPLATES, compose};
use super::{image_map, label_features, logit_scale, patch_tokens, zero_shot_only};
use crate::clip::model::{ResidualAttentionBlock, VisionTransformer};
use crate::clip::{VisionCapture, l2_normalize};
use crate::detect::engine::abnormal_probability;
use crate::detect::maps::Grid;
use crate::detect::{ClassSpec, DetectError, DetectSettings, Detector, Method, MethodKind, Scored};

/// AnoVL's state words (its public `state_normal` / `state_anomaly`).
pub const NORMAL_STATES: [&str; 7] = [
    "normal {}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
];
pub const ABNORMAL_STATES: [&str; 7] = [
    "damaged {}",
    "abnormal {}",
    "imperfect {}",
    "blemished {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
];

/// The MVTec AD texture classes, which AnoVL prompts with texture domains.
pub const TEXTURE_CLASSES: [&str; 5] = ["carpet", "grid", "leather", "tile", "wood"];

/// AnoVL's three domains replacing "photo" in the 22 base templates. Its public code
/// defines `surf_temp` twice; the second definition, "surface picture", is the one used.
const OBJECT_DOMAINS: [&str; 3] = ["industrial photo", "industrial image", "manufacturing image"];
const TEXTURE_DOMAINS: [&str; 3] = ["industrial photo", "textural photo", "surface picture"];

/// The 22 base templates in one domain, without the final period, as AnoVL writes them
/// ("a cropped industrial photo of the {}", "an industrial photo of a {}").
fn domain_templates(domain: &str) -> Vec<String> {
    TEMPLATES
        .iter()
        .map(|t| {
            let t = t.trim_end_matches('.').replacen("photo", domain, 1);
            let vowel = domain.starts_with(['a', 'e', 'i', 'o', 'u']);
            match t.strip_prefix("a ") {
                Some(rest) if vowel && rest.starts_with(domain) => format!("an {rest}"),
                _ => t,
            }
        })
        .collect()
}

/// Domain-aware state prompts (AnoVL eq. 8: templates x domains x states): (normal, abnormal).
pub fn anovl_prompts(class: &ClassSpec) -> (Vec<String>, Vec<String>) {
    let domains = if TEXTURE_CLASSES.contains(&class.id.as_str()) { TEXTURE_DOMAINS } else { OBJECT_DOMAINS };
    let templates: Vec<String> = domains.iter().flat_map(|d| domain_templates(d)).collect();
    (
        compose(&templates, &NORMAL_STATES, &class.name),
        compose(&templates, &ABNORMAL_STATES, &class.name),
    )
}

/// 1-based blocks whose V-V tokens become dense features: every quarter of the depth
/// (3, 6, 9, 12 for 12 blocks; fewer, distinct ones for shallow models).
pub fn tap_blocks(depth: usize) -> Vec<usize> {
    let mut blocks: Vec<usize> = (1..=4).map(|q| (q * depth).div_ceil(4)).filter(|&b| b > 0).collect();
    blocks.dedup();
    blocks
}

/// What the V-V path adds to its running tokens in one block: V-V attention of the
/// values of `ln_1(original)`, through the output projection.
pub fn value_value_step(block: &ResidualAttentionBlock, original: &Tensor) -> candle_core::Result<Tensor> {
    block.attn.value_value(&block.attn.values(&block.ln_1.forward(original)?)?)
}

/// TFA's features of one image.
pub struct DenseFeatures {
    /// The original path's unit global feature [1, E].
    pub global: Tensor,
    /// Per tapped block, the V-V path's unit patch features [M, E].
    pub layers: Vec<Tensor>,
}

/// Runs the original path and the V-V path beside it (pixels [1, 3, S, S]).
pub fn dense_features(vision: &VisionTransformer, pixels: &Tensor) -> candle_core::Result<DenseFeatures> {
    let capture = VisionCapture { layers: true, ..Default::default() };
    // `original[i]` enters block i; the V-V path reads the values from it.
    let (tokens, original, _) = vision.forward_embedded(&vision.embed(pixels)?, capture)?;
    let global = l2_normalize(&vision.project(&tokens.i((.., 0, ..))?.contiguous()?)?)?;
    let taps = tap_blocks(vision.blocks().len());
    let mut value_path = original[0].clone();
    let mut layers = Vec::with_capacity(taps.len());
    for (i, block) in vision.blocks().iter().enumerate() {
        value_path = (value_path + value_value_step(block, &original[i])?)?;
        if taps.contains(&(i + 1)) {
            layers.push(l2_normalize(&vision.project(&patch_tokens(&value_path)?)?)?);
        }
    }
    Ok(DenseFeatures { global, layers })
}

/// AnoVL's test-time adaptation (the paper's values where it gives them).
#[derive(Debug, Clone, PartialEq)]
pub struct TtaSettings {
    /// AdamW steps per image (the paper's 5 "epochs" over one image).
    pub steps: usize,
    pub learning_rate: f64,
    /// Expected norm of the noise `d_i` relative to the unit tokens. The paper leaves
    /// `N(mu, sigma^2)` open; the public code adds N(0, 0.055^2) per component to raw
    /// tokens of norm O(10), about 10 % of their norm, so: mu = 0 and
    /// sigma = relative_noise / sqrt(E).
    pub relative_noise: f32,
    /// Seeds the noise; every image starts from it, so a score does not depend on
    /// the order images are scored in.
    pub seed: u64,
}

impl Default for TtaSettings {
    fn default() -> Self {
        Self { steps: 5, learning_rate: 1e-3, relative_noise: 0.1, seed: 0 }
    }
}

/// `P' = softmax(P w^T) T + P`.
fn adapter(p: &Tensor, omega: &Tensor, text: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::softmax(&p.matmul(&omega.t()?)?, D::Minus1)?.matmul(text)? + p
}

/// Log of the two-class softmax of `scale` times the cosines to `[f+, f-]` [N, 2].
fn log_probabilities(x: &Tensor, text: &Tensor, scale: f32) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(&(l2_normalize(x)?.matmul(&text.t()?)? * scale as f64)?, D::Minus1)
}

/// Trains the adapter on the unit patch features `p` [N, E] and returns the adapted features.
fn test_time_adapt(p: &Tensor, text: &Tensor, scale: f32, settings: &TtaSettings) -> Result<Tensor, DetectError> {
    let (n, e) = p.dims2()?;
    let sigma = settings.relative_noise / (e as f32).sqrt();
    let normal = Normal::new(0f32, sigma)
        .map_err(|err| DetectError::Settings(format!("TTA noise of relative size {}: {err}", settings.relative_noise)))?;
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    // TFA's prediction on the unadapted tokens: the pseudo-labels of L_p.
    let pseudo_labels = log_probabilities(p, text, scale)?.exp()?;
    let omega = Var::from_tensor(text)?;
    let mut optimiser = AdamW::new(
        vec![omega.clone()],
        ParamsAdamW { lr: settings.learning_rate, ..Default::default() },
    )?;
    for _ in 0..settings.steps {
        let adapted = adapter(p, omega.as_tensor(), text)?;
        let noise: Vec<f32> = (0..n * e).map(|_| normal.sample(&mut rng)).collect();
        let noisy = (&adapted + Tensor::from_vec(noise, (n, e), p.device())?)?;
        let clean = log_probabilities(&adapted, text, scale)?;
        let corrupted = log_probabilities(&noisy, text, scale)?;
        let discrimination = ((clean.i((.., 0))?.mean_all()? + corrupted.i((.., 1))?.mean_all()?)? * -0.5)?;
        let pseudo = (pseudo_labels.mul(&clean)?.sum(1)?.mean_all()? * -1.0)?;
        optimiser.backward_step(&(discrimination + pseudo)?)?;
    }
    Ok(adapter(p, omega.as_tensor(), text)?.detach())
}

pub struct Anovl {
    detector: Detector,
    settings: DetectSettings,
    /// `None`: TFA only.
    tta: Option<TtaSettings>,
    text: Option<Tensor>,
}

impl Anovl {
    pub fn tfa(detector: Detector, settings: DetectSettings) -> Self {
        Self { detector, settings, tta: None, text: None }
    }

    pub fn tta(detector: Detector, settings: DetectSettings, tta: TtaSettings) -> Self {
        Self { detector, settings, tta: Some(tta), text: None }
    }

    /// The image score and the patch map (grid x grid), the layers' maps averaged.
    pub fn patch_scores(&self, image: &DynamicImage) -> Result<(f32, Grid), DetectError> {
        let text = self.text.as_ref().ok_or(DetectError::NotPrepared)?;
        let vision = &self.detector.clip.model.vision;
        let scale = logit_scale(&self.detector);
        let dense = dense_features(vision, &self.detector.pixels(image)?)?;
        let image_score = abnormal_probability(&dense.global, text, scale)?[0];
        let layers = match &self.tta {
            None => dense.layers,
            Some(tta) => {
                // One adapter for all tapped layers: their tokens are one set P.
                let m = dense.layers[0].dim(0)?;
                let adapted = l2_normalize(&test_time_adapt(&Tensor::cat(&dense.layers, 0)?, text, scale, tta)?)?;
                (0..dense.layers.len())
                    .map(|l| adapted.narrow(0, l * m, m))
                    .collect::<candle_core::Result<_>>()?
            }
        };
        let per_layer = layers
            .iter()
            .map(|f| abnormal_probability(f, text, scale))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let grid = vision.grid();
        let values = (0..grid * grid)
            .map(|i| per_layer.iter().map(|p| p[i]).sum::<f32>() / per_layer.len() as f32)
            .collect();
        Ok((image_score, Grid::new(grid, grid, values)))
    }
}

impl Method for Anovl {
    fn kind(&self) -> MethodKind {
        if self.tta.is_some() { MethodKind::AnovlTta } else { MethodKind::AnovlTfa }
    }

    fn reseed(&mut self, seed: u64) {
        if let Some(tta) = &mut self.tta {
            tta.seed = seed;
        }
    }

    fn prepare(&mut self, class: &ClassSpec, references: &[DynamicImage]) -> Result<(), DetectError> {
        zero_shot_only(self.kind(), references)?;
        let (normal, abnormal) = anovl_prompts(class);
        self.text = Some(label_features(&mut self.detector, &normal, &abnormal)?);
        Ok(())
    }

    fn score(&mut self, image: &DynamicImage) -> Result<Scored, DetectError> {
        let (image_score, patch_map) = self.patch_scores(image)?;
        Ok(Scored {
            image_score,
            map: image_map(&patch_map, image, self.settings.sigma),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_every_quarter_of_the_depth() {
        assert_eq!(tap_blocks(12), [3, 6, 9, 12]);
        assert_eq!(tap_blocks(24), [6, 12, 18, 24]);
        assert_eq!(tap_blocks(3), [1, 2, 3]);
        assert_eq!(tap_blocks(1), [1]);
    }

    #[test]
    fn domain_templates_read_as_anovl_writes_them() {
        let industrial = domain_templates("industrial photo");
        assert_eq!(industrial.len(), 22);
        assert_eq!(industrial[0], "a cropped industrial photo of the {}");
        assert_eq!(industrial[12], "an industrial photo of a {}");
        assert_eq!(industrial[21], "an industrial photo of a {} for anomaly detection");
        let manufacturing = domain_templates("manufacturing image");
        assert_eq!(manufacturing[13], "a manufacturing image of the {}");
        assert_eq!(domain_templates("surface picture")[8], "a jpeg corrupted surface picture of a {}");
    }

    #[test]
    fn prompts_cross_templates_domains_and_states() {
        let spec = |id: &str, name: &str| ClassSpec {
            id: id.into(),
            name: name.into(),
            prompts: crate::prompts::ExpandedPrompts {
                class: id.into(),
                normal: vec![],
                abnormal: vec![],
                descriptors: vec![],
            },
        };
        let (normal, abnormal) = anovl_prompts(&spec("metal_nut", "metal nut"));
        assert_eq!((normal.len(), abnormal.len()), (66 * 7, 66 * 7));
        assert_eq!(normal[0], "a cropped industrial photo of the normal metal nut");
        assert!(abnormal.contains(&"a manufacturing image of a metal nut with damage".to_string()));
        let (normal, _) = anovl_prompts(&spec("wood", "wood"));
        assert!(normal.contains(&"a textural photo of the flawless wood".to_string()));
        assert!(!normal.iter().any(|p| p.contains("manufacturing")));
    }
}
