//! The ALFA detector (METHOD sections 2 to 4): one engine the CLI, the evaluation
//! and the GUI all call. It owns the model and the text-feature cache, takes an
//! image and settings, and returns a result; it prints nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{D, DType, IndexOp, Tensor};
use image::DynamicImage;
use serde::Serialize;

use super::context::{ContextualSelection, contextual_scoring};
use super::maps::{Grid, gaussian_blur, harmonic_mean, harmonic_patch_map, mean_patch_map, resize_bilinear, window_indices};
use super::bank::{PatchMatch, ReferenceBank, ReferenceRegion};
use super::memory::{few_shot_score, mean_of_top_percent};
use super::settings::{DetectSettings, RefsBackbone, WindowMode};
use super::ridge::project_text;
use super::text_cache::TextFeatureCache;
use super::{DetectError, batching, ensure_finite};
use crate::clip::preprocess::{Preprocessor, ResizeMode};
use crate::clip::{Clip, VisionCapture, l2_normalize};
use crate::dinov2::{Dinov2, GRID as DINO_GRID};
use crate::prompts::{ExpandedPrompts, PromptSource};

/// A window forward with `VisionTransformer::forward_windows`'s arguments and result:
/// the seam through which the engine's tokens mode runs each batch.
pub(crate) type WindowForward<'a> = dyn Fn(&Tensor, &Tensor, bool) -> candle_core::Result<(Tensor, Option<Tensor>)> + 'a;

/// A class's prompts with their (normalised) text features.
pub struct ClassPrompts {
    pub prompts: ExpandedPrompts,
    normal: Tensor,
    abnormal: Tensor,
    descriptors: Tensor,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptVerdict {
    pub text: String,
    pub source: PromptSource,
    /// Cosine between the image and the prompt, `d(t)`.
    pub similarity: f32,
    /// Contextual score `S_c(t)`.
    pub score: f32,
    pub kept: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptReport {
    pub normal: Vec<PromptVerdict>,
    pub abnormal: Vec<PromptVerdict>,
    /// A label lost every prompt and kept its best ones instead.
    pub normal_fallback: bool,
    pub abnormal_fallback: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DescriptorMatch {
    pub text: String,
    pub similarity: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub stage: &'static str,
    pub seconds: f64,
}

/// What the engine knows of an image before its result ([`Detector::detect_progressive`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Partial {
    /// The global pass and the prompts are done: the global score `S_G`.
    Global { global_score: f32 },
    /// Window scale `scale` is done, the `done`-th of `total`: the map of the scales so
    /// far at the image's resolution (smoothed as the final one) and the image score
    /// it gives.
    Scale { scale: usize, done: usize, total: usize, image_score: f32, map: Grid },
}

/// Everything the engine knows about one image.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// `(S_G + max S_L) / 2`.
    pub image_score: f32,
    /// `S_G`: the global score.
    pub global_score: f32,
    /// `max S_L`: the largest value of the patch map.
    pub local_max: f32,
    /// The anomaly map at the input image's resolution.
    #[serde(skip)]
    pub map: Grid,
    /// The patch-level map before upsampling (grid x grid; with a DINOv2 bank, on
    /// DINOv2's 37 x 37 grid).
    #[serde(skip)]
    pub patch_map: Grid,
    pub prompts: PromptReport,
    pub descriptors: Vec<DescriptorMatch>,
    /// Present in few-shot mode.
    pub few_shot: Option<FewShotReport>,
    pub timings: Vec<StageTime>,
}

/// What the references say about an image.
#[derive(Debug, Clone, Serialize)]
pub struct FewShotReport {
    pub references: usize,
    /// The features of the bank: CLIP windows or DINOv2 patches.
    pub backbone: RefsBackbone,
    /// The few-shot image score, added to the image score: the few-shot map's maximum
    /// (CLIP windows), or the mean of its top 1% (DINOv2 patches, as AnomalyDINO).
    pub max_score: f32,
    /// The patch `[x, y]` of the grid where the final map peaks (the few-shot map's grid).
    pub worst_patch: [usize; 2],
    /// The reference window (or DINOv2 patch) nearest to the query's there.
    pub nearest: Option<ReferenceRegion>,
    /// The few-shot patch map (grid x grid) before fusion.
    #[serde(skip)]
    pub map: Grid,
}

pub struct Detector {
    /// Shared: `share` makes another detector on the same weights without a copy.
    pub clip: std::sync::Arc<Clip>,
    cache: TextFeatureCache,
    cache_dir: Option<PathBuf>,
    model_identity: String,
    /// Detection sees the whole image squashed to the model's square input: a
    /// centre crop would hide defects near the border of non-square images.
    preprocessor: Preprocessor,
    /// The backbone of DINOv2 reference banks (`RefsBackbone::Dinov2`), when loaded.
    dinov2: Option<std::sync::Arc<Dinov2>>,
}

impl Detector {
    /// `model_identity` keys the text-feature cache in `cache_dir` (memory only if `None`).
    pub fn new(clip: Clip, model_identity: &str, cache_dir: Option<&Path>) -> Self {
        let dim = clip.config.model_cfg.embed_dim;
        let mut preprocessor = clip.preprocessor.clone();
        preprocessor.resize_mode = ResizeMode::Squash;
        Self {
            cache: TextFeatureCache::open(cache_dir, model_identity, dim),
            cache_dir: cache_dir.map(Path::to_owned),
            model_identity: model_identity.to_owned(),
            clip: std::sync::Arc::new(clip),
            preprocessor,
            dinov2: None,
        }
    }

