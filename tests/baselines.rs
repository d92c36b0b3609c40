//! The baselines (CLIP, WinCLIP/WinCLIP+, AnoVL TFA/TTA) on the tiny fixture model
//! and generated images.

#[macro_use]
mod common;

use alfa::clip::{VisionCapture, l2_normalize};
use alfa::detect::baselines::anovl::views::public_code_views;
use alfa::detect::baselines::anovl::{DenseFeatures, anovl_prompts, dense_features, value_value_step};
use alfa::detect::baselines::{Anovl, BaselineOptions, ImageViews, TtaSettings, Winclip, build_method, build_method_with};
use alfa::detect::{ClassSpec, DetectError, DetectSettings, Detector, MethodKind, Method};
use alfa::prompts::PromptStore;
use candle_core::{Device, IndexOp, Tensor};
use common::fixtures;
use image::{DynamicImage, Rgb, RgbImage};

fn detector() -> Detector {
    common::detector("tiny-gelu", None, None)
}

fn bottle() -> ClassSpec {
    ClassSpec {
        id: "bottle".into(),
        name: "bottle".into(),
        prompts: PromptStore { recipes: None }.resolve("bottle").unwrap().set.expand(),
    }
}

/// A striped part with a dark blob at (cx, cy); 40 x 40 keeps debug runs fast.
fn part(cx: i32, cy: i32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(40, 40, |x, y| {
        let blob = (x as i32 - cx).pow(2) + (y as i32 - cy).pow(2) < 36;
        if blob { Rgb([20, 10, 5]) } else { Rgb([(90 + 5 * (x % 8)) as u8, (120 + 3 * (y % 10)) as u8, 150]) }
    }))
}

const BASELINES: [MethodKind; 4] = [MethodKind::Clip, MethodKind::Winclip, MethodKind::AnovlTfa, MethodKind::AnovlTta];

both_kernels! {
    fn every_baseline_gives_a_probability_map_of_the_input_size_deterministically() {
        let image = part(28, 12);
        for kind in BASELINES {
            let mut method = build_method(kind, detector(), DetectSettings::default()).unwrap();
            assert_eq!(method.kind(), kind);
            assert!(matches!(method.score(&image), Err(DetectError::NotPrepared)), "{kind:?}");
            method.prepare(&bottle(), &[]).unwrap();
            let a = method.score(&image).unwrap();
            assert_eq!((a.map.width, a.map.height), (40, 40), "{kind:?}");
            assert!(a.map.values.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), "{kind:?}");
            assert!(a.image_score.is_finite() && (0.0..=1.0).contains(&a.image_score), "{kind:?}");
            // A constant map would mean the patches were never scored one by one.
            let (lo, hi) = a.map.values.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(hi > lo, "{kind:?}: constant map");
            let b = method.score(&image).unwrap();
            assert_eq!(a.map, b.map, "{kind:?}");
            assert_eq!(a.image_score, b.image_score, "{kind:?}");
        }
    }
}

both_kernels! {
    fn alfa_is_not_built_here_and_zero_shot_baselines_refuse_references() {
        let err = build_method(MethodKind::Alfa, detector(), DetectSettings::default()).err().unwrap();
        assert!(matches!(err, DetectError::Settings(_)), "{err}");
        for kind in [MethodKind::Clip, MethodKind::AnovlTfa, MethodKind::AnovlTta] {
            let mut method = build_method(kind, detector(), DetectSettings::default()).unwrap();
            assert!(matches!(method.prepare(&bottle(), &[part(5, 5)]), Err(DetectError::Settings(_))), "{kind:?}");
        }
        let bad = DetectSettings { scales: vec![5], ..Default::default() };
        assert!(matches!(build_method(MethodKind::Winclip, detector(), bad), Err(DetectError::Settings(_))));
    }
}

