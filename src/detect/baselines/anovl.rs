//! AnoVL (Deng et al.): training-free adaptation (TFA) after AnoVL's paper and public
//! code (github.com/hq-deng/AnoVL), and test-time adaptation (TTA) after the paper (the
//! public code's adapter is another one); the README's Baselines section lists where
//! and why this differs from that code.
//!
//! TFA (the CLIP Surgery dual path of the public `open_clip/transformer.py`): beside
//! the unchanged original path, a V-V path starts from the tokens entering block 1 and
//! in every block adds `OutProj(softmax(V V^T / sqrt(d_head)) V)` (per head) to its own
//! running tokens, with `V` the value projection of `ln_1` of the ORIGINAL path's
//! tokens; it skips the MLP. Dense features are `ln_post(.) @ proj` of the V-V patch
//! tokens after the LAST block: the public `vl_test.py` keeps one entry of the tapped
//! token list (`if layer != 6`, with `--features_list 3 6 9 12` the V-V tokens of block
//! 12), and its V-V taps all equal the last block's anyway, since the V-V tokens are
//! accumulated in place (`x += x_res`) in the one tensor every tap refers to. The paper
//! (after eq. 7) takes "the patch tokens from the last layer" too.
//!
//! Scores are AnoVL's eqs. 1-2: the two-class softmax of the RAW cosines to `[f+, f-]`
//! (no logit scale; `vl_test.py` applies `.softmax` to `features @ text_features`).
//! A label's text feature is the mean of its prompts' raw text embeddings, normalised
//! (`prompt_ensemble.py`), over AnoVL's domain-aware state prompts (eq. 8), whose class
//! word is the dataset's folder id as in the public code (`metal_nut`, `pcb1`,
//! `pipe_fryum`; only `macaroni1` / `macaroni2` become `macaroni`). The image score is
//! the original path's global feature on the input alone (the paper: no augmentation),
//! or with [`ImageViews::PublicCode`] the mean over the public code's 22 views.
//!
//! TTA (AnoVL eqs. 9-11, the paper's form): `P' = softmax(P w^T) T + P` with `w`
//! initialised to `T = [f+, f-]`, trained per image for a few AdamW steps on
//! `L = L_d + L_p`:
//! - `L_d = -1/(2M) sum_i [log(1 - S(p'_i)) + log S(p'_i + d_i)]`: clean adapted tokens
//!   are normal, noise-corrupted ones abnormal (eq. 10);
//! - `L_p = -1/M sum_i sum_c S_c(p_i) log S_c(p'_i)`: TFA's two-class prediction on the
//!   unadapted tokens is the soft label of the adapted ones (eq. 11 shows the abnormal
//!   term; both classes are summed here).
//!
//! `S` is the same softmax of raw cosines (the paper's `S_AL`; the public code's TTA
//! losses also take `.softmax` of raw cosines).

pub mod views;

use candle_core::{D, IndexOp, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use image::DynamicImage;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, Normal};

use super::winclip::{TEMPLATES, compose};
use super::{LabelPooling, label_features, patch_tokens, zero_shot_only};
use crate::clip::model::{ResidualAttentionBlock, VisionTransformer};
use crate::clip::{VisionCapture, l2_normalize};
use crate::detect::engine::abnormal_probability;
use crate::detect::maps::Grid;
use crate::detect::{ClassSpec, DetectError, DetectSettings, Detector, Method, MethodKind, Scored};

/// AnoVL's softmax takes the raw cosines: a logit scale of 1 (eqs. 1-2).
const RAW_COSINES: f32 = 1.0;

/// Views per forward batch for the public code's image score (memory bound).
const VIEW_BATCH: usize = 7;

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

/// The class word AnoVL's code puts in its prompts: the dataset's folder id
/// (`metal_nut`, `pcb1`, `pipe_fryum`), except `macaroni1` and `macaroni2`, which its
/// `class_mapping` maps to `macaroni` (the other entries there are commented out).
pub fn prompt_class(id: &str) -> &str {
    match id {
        "macaroni1" | "macaroni2" => "macaroni",
        other => other,
    }
}

/// Domain-aware state prompts (AnoVL eq. 8: templates x domains x states), filled with
/// [`prompt_class`] of the class id: (normal, abnormal).
pub fn anovl_prompts(class: &ClassSpec) -> (Vec<String>, Vec<String>) {
    let domains = if TEXTURE_CLASSES.contains(&class.id.as_str()) { TEXTURE_DOMAINS } else { OBJECT_DOMAINS };
    let templates: Vec<String> = domains.iter().flat_map(|d| domain_templates(d)).collect();
    let name = prompt_class(&class.id);
    (compose(&templates, &NORMAL_STATES, name), compose(&templates, &ABNORMAL_STATES, name))
}