    /// This detector with DINOv2 for reference banks of `RefsBackbone::Dinov2`.
    pub fn with_dinov2(mut self, dinov2: std::sync::Arc<Dinov2>) -> Self {
        self.dinov2 = Some(dinov2);
        self
    }

    /// The DINOv2 backbone, when one was given.
    pub fn dinov2(&self) -> Option<&std::sync::Arc<Dinov2>> {
        self.dinov2.as_ref()
    }

    /// Another detector on the same loaded model (the weights are shared, not
    /// copied), with a text-feature cache of its own: the app runs a baseline
    /// beside ALFA this way.
    pub fn share(&self) -> Self {
        let dim = self.clip.config.model_cfg.embed_dim;
        Self {
            cache: TextFeatureCache::open(self.cache_dir.as_deref(), &self.model_identity, dim),
            cache_dir: self.cache_dir.clone(),
            model_identity: self.model_identity.clone(),
            clip: self.clip.clone(),
            preprocessor: self.preprocessor.clone(),
            dinov2: self.dinov2.clone(),
        }
    }

    /// Where text features and reference features are cached (`None`: memory only).
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    pub fn model_identity(&self) -> &str {
        &self.model_identity
    }

    /// Texts that went through the text tower so far (cache misses).
    pub fn texts_encoded(&self) -> usize {
        self.cache.encoded
    }

    /// The image squashed to the model's input, normalised [1, 3, S, S].
    pub fn pixels(&self, image: &DynamicImage) -> Result<Tensor, DetectError> {
        Ok(self.preprocessor.tensor(image, &self.clip.device)?.unsqueeze(0)?)
    }

    /// Normalised text features [N, E] of `texts`, encoded only when not cached.
    pub fn text_features(&mut self, texts: &[String]) -> Result<Tensor, DetectError> {
        Ok(self.cache.features(&self.clip, texts)?)
    }

    /// The text tower's features of `texts` before normalisation [N, E], encoded only
    /// when not cached (the cache keeps each text's norm beside its unit feature).
    pub fn raw_text_features(&mut self, texts: &[String]) -> Result<Tensor, DetectError> {
        Ok(self.cache.raw_features(&self.clip, texts)?)
    }