both_kernels! {
    fn clip_image_score_is_the_two_prompt_softmax_of_the_global_feature() {
        let det = detector();
        // Square input: CLIP's crop and the detector's squash see the same pixels.
        let image = part(10, 30);
        let image_feature = det.clip.encode_images(std::slice::from_ref(&image)).unwrap();
        let texts = det.clip.encode_texts(&["a photo of a normal bottle.", "a photo of an abnormal bottle."]).unwrap();
        let cos = image_feature.matmul(&texts.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = f64::from(det.clip.model.logit_scale.min(100.0));
        let (normal, abnormal) = (scale * f64::from(cos[0]), scale * f64::from(cos[1]));
        let expected = 1.0 / (1.0 + (normal - abnormal).exp());

        let mut method = build_method(MethodKind::Clip, det, DetectSettings::default()).unwrap();
        method.prepare(&bottle(), &[]).unwrap();
        let got = method.score(&image).unwrap().image_score;
        assert!((f64::from(got) - expected).abs() < 1e-5, "{got} vs {expected}");
    }
}

both_kernels! {
    fn winclip_plus_with_the_query_as_its_reference_finds_nothing_new() {
        let query = part(28, 12);
        let mut zero = Winclip::new(detector(), DetectSettings::default()).unwrap();
        zero.prepare(&bottle(), &[]).unwrap();
        let zero_scores = zero.patch_scores(&query).unwrap();
        assert!(zero_scores.few_shot.is_none());

        let mut plus = Winclip::new(detector(), DetectSettings::default()).unwrap();
        plus.prepare(&bottle(), std::slice::from_ref(&query)).unwrap();
        let scores = plus.patch_scores(&query).unwrap();
        let few = scores.few_shot.clone().unwrap();
        assert!(few.max() < 1e-4, "few-shot max {}", few.max());
        assert_eq!(scores.zero_shot, zero_scores.zero_shot, "references leave the zero-shot part alone");
        let (image_score, map) = scores.combined();
        assert!((image_score - (scores.global + few.max()) / 2.0).abs() < 1e-7);
        assert!((map.values[5] - (scores.zero_shot.values[5] + few.values[5]) / 2.0).abs() < 1e-7);

        // A reference with the blob elsewhere leaves the query's blob unexplained.
        plus.prepare(&bottle(), &[part(8, 30)]).unwrap();
        let other = plus.patch_scores(&query).unwrap().few_shot.unwrap();
        assert!(other.max() > 100.0 * few.max().max(1e-6), "{} vs {}", other.max(), few.max());
    }
}

/// `softmax(V V^T / sqrt(d)) V` per head, then `out_proj`, in plain f64 loops on the
/// checkpoint's tensors: an implementation independent of the model code.
fn reference_value_value(weights: &std::collections::HashMap<String, Tensor>, x: &[Vec<f64>], heads: usize) -> Vec<Vec<f64>> {
    let get = |name: &str| -> Vec<f64> {
        let t = &weights[&format!("visual.transformer.resblocks.0.{name}")];
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
    };
    let (ln_w, ln_b) = (get("ln_1.weight"), get("ln_1.bias"));
    let (in_w, in_b) = (get("attn.in_proj_weight"), get("attn.in_proj_bias"));
    let (out_w, out_b) = (get("attn.out_proj.weight"), get("attn.out_proj.bias"));
    let w = ln_w.len();
    let hd = w / heads;
    let normed: Vec<Vec<f64>> = x
        .iter()
        .map(|row| {
            let mean = row.iter().sum::<f64>() / w as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / w as f64;
            (0..w).map(|j| (row[j] - mean) / (var + 1e-5).sqrt() * ln_w[j] + ln_b[j]).collect()
        })
        .collect();
    // Values: the last third of in_proj.
    let values: Vec<Vec<f64>> = normed
        .iter()
        .map(|row| (0..w).map(|o| in_b[2 * w + o] + (0..w).map(|i| in_w[(2 * w + o) * w + i] * row[i]).sum::<f64>()).collect())
        .collect();
    let l = x.len();
    let mut attended = vec![vec![0f64; w]; l];
    for h in 0..heads {
        let head = |t: usize| &values[t][h * hd..(h + 1) * hd];
        for (q, out) in attended.iter_mut().enumerate() {
            let logits: Vec<f64> = (0..l)
                .map(|k| head(q).iter().zip(head(k)).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt())
                .collect();
            let max = logits.iter().copied().fold(f64::MIN, f64::max);
            let exp: Vec<f64> = logits.iter().map(|v| (v - max).exp()).collect();
            let total: f64 = exp.iter().sum();
            for (k, e) in exp.iter().enumerate() {
                for (o, v) in out[h * hd..(h + 1) * hd].iter_mut().zip(head(k)) {
                    *o += e / total * v;
                }
            }
        }
    }
    attended
        .iter()
        .map(|row| (0..w).map(|o| out_b[o] + (0..w).map(|i| out_w[o * w + i] * row[i]).sum::<f64>()).collect())
        .collect()
}

both_kernels! {
    fn value_value_step_matches_an_independent_computation() {
        let det = detector();
        let vision = &det.clip.model.vision;
        let weights =
            candle_core::safetensors::load(fixtures().join("tiny-gelu/open_clip_model.safetensors"), &Device::Cpu).unwrap();
        let (tokens, width) = (5, vision.width());
        let x: Vec<Vec<f64>> = (0..tokens)
            .map(|t| (0..width).map(|j| ((t * 7 + j * 3) as f64 * 0.37).sin() * (1.0 + t as f64 * 0.5)).collect())
            .collect();
        let flat: Vec<f32> = x.iter().flatten().map(|&v| v as f32).collect();
        let input = Tensor::from_vec(flat, (1, tokens, width), &Device::Cpu).unwrap();
        let got = value_value_step(&vision.blocks()[0], &input).unwrap().i(0).unwrap().to_vec2::<f32>().unwrap();
        // tiny-gelu: width 48, head width 16.
        let expected = reference_value_value(&weights, &x, width / 16);
        let worst = got
            .iter()
            .flatten()
            .zip(expected.iter().flatten())
            .map(|(g, e)| (f64::from(*g) - e).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-5, "max deviation {worst}");
    }
}

/// The V-V path by hand: the tokens entering block 1, plus every block's V-V step
/// on the original path's tokens entering that block; `blocks` of them.
fn value_path_by_hand(det: &Detector, pixels: &Tensor, blocks: usize) -> Tensor {
    let vision = &det.clip.model.vision;
    let capture = VisionCapture { layers: true, ..Default::default() };
    let (_, original, _) = vision.forward_embedded(&vision.embed(pixels).unwrap(), capture).unwrap();
    let mut path = original[0].clone();
    for (block, entering) in vision.blocks().iter().zip(&original).take(blocks) {
        path = (path + value_value_step(block, entering).unwrap()).unwrap();
    }
    l2_normalize(&vision.project(&path.i((0, 1.., ..)).unwrap()).unwrap()).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

both_kernels! {
    fn dense_features_are_the_value_path_after_the_last_block() {
        let det = detector();
        let vision = &det.clip.model.vision;
        let depth = vision.blocks().len();
        assert_eq!(depth, 3);
        let pixels = det.pixels(&part(20, 20)).unwrap();
        let DenseFeatures { global, patches } = dense_features(vision, &pixels).unwrap();
        let last = value_path_by_hand(&det, &pixels, depth);
        assert_eq!(patches.dims(), [16, 16], "one [M, E] set: the tiny model's 4 x 4 patches");
        assert!(max_abs_diff(&patches, &last) < 1e-6);
        // Earlier blocks' V-V tokens are not what AnoVL scores: they differ.
        for blocks in 1..depth {
            let earlier = value_path_by_hand(&det, &pixels, blocks);
            assert!(max_abs_diff(&patches, &earlier) > 1e-3, "after {blocks} blocks");
        }
        // The original path is untouched: its global feature is CLIP's.
        let capture = VisionCapture { layers: true, ..Default::default() };
        let (tokens, _, _) = vision.forward_embedded(&vision.embed(&pixels).unwrap(), capture).unwrap();
        let pooled = l2_normalize(&vision.project(&tokens.i((.., 0, ..)).unwrap()).unwrap()).unwrap();
        assert_eq!(max_abs_diff(&global, &pooled), 0.0);
    }
}

/// `[f+, f-]` by hand from the text tower's output: each label's mean of the raw
/// (`raw_mean`) or unit prompt features, normalised.
fn text_by_hand(det: &Detector, normal: &[String], abnormal: &[String], raw_mean: bool) -> Tensor {
    let label = |texts: &[String]| {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ids = det.clip.tokenizer.batch(&refs, &Device::Cpu).unwrap();
        let raw = det.clip.model.text.forward(&ids).unwrap();
        let rows = if raw_mean { raw } else { l2_normalize(&raw).unwrap() };
        l2_normalize(&rows.mean_keepdim(0).unwrap()).unwrap()
    };
    Tensor::cat(&[label(normal), label(abnormal)], 0).unwrap()
}

/// AnoVL eqs. 1-2 by hand: `exp(c-) / (exp(c+) + exp(c-))` of `scale` times the cosines.
fn abnormal_by_hand(features: &Tensor, text: &Tensor, scale: f64) -> Vec<f64> {
    let cos = features.matmul(&text.t().unwrap()).unwrap().to_vec2::<f32>().unwrap();
    cos.iter()
        .map(|c| {
            let (normal, abnormal) = (scale * f64::from(c[0]), scale * f64::from(c[1]));
            abnormal.exp() / (normal.exp() + abnormal.exp())
        })
        .collect()
}

both_kernels! {
    fn anovl_softmaxes_raw_cosines_to_the_normalised_mean_of_raw_text_features() {
        let det = detector();
        // Square input: CLIP's crop and the detector's squash see the same pixels.
        let image = part(12, 26);
        let (normal, abnormal) = anovl_prompts(&bottle());
        let text = text_by_hand(&det, &normal, &abnormal, true);
        let global = det.clip.encode_images(std::slice::from_ref(&image)).unwrap();
        let expected_image = abnormal_by_hand(&global, &text, 1.0)[0];
        let pixels = det.pixels(&image).unwrap();
        let expected_map = abnormal_by_hand(&value_path_by_hand(&det, &pixels, 3), &text, 1.0);
        // What the test tells apart: CLIP's logit scale, the mean of unit prompt features.
        let scale = f64::from(det.clip.model.logit_scale.min(100.0));
        let scaled = abnormal_by_hand(&global, &text, scale)[0];
        let unit_mean = abnormal_by_hand(&global, &text_by_hand(&det, &normal, &abnormal, false), 1.0)[0];
        assert!((scaled - expected_image).abs() > 1e-3, "{scaled} vs {expected_image}");
        assert!((unit_mean - expected_image).abs() > 1e-5, "{unit_mean} vs {expected_image}");

        let mut tfa = Anovl::tfa(det, DetectSettings::default());
        tfa.prepare(&bottle(), &[]).unwrap();
        let (image_score, map) = tfa.patch_scores(&image).unwrap();
        assert!((f64::from(image_score) - expected_image).abs() < 1e-6, "{image_score} vs {expected_image}");
        assert_eq!(map.values.len(), expected_map.len());
        for (got, expected) in map.values.iter().zip(&expected_map) {
            assert!((f64::from(*got) - expected).abs() < 1e-6, "{got} vs {expected}");
        }
    }
}

both_kernels! {
    fn raw_text_features_are_the_text_towers_output_and_survive_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let texts: Vec<String> = ["a photo of a bottle", "an industrial photo of a damaged bottle"].map(String::from).into();
        let mut det = common::detector("tiny-gelu", Some("raw-cache"), Some(cache.path()));
        let raw = det.raw_text_features(&texts).unwrap();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tower = det.clip.model.text.forward(&det.clip.tokenizer.batch(&refs, &Device::Cpu).unwrap()).unwrap();
        assert!(max_abs_diff(&raw, &tower) < 1e-5);
        // The unit features are unchanged: the raw ones normalised.
        let unit = det.text_features(&texts).unwrap();
        assert_eq!(max_abs_diff(&unit, &det.clip.encode_texts(&refs).unwrap()), 0.0);
        assert_eq!(det.texts_encoded(), 2);
        // Norms differ per text, so the mean of raw features is not the mean of unit ones.
        let norms = raw.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1::<f32>().unwrap();
        assert!((norms[0] - norms[1]).abs() > 1e-3, "{norms:?}");

        let mut again = common::detector("tiny-gelu", Some("raw-cache"), Some(cache.path()));
        assert_eq!(max_abs_diff(&again.raw_text_features(&texts).unwrap(), &raw), 0.0);
        assert_eq!(again.texts_encoded(), 0, "read back from the cache file");
    }
}

both_kernels! {
    fn the_public_code_image_score_averages_the_global_probability_over_its_22_views() {
        let image = part(28, 12);
        let det = detector();
        let (normal, abnormal) = anovl_prompts(&bottle());
        let text = text_by_hand(&det, &normal, &abnormal, true);
        let views = public_code_views(&det.pixels(&image).unwrap()).unwrap();
        assert_eq!(views.dim(0).unwrap(), 22);
        let per_view: Vec<f64> = (0..22)
            .map(|i| {
                let global = l2_normalize(&det.clip.model.vision.forward(&views.narrow(0, i, 1).unwrap()).unwrap()).unwrap();
                abnormal_by_hand(&global, &text, 1.0)[0]
            })
            .collect();
        let expected = per_view.iter().sum::<f64>() / 22.0;

        let run = |views: ImageViews| {
            let mut method = Anovl::tfa(detector(), DetectSettings::default()).with_views(views);
            method.prepare(&bottle(), &[]).unwrap();
            method.patch_scores(&image).unwrap()
        };
        let (original_score, original_map) = run(ImageViews::Original);
        let (score, map) = run(ImageViews::PublicCode);
        assert!((f64::from(score) - expected).abs() < 1e-6, "{score} vs {expected}");
        assert!((f64::from(original_score) - per_view[0]).abs() < 1e-6, "view 0 is the input");
        assert!((expected - per_view[0]).abs() > 1e-6, "the views change the score");
        assert_eq!(map, original_map, "the views are for the image score only");

        // Through `build_method_with`, TTA too; other methods refuse the option.
        let options = BaselineOptions { anovl_views: ImageViews::PublicCode };
        let mut tta = build_method_with(MethodKind::AnovlTta, detector(), DetectSettings::default(), options).unwrap();
        tta.prepare(&bottle(), &[]).unwrap();
        assert!((tta.score(&image).unwrap().image_score - score).abs() < 1e-7, "TTA adapts the map, not the image score");
        for kind in [MethodKind::Clip, MethodKind::Winclip] {
            let err = build_method_with(kind, detector(), DetectSettings::default(), options).err().unwrap();
            assert!(matches!(err, DetectError::Settings(_)), "{kind:?}: {err}");
        }
    }
}

both_kernels! {
    fn tta_is_repeatable_with_its_seed_and_moves_away_from_tfa() {
        let image = part(28, 12);
        let run = |tta: Option<TtaSettings>| {
            let mut method = match tta {
                Some(tta) => Anovl::tta(detector(), DetectSettings::default(), tta),
                None => Anovl::tfa(detector(), DetectSettings::default()),
            };
            method.prepare(&bottle(), &[]).unwrap();
            method.patch_scores(&image).unwrap()
        };
        let seeded = |seed, steps| Some(TtaSettings { seed, steps, ..Default::default() });
        let tfa = run(None);
        let a = run(seeded(7, 5));
        let b = run(seeded(7, 5));
        assert_eq!(a.1, b.1, "same seed, same map");
        assert_eq!(a.0, tfa.0, "TTA adapts the map, not the global score");
        assert_ne!(a.1, tfa.1);
        assert_ne!(a.1, run(seeded(8, 5)).1, "the noise depends on the seed");
        assert_ne!(a.1, run(seeded(7, 0)).1, "the AdamW steps change the adapter");
        // `reseed` (what `alfa eval --seeds` calls) is the same as building with that seed.
        let mut reseeded = Anovl::tta(detector(), DetectSettings::default(), TtaSettings { seed: 7, ..Default::default() });
        reseeded.reseed(8);
        reseeded.prepare(&bottle(), &[]).unwrap();
        assert_eq!(reseeded.patch_scores(&image).unwrap().1, run(seeded(8, 5)).1);
    }
}