/// What the V-V path adds to its running tokens in one block: V-V attention of the
/// values of `ln_1(original)`, through the output projection. The block computes in
/// its own type (bf16 or f16 on a GPU with `--precision`); the step comes back in
/// `original`'s (f32, as the tower's layers are).
pub fn value_value_step(block: &ResidualAttentionBlock, original: &Tensor) -> candle_core::Result<Tensor> {
    let normed = block.ln_1.forward(&original.to_dtype(block.dtype())?)?;
    block.attn.value_value(&block.attn.values(&normed)?)?.to_dtype(original.dtype())
}

/// TFA's features of one image.
pub struct DenseFeatures {
    /// The original path's unit global feature [1, E].
    pub global: Tensor,
    /// The V-V path's unit patch features after the last block [M, E].
    pub patches: Tensor,
}

/// Runs the original path and the V-V path beside it (pixels [1, 3, S, S]).
pub fn dense_features(vision: &VisionTransformer, pixels: &Tensor) -> candle_core::Result<DenseFeatures> {
    let capture = VisionCapture { layers: true, ..Default::default() };
    // `original[i]` enters block i; the V-V path reads the values from it.
    let (tokens, original, _) = vision.forward_embedded(&vision.embed(pixels)?, capture)?;
    let global = l2_normalize(&vision.project(&tokens.i((.., 0, ..))?.contiguous()?)?)?;
    let mut value_path = original[0].clone();
    for (block, entering) in vision.blocks().iter().zip(&original) {
        value_path = (value_path + value_value_step(block, entering)?)?;
    }
    let patches = l2_normalize(&vision.project(&patch_tokens(&value_path)?)?)?;
    Ok(DenseFeatures { global, patches })
}

/// The views AnoVL's image score averages the abnormal probability over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImageViews {
    /// The input alone, as the paper states ("without any image augmentation").
    #[default]
    Original,
    /// The input and the 21 transformed views of the public code (`utils.py: aug`,
    /// which `vl_test.py` scores on MVTec AD): see [`views`].
    PublicCode,
}

impl ImageViews {
    /// How many views are scored.
    pub fn count(self) -> usize {
        match self {
            Self::Original => 1,
            Self::PublicCode => views::VIEW_COUNT,
        }
    }