    /// Encodes (or fetches from the cache) a class's prompts and descriptors.
    pub fn encode_class(&mut self, prompts: ExpandedPrompts) -> Result<ClassPrompts, DetectError> {
        if prompts.normal.is_empty() || prompts.abnormal.is_empty() {
            return Err(DetectError::EmptyLabel(prompts.class.clone()));
        }
        let texts = |list: &[crate::prompts::Prompt]| list.iter().map(|p| p.text.clone()).collect::<Vec<_>>();
        let normal = self.text_features(&texts(&prompts.normal))?;
        let abnormal = self.text_features(&texts(&prompts.abnormal))?;
        let descriptors = if prompts.descriptors.is_empty() {
            Tensor::zeros((0, self.clip.config.model_cfg.embed_dim), DType::F32, &self.clip.device)?
        } else {
            self.text_features(&prompts.descriptors)?
        };
        Ok(ClassPrompts {
            prompts,
            normal,
            abnormal,
            descriptors,
        })
    }

    /// Zero-shot detection.
    pub fn detect(
        &self,
        image: &DynamicImage,
        class: &ClassPrompts,
        settings: &DetectSettings,
    ) -> Result<Detection, DetectError> {
        self.detect_with_references(image, class, None, settings)
    }

    /// Detection, few-shot when a reference bank is given (METHOD section 5): the
    /// few-shot map is averaged with the zero-shot local map and its maximum is added
    /// to the image score.
    pub fn detect_with_references(
        &self,
        image: &DynamicImage,
        class: &ClassPrompts,
        references: Option<&ReferenceBank>,
        settings: &DetectSettings,
    ) -> Result<Detection, DetectError> {
        self.detect_progressive(image, class, references, settings, None)
    }

    /// [`Self::detect_with_references`], telling `progress` what is known before the
    /// result: `S_G` after the global pass, then the map of the window scales done so
    /// far after each scale but the last. The result is the same as without `progress`
    /// (the same computation; the partial maps are extra work only when asked for).
    pub fn detect_progressive(
        &self,
        image: &DynamicImage,
        class: &ClassPrompts,
        references: Option<&ReferenceBank>,
        settings: &DetectSettings,
        mut progress: Option<&mut dyn FnMut(Partial)>,
    ) -> Result<Detection, DetectError> {
        let grid = self.clip.model.vision.grid();
        settings.validate(grid)?;
        if let Some(bank) = references
            && !bank.serves(settings)
        {
            return Err(DetectError::Settings(
                "the reference bank was built with another backbone, other scales or another window mode: rebuild it".into(),
            ));
        }
        let mut timings = Vec::new();
        // A GPU runs operations after they are queued: each stage waits for its own
        // (a no-op on the CPU), so that its time is not counted in a later stage.
        let device = self.clip.device.clone();
        let mut clock = Instant::now();
        let mut lap = |stage: &'static str, timings: &mut Vec<StageTime>| -> candle_core::Result<()> {
            device.synchronize()?;
            timings.push(StageTime { stage, seconds: clock.elapsed().as_secs_f64() });
            clock = Instant::now();
            Ok(())
        };
        let vision = &self.clip.model.vision;
        let scale = self.clip.model.logit_scale.min(100.0);

        let pixels = self.pixels(image)?;
        lap("preprocess", &mut timings)?;

        // Global pass: the image feature and the value features of every token.
        let global = vision.forward_detailed(&pixels, VisionCapture { last_values: true, class_only: true, ..Default::default() })?;
        let image_feature = l2_normalize(&global.pooled)?; // [1, E]
        let global_values = vision.project_values(&global.last_values.expect("captured"))?.i(0)?; // [L, E]
        lap("global", &mut timings)?;

        // Contextual scoring of the prompts for this image.
        let sims = |features: &Tensor| -> candle_core::Result<Vec<f32>> {
            features.matmul(&image_feature.t()?)?.squeeze(1)?.to_vec1::<f32>()
        };
        let normal_sims = sims(&class.normal)?;
        let abnormal_sims = sims(&class.abnormal)?;
        let selection = contextual_scoring(&normal_sims, &abnormal_sims, settings.context_k, settings.context_tau)
            .ok_or_else(|| DetectError::EmptyLabel(class.prompts.class.clone()))?;
        let text_features = Tensor::cat(
            &[&kept_mean(&class.normal, &selection.normal)?, &kept_mean(&class.abnormal, &selection.abnormal)?],
            0,
        )?; // [2, E]: f+, f-
        let global_score = abnormal_probability(&image_feature, &text_features, scale)?[0];
        lap("prompts", &mut timings)?;
        if let Some(progress) = progress.as_mut() {
            progress(Partial::Global { global_score });
        }

        // Local windows.
        let text_rows = text_features.flatten_all()?.to_vec1::<f32>()?;
        let e = self.clip.config.model_cfg.embed_dim;
        let global_rows = global_values.to_vec2::<f32>()?; // [L, E]
        let mut scale_maps = Vec::with_capacity(settings.scales.len());
        let mut few_shot_maps = Vec::new();
        let mut nearest_windows = Vec::new();
        let mut window_time = 0.0;
        let mut aligner_time = 0.0;
        for &s in &settings.scales {
            let windows = window_indices(grid, s);
            let start = Instant::now();
            let (local_features, local_values) =
                self.window_features(&pixels, s, settings.window_mode, settings.window_batch, settings.aligner)?;
            self.clip.device.synchronize()?;
            window_time += start.elapsed().as_secs_f64();
            let start = Instant::now();
            if let Some(bank) = references.and_then(|r| r.scale(s)) {
                let nearest = bank.nearest(&local_features)?;
                let scores: Vec<f32> = nearest.iter().map(|n| few_shot_score(n.similarity)).collect();
                few_shot_maps.push(mean_patch_map(&scores, grid, s));
                nearest_windows.push((s, nearest));
            }
            let local_features = l2_normalize(&local_features)?.to_vec2::<f32>()?; // [K, E]
            let local_values = local_values.map(|v| v.flatten_all()?.to_vec1::<f32>()).transpose()?; // [K, s*s, E]
            let per_window = s * s * e;
            let scores = windows
                .iter()
                .enumerate()
                .map(|(k, patches)| {
                    let f = &local_features[k];
                    let Some(local_values) = &local_values else {
                        let (fn_, fa) = text_rows.split_at(e);
                        return Ok(logistic(scale * (cosine(f, fa) - cosine(f, fn_))));
                    };
                    let vg: Vec<f32> = patches.iter().flat_map(|&p| global_rows[1 + p as usize].iter().copied()).collect();
                    let vl = &local_values[k * per_window..(k + 1) * per_window];
                    let projected =
                        project_text(&text_rows, &vg, vl, e, settings.ridge_lambda).ok_or(DetectError::Aligner { scale: s })?;
                    let (fn_, fa) = projected.split_at(e);
                    Ok(logistic(scale * (cosine(f, fa) - cosine(f, fn_))))
                })
                .collect::<Result<Vec<f32>, DetectError>>()?;
            scale_maps.push(harmonic_patch_map(&scores, grid, s));
            aligner_time += start.elapsed().as_secs_f64();
            if let Some(progress) = progress.as_mut()
                && scale_maps.len() < settings.scales.len()
            {
                // The map of the scales so far, as the final map is made of all of them.
                let mut patch_map = harmonic_mean(&scale_maps);
                let mut image_score = (global_score + patch_map.max()) / 2.0;
                if !few_shot_maps.is_empty() {
                    let few_shot_map = mean(&few_shot_maps);
                    image_score += few_shot_map.max();
                    patch_map = mean(&[patch_map, few_shot_map]);
                }
                let map = gaussian_blur(&resize_bilinear(&patch_map, image.width() as usize, image.height() as usize), settings.sigma);
                progress(Partial::Scale { scale: s, done: scale_maps.len(), total: settings.scales.len(), image_score, map });
            }
        }
        timings.push(StageTime { stage: "windows", seconds: window_time });
        timings.push(StageTime { stage: "aligner", seconds: aligner_time });
        clock = Instant::now();