    /// The protocol scoring `count` views: 1 (the paper's) or 22 (the public code's).
    pub fn from_count(count: usize) -> Result<Self, DetectError> {
        match count {
            1 => Ok(Self::Original),
            views::VIEW_COUNT => Ok(Self::PublicCode),
            other => Err(DetectError::Settings(format!(
                "AnoVL scores 1 view (the input, as its paper) or {} (its public code's views), not {other}",
                views::VIEW_COUNT
            ))),
        }
    }
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

/// Log of the two-class softmax of the raw cosines to `[f+, f-]` [N, 2].
fn log_probabilities(x: &Tensor, text: &Tensor) -> candle_core::Result<Tensor> {
    candle_nn::ops::log_softmax(&(l2_normalize(x)?.matmul(&text.t()?)? * f64::from(RAW_COSINES))?, D::Minus1)
}

/// Trains the adapter on the unit patch features `p` [N, E] and returns the adapted features.
fn test_time_adapt(p: &Tensor, text: &Tensor, settings: &TtaSettings) -> Result<Tensor, DetectError> {
    let (n, e) = p.dims2()?;
    let sigma = settings.relative_noise / (e as f32).sqrt();
    let normal = Normal::new(0f32, sigma)
        .map_err(|err| DetectError::Settings(format!("TTA noise of relative size {}: {err}", settings.relative_noise)))?;
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    // TFA's prediction on the unadapted tokens: the pseudo-labels of L_p.
    let pseudo_labels = log_probabilities(p, text)?.exp()?;
    let omega = Var::from_tensor(text)?;
    let mut optimiser = AdamW::new(
        vec![omega.clone()],
        ParamsAdamW { lr: settings.learning_rate, ..Default::default() },
    )?;
    for _ in 0..settings.steps {
        let adapted = adapter(p, omega.as_tensor(), text)?;
        let noise: Vec<f32> = (0..n * e).map(|_| normal.sample(&mut rng)).collect();
        let noisy = (&adapted + Tensor::from_vec(noise, (n, e), p.device())?)?;
        let clean = log_probabilities(&adapted, text)?;
        let corrupted = log_probabilities(&noisy, text)?;
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
    views: ImageViews,
    text: Option<Tensor>,
}

impl Anovl {
    pub fn tfa(detector: Detector, settings: DetectSettings) -> Self {
        Self { detector, settings, tta: None, views: ImageViews::default(), text: None }
    }

    pub fn tta(detector: Detector, settings: DetectSettings, tta: TtaSettings) -> Self {
        Self { detector, settings, tta: Some(tta), views: ImageViews::default(), text: None }
    }

    /// The views the image score averages (the input alone by default).
    pub fn with_views(mut self, views: ImageViews) -> Self {
        self.views = views;
        self
    }

    /// The image score and the patch map (grid x grid).
    pub fn patch_scores(&self, image: &DynamicImage) -> Result<(f32, Grid), DetectError> {
        let text = self.text.as_ref().ok_or(DetectError::NotPrepared)?;
        let vision = &self.detector.clip.model.vision;
        let pixels = self.detector.pixels(image)?;
        let dense = dense_features(vision, &pixels)?;
        let image_score = self.image_score(&dense.global, &pixels, text)?;
        let patches = match &self.tta {
            None => dense.patches,
            Some(tta) => l2_normalize(&test_time_adapt(&dense.patches, text, tta)?)?,
        };
        let grid = vision.grid();
        Ok((image_score, Grid::new(grid, grid, abnormal_probability(&patches, text, RAW_COSINES)?)))
    }

    /// The abnormal probability of the global feature, averaged over `self.views`
    /// (`global` is the input's, `pixels` the preprocessed input [1, 3, S, S]).
    fn image_score(&self, global: &Tensor, pixels: &Tensor, text: &Tensor) -> Result<f32, DetectError> {
        let original = abnormal_probability(global, text, RAW_COSINES)?[0];
        if self.views == ImageViews::Original {
            return Ok(original);
        }
        let vision = &self.detector.clip.model.vision;
        // View 0 is the input itself, already scored.
        let all = views::public_code_views(pixels)?;
        let mut total = f64::from(original);
        for start in (1..all.dim(0)?).step_by(VIEW_BATCH) {
            let batch = all.narrow(0, start, VIEW_BATCH.min(all.dim(0)? - start))?;
            let globals = l2_normalize(&vision.forward(&batch)?)?;
            total += abnormal_probability(&globals, text, RAW_COSINES)?.iter().map(|&p| f64::from(p)).sum::<f64>();
        }
        Ok((total / all.dim(0)? as f64) as f32)
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
        self.text = Some(label_features(&mut self.detector, &normal, &abnormal, LabelPooling::RawMean)?);
        Ok(())
    }

    fn score(&mut self, image: &DynamicImage) -> Result<Scored, DetectError> {
        let (image_score, patch_map) = self.patch_scores(image)?;
        Scored::from_patch_map(image_score, &patch_map, image, self.settings.sigma)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, name: &str) -> ClassSpec {
        ClassSpec {
            id: id.into(),
            name: name.into(),
            prompts: crate::prompts::ExpandedPrompts {
                class: id.into(),
                normal: vec![],
                abnormal: vec![],
                descriptors: vec![],
            },
        }
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
        let (normal, abnormal) = anovl_prompts(&spec("bottle", "bottle"));
        assert_eq!((normal.len(), abnormal.len()), (66 * 7, 66 * 7));
        assert_eq!(normal[0], "a cropped industrial photo of the normal bottle");
        assert!(abnormal.contains(&"a manufacturing image of a bottle with damage".to_string()));
        let (normal, _) = anovl_prompts(&spec("wood", "wood"));
        assert!(normal.contains(&"a textural photo of the flawless wood".to_string()));
        assert!(!normal.iter().any(|p| p.contains("manufacturing")));
    }

    #[test]
    fn prompts_name_the_class_by_its_folder_id_as_the_public_code() {
        // The readable name is not what AnoVL's code writes.
        let (normal, abnormal) = anovl_prompts(&spec("metal_nut", "metal nut"));
        assert_eq!(normal[0], "a cropped industrial photo of the normal metal_nut");
        assert!(abnormal.contains(&"a manufacturing image of a metal_nut with damage".to_string()));
        assert!(!normal.iter().chain(&abnormal).any(|p| p.contains("metal nut")));
        for (id, name, word) in [
            ("pcb1", "printed circuit board", "pcb1"),
            ("pipe_fryum", "pipe fryum", "pipe_fryum"),
            ("macaroni1", "macaroni", "macaroni"),
            ("macaroni2", "macaroni", "macaroni"),
        ] {
            let (normal, _) = anovl_prompts(&spec(id, name));
            assert_eq!(normal[0], format!("a cropped industrial photo of the normal {word}"), "{id}");
        }
    }

    #[test]
    fn the_paper_scores_one_view_and_the_public_code_22() {
        assert_eq!(ImageViews::default(), ImageViews::Original);
        assert_eq!(ImageViews::from_count(1).unwrap(), ImageViews::Original);
        assert_eq!(ImageViews::from_count(22).unwrap(), ImageViews::PublicCode);
        assert_eq!(ImageViews::PublicCode.count(), 22);
        for bad in [0, 2, 21, 23] {
            assert!(matches!(ImageViews::from_count(bad), Err(DetectError::Settings(_))), "{bad}");
        }
    }
}