        let zero_shot_map = harmonic_mean(&scale_maps);
        let local_max = zero_shot_map.max();
        let mut image_score = (global_score + local_max) / 2.0;
        let (patch_map, few_shot) = match references {
            Some(bank) if bank.dinov2_patches().is_some() => {
                // METHOD 5b fused as section 5 fuses the CLIP bank: section 5's patch
                // score (1 - cos) / 2 keeps the map on S_L's [0, 1] scale; the image
                // score adds AnomalyDINO's mean of the top 1%. The zero-shot map is
                // taken to DINOv2's finer grid (37 x 37) for the average.
                let start = Instant::now();
                let matched = PatchMatch::of(self.dinov2().map(Arc::as_ref), bank, image)?;
                timings.push(StageTime { stage: "dinov2", seconds: start.elapsed().as_secs_f64() });
                clock = Instant::now();
                let few_shot_map = matched.map(few_shot_score);
                let few_shot_image = mean_of_top_percent(&few_shot_map.values);
                image_score += few_shot_image;
                let patch_map = mean(&[resize_bilinear(&zero_shot_map, DINO_GRID, DINO_GRID), few_shot_map.clone()]);
                let worst = argmax(&patch_map.values);
                let report = FewShotReport {
                    references: bank.files.len(),
                    backbone: RefsBackbone::Dinov2,
                    max_score: few_shot_image,
                    worst_patch: [worst % DINO_GRID, worst / DINO_GRID],
                    nearest: Some(bank.region(&matched.nearest[worst], 1, DINO_GRID)),
                    map: few_shot_map,
                };
                (patch_map, Some(report))
            }
            Some(bank) if !few_shot_maps.is_empty() => {
                let few_shot_map = mean(&few_shot_maps);
                let few_shot_max = few_shot_map.max();
                image_score += few_shot_max;
                let patch_map = mean(&[zero_shot_map, few_shot_map.clone()]);
                let worst = argmax(&patch_map.values);
                let (worst_x, worst_y) = (worst % grid, worst / grid);
                // The nearest reference window of the query window (first scale)
                // that covers the worst patch and is farthest from the bank.
                let (s, nearest) = &nearest_windows[0];
                let positions = grid + 1 - s;
                let covering = nearest.iter().enumerate().filter(|(k, _)| {
                    let (top, left) = (k / positions, k % positions);
                    (top..top + s).contains(&worst_y) && (left..left + s).contains(&worst_x)
                });
                let farthest = covering.min_by(|a, b| a.1.similarity.total_cmp(&b.1.similarity)).map(|(_, n)| n);
                let report = FewShotReport {
                    references: bank.files.len(),
                    backbone: RefsBackbone::Clip,
                    max_score: few_shot_max,
                    worst_patch: [worst_x, worst_y],
                    nearest: farthest.map(|n| bank.region(n, *s, grid)),
                    map: few_shot_map,
                };
                (patch_map, Some(report))
            }
            _ => (zero_shot_map, None),
        };
        ensure_finite(image_score, &patch_map)?;
        let map = gaussian_blur(
            &resize_bilinear(&patch_map, image.width() as usize, image.height() as usize),
            settings.sigma,
        );
        let descriptors = self.top_descriptors(&image_feature, class, settings.top_descriptors)?;
        timings.push(StageTime { stage: "map", seconds: clock.elapsed().as_secs_f64() });

        Ok(Detection {
            image_score,
            global_score,
            local_max,
            map,
            patch_map,
            prompts: report(&class.prompts, &selection),
            descriptors,
            few_shot,
            timings,
        })
    }

    /// Pooled window features [K, E] (not normalised) of every `scale` x `scale`
    /// window, and with `values` the windows' projected patch values [K, s*s, E].
    pub fn window_features(
        &self,
        pixels: &Tensor,
        scale: usize,
        mode: WindowMode,
        batch: usize,
        values: bool,
    ) -> Result<(Tensor, Option<Tensor>), DetectError> {
        let grid = self.clip.model.vision.grid();
        let checked = DetectSettings { scales: vec![scale], window_batch: batch, ..DetectSettings::default() };
        checked.validate(grid)?;
        let windows = window_indices(grid, scale);
        match mode {
            WindowMode::Tokens => self.window_features_tokens(pixels, &windows, batch, values),
            WindowMode::Pixels => self.window_features_pixels(pixels, &windows, batch, values),
        }
    }

    /// Tokens mode: pooled window features [K, E] and the windows' projected patch
    /// values [K, s*s, E].
    fn window_features_tokens(
        &self,
        pixels: &Tensor,
        windows: &[Vec<u32>],
        batch: usize,
        with_values: bool,
    ) -> Result<(Tensor, Option<Tensor>), DetectError> {
        let vision = &self.clip.model.vision;
        self.window_features_tokens_through(pixels, windows, batch, with_values, &|embedded, index, values| {
            vision.forward_windows(embedded, index, values)
        })
    }

    /// `window_features_tokens` with each batch's windows through `forward_windows`
    /// (`VisionTransformer::forward_windows`, or a test's stand-in that runs out of
    /// memory as a full GPU does). The batch is `batch` on the CPU, sized from free
    /// memory on a GPU, and halved where it runs out (`batching`).
    pub(crate) fn window_features_tokens_through(
        &self,
        pixels: &Tensor,
        windows: &[Vec<u32>],
        batch: usize,
        with_values: bool,
        forward_windows: &WindowForward,
    ) -> Result<(Tensor, Option<Tensor>), DetectError> {
        let vision = &self.clip.model.vision;
        let device = &self.clip.device;
        let embedded = vision.embed(pixels)?;
        let n = windows[0].len();
        let bytes = batching::window_bytes(1 + n, vision.width(), vision.heads(), vision.dtype());
        let batch = batching::window_batch(device, batch, bytes, windows.len());
        let parts = batching::in_batches(windows, batch, device, |chunk| {
            let index = Tensor::from_vec(chunk.concat(), (chunk.len(), n), device)?;
            let (pooled, v) = forward_windows(&embedded, &index, with_values)?;
            let values = v.map(|v| vision.project_values(&v.i(0)?.narrow(1, 1, n)?)).transpose()?; // [k, n, E]
            Ok((pooled.i(0)?, values))
        })?;
        let (features, values): (Vec<Tensor>, Vec<Option<Tensor>>) = parts.into_iter().unzip();
        let values = if with_values { Some(Tensor::cat(&values.into_iter().flatten().collect::<Vec<_>>(), 0)?) } else { None };
        Ok((Tensor::cat(&features, 0)?, values))
    }

    /// Pixels mode: the image with everything outside the window black, through the whole ViT.
    fn window_features_pixels(
        &self,
        pixels: &Tensor,
        windows: &[Vec<u32>],
        batch: usize,
        with_values: bool,
    ) -> Result<(Tensor, Option<Tensor>), DetectError> {
        let vision = &self.clip.model.vision;
        let (grid, size) = (vision.grid(), vision.image_size());
        let patch = size / grid;
        let device = &self.clip.device;
        // Black in normalised units, per channel.
        let pre = &self.preprocessor;
        let black: Vec<f32> = (0..3).map(|c| -pre.mean[c] / pre.std[c]).collect();
        let black = Tensor::from_vec(black, (1, 3, 1, 1), device)?;
        // Each window is a forward of the whole image's tokens.
        let bytes = batching::window_bytes(1 + grid * grid, vision.width(), vision.heads(), vision.dtype());
        let batch = batching::window_batch(device, batch.clamp(1, batching::PIXELS_BATCH_CPU), bytes, windows.len());
        let parts = batching::in_batches(windows, batch, device, |chunk| {
            let masks: Vec<f32> = chunk
                .iter()
                .flat_map(|w| {
                    let inside: std::collections::HashSet<u32> = w.iter().copied().collect();
                    (0..size * size).map(move |i| {
                        let (y, x) = (i / size, i % size);
                        f32::from(u8::from(inside.contains(&(((y / patch) * grid + x / patch) as u32))))
                    })
                })
                .collect();
            let mask = Tensor::from_vec(masks, (chunk.len(), 1, size, size), device)?;
            let masked = (pixels.broadcast_mul(&mask)? + black.broadcast_mul(&(1.0 - &mask)?)?)?;
            let out = vision.forward_detailed(&masked, VisionCapture { last_values: with_values, class_only: true, ..Default::default() })?;
            let values = match out.last_values {
                Some(v) => {
                    let projected = vision.project_values(&v)?; // [k, L, E]
                    let per_window = chunk
                        .iter()
                        .enumerate()
                        .map(|(k, w)| {
                            let index = Tensor::from_vec(w.iter().map(|p| p + 1).collect::<Vec<u32>>(), w.len(), device)?;
                            projected.i(k)?.index_select(&index, 0)?.unsqueeze(0)
                        })
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    Some(Tensor::cat(&per_window, 0)?)
                }
                None => None,
            };
            Ok((out.pooled, values))
        })?;
        let (features, values): (Vec<Tensor>, Vec<Option<Tensor>>) = parts.into_iter().unzip();
        let values = if with_values { Some(Tensor::cat(&values.into_iter().flatten().collect::<Vec<_>>(), 0)?) } else { None };
        Ok((Tensor::cat(&features, 0)?, values))
    }

    fn top_descriptors(
        &self,
        image_feature: &Tensor,
        class: &ClassPrompts,
        top: usize,
    ) -> Result<Vec<DescriptorMatch>, DetectError> {
        if class.prompts.descriptors.is_empty() || top == 0 {
            return Ok(Vec::new());
        }
        let sims = class.descriptors.matmul(&image_feature.t()?)?.squeeze(1)?.to_vec1::<f32>()?;
        let mut matches: Vec<DescriptorMatch> = class
            .prompts
            .descriptors
            .iter()
            .zip(sims)
            .map(|(text, similarity)| DescriptorMatch { text: text.clone(), similarity })
            .collect();
        matches.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        matches.truncate(top);
        Ok(matches)
    }
}

/// `normalise(mean of the kept rows)` [1, E].
fn kept_mean(features: &Tensor, verdicts: &[super::context::ScoredPrompt]) -> candle_core::Result<Tensor> {
    let kept: Vec<u32> = verdicts.iter().filter(|p| p.kept).map(|p| p.index as u32).collect();
    let count = kept.len();
    let index = Tensor::from_vec(kept, count, features.device())?;
    l2_normalize(&features.index_select(&index, 0)?.mean_keepdim(0)?)
}

/// `softmax(scale * [<f, f+>, <f, f->])[abnormal]` per row of `features` [N, E].
pub(crate) fn abnormal_probability(features: &Tensor, text: &Tensor, scale: f32) -> candle_core::Result<Vec<f32>> {
    let logits = (features.matmul(&text.t()?)? * scale as f64)?; // [N, 2]
    candle_nn::ops::softmax(&logits, D::Minus1)?.i((.., 1))?.to_vec1::<f32>()
}

/// Element-wise mean of maps of one size.
fn mean(maps: &[Grid]) -> Grid {
    let first = &maps[0];
    let values = (0..first.values.len())
        .map(|i| maps.iter().map(|m| m.values[i]).sum::<f32>() / maps.len() as f32)
        .collect();
    Grid::new(first.width, first.height, values)
}

fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    // `a` is already unit length; `b` is renormalised here.
    dot / nb.max(f32::MIN_POSITIVE)
}

fn logistic(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn report(prompts: &ExpandedPrompts, selection: &ContextualSelection) -> PromptReport {
    let verdicts = |list: &[crate::prompts::Prompt], scored: &[super::context::ScoredPrompt]| {
        scored
            .iter()
            .map(|s| PromptVerdict {
                text: list[s.index].text.clone(),
                source: list[s.index].source,
                similarity: s.similarity,
                score: s.score,
                kept: s.kept,
            })
            .collect()
    };
    PromptReport {
        normal: verdicts(&prompts.normal, &selection.normal),
        abnormal: verdicts(&prompts.abnormal, &selection.abnormal),
        normal_fallback: selection.normal_fallback,
        abnormal_fallback: selection.abnormal_fallback,
    }
}
