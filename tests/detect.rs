//! The ALFA engine end to end on the tiny fixture model and generated images.

#[macro_use]
mod common;

use alfa::detect::{DetectSettings, Detector, Partial, WindowMode};
use alfa::prompts::PromptStore;
use image::{DynamicImage, Rgb, RgbImage};

fn detector(cache: Option<&std::path::Path>) -> Detector {
    common::detector("tiny-gelu", None, cache)
}

/// A textured part with a dark blob: not square, not the model's size.
fn test_image(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        let blob = (x as i32 - 30).pow(2) + (y as i32 - 20).pow(2) < 64;
        if blob { Rgb([20, 10, 5]) } else { Rgb([(100 + x % 40) as u8, (120 + y % 30) as u8, 140]) }
    }))
}

fn small_prompts() -> alfa::prompts::ExpandedPrompts {
    let mut p = PromptStore { recipes: None }.resolve("bottle").unwrap().set.expand();
    // A few prompts keep the debug-build test fast; the full set is exercised elsewhere.
    p.normal.truncate(12);
    p.abnormal.truncate(12);
    p.descriptors.truncate(6);
    p
}

/// `image` through `det` with the small prompt set and default settings in `mode`.
fn detect_in(det: &mut Detector, image: &DynamicImage, mode: WindowMode) -> alfa::detect::Detection {
    let class = det.encode_class(small_prompts()).unwrap();
    det.detect(image, &class, &DetectSettings { window_mode: mode, ..Default::default() }).unwrap()
}

both_kernels! {
    fn both_window_modes_give_maps_of_the_input_size() {
        let mut det = detector(None);
        let class = det.encode_class(small_prompts()).unwrap();
        let image = test_image(57, 41);
        for mode in [WindowMode::Tokens, WindowMode::Pixels] {
            let settings = DetectSettings { window_mode: mode, ..Default::default() };
            let d = det.detect(&image, &class, &settings).unwrap();
            assert_eq!((d.map.width, d.map.height), (57, 41), "{mode:?}");
            assert_eq!((d.patch_map.width, d.patch_map.height), (4, 4));
            assert!(d.map.values.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
            assert!((0.0..=1.0).contains(&d.global_score));
            assert!((d.image_score - (d.global_score + d.local_max) / 2.0).abs() < 1e-6);
            assert_eq!(d.prompts.normal.len(), 12);
            assert!(d.prompts.normal.iter().any(|p| p.kept) && d.prompts.abnormal.iter().any(|p| p.kept));
            assert_eq!(d.descriptors.len(), 5);
            assert!(d.descriptors.windows(2).all(|w| w[0].similarity >= w[1].similarity));
            let stages: Vec<_> = d.timings.iter().map(|t| t.stage).collect();
            assert_eq!(stages, ["preprocess", "global", "prompts", "windows", "aligner", "map"]);
        }
    }
}

both_kernels! {
    fn the_two_window_modes_differ_and_results_are_deterministic() {
        let mut det = detector(None);
        let class = det.encode_class(small_prompts()).unwrap();
        let image = test_image(48, 48);
        let tokens = DetectSettings::default();
        let a = det.detect(&image, &class, &tokens).unwrap();
        let b = det.detect(&image, &class, &tokens).unwrap();
        assert_eq!(a.map, b.map);
        assert_eq!(a.image_score, b.image_score);
        let pixels = DetectSettings { window_mode: WindowMode::Pixels, ..Default::default() };
        let c = det.detect(&image, &class, &pixels).unwrap();
        assert_ne!(a.patch_map, c.patch_map);
        assert_eq!(a.global_score, c.global_score, "the global path does not depend on the window mode");
    }
}

both_kernels! {
    fn cached_prompts_are_not_encoded_again() {
        let cache = tempfile::tempdir().unwrap();
        let prompts = small_prompts();
        let unique = prompts.normal.len() + prompts.abnormal.len() + prompts.descriptors.len();
        let mut det = detector(Some(cache.path()));
        det.encode_class(prompts.clone()).unwrap();
        assert_eq!(det.texts_encoded(), unique);
        det.encode_class(prompts.clone()).unwrap();
        assert_eq!(det.texts_encoded(), unique, "second call: all hits in memory");
        // A new detector reads the cache from disk; an edit re-encodes only the changed prompt.
        let mut det = detector(Some(cache.path()));
        let mut edited = prompts.clone();
        edited.abnormal[0].text = "An abnormal image of bottle with a freshly edited crack.".into();
        det.encode_class(edited).unwrap();
        assert_eq!(det.texts_encoded(), 1);
    }
}

both_kernels! {
    fn cached_features_equal_fresh_ones() {
        let cache = tempfile::tempdir().unwrap();
        let mut first = detector(Some(cache.path()));
        let image = test_image(40, 40);
        let settings = DetectSettings::default();
        let class = first.encode_class(small_prompts()).unwrap();
        let fresh = first.detect(&image, &class, &settings).unwrap();
        let mut second = detector(Some(cache.path()));
        let class = second.encode_class(small_prompts()).unwrap();
        assert_eq!(second.texts_encoded(), 0);
        let cached = second.detect(&image, &class, &settings).unwrap();
        assert_eq!(fresh.image_score, cached.image_score);
    }
}

both_kernels! {
    fn bad_scales_are_refused() {
        let mut det = detector(None);
        let class = det.encode_class(small_prompts()).unwrap();
        let image = test_image(40, 40);
        for scales in [vec![], vec![0], vec![5]] {
            let settings = DetectSettings { scales: scales.clone(), ..Default::default() };
            assert!(det.detect(&image, &class, &settings).is_err(), "{scales:?}");
        }
    }
}

both_kernels! {
    fn ablation_rows_switch_one_part_each() {
        use alfa::detect::Ablation;
        use alfa::prompts::PromptSource;
        let mut det = detector(None);
        let image = test_image(48, 40);
        let mut rows = Vec::new();
        for ablation in [Ablation::Templates, Ablation::Llm, Ablation::Context, Ablation::Full] {
            let mut settings = DetectSettings::default();
            let mut prompts = PromptStore { recipes: None }.resolve("bottle").unwrap().set.expand();
            // A few of each source keep the debug-build test fast.
            for list in [&mut prompts.normal, &mut prompts.abnormal] {
                let llm: Vec<_> = list.iter().filter(|p| p.source == PromptSource::Llm).take(6).cloned().collect();
                list.retain(|p| p.source == PromptSource::Template);
                list.truncate(6);
                list.extend(llm);
            }
            ablation.apply(&mut settings, &mut prompts);
            let class = det.encode_class(prompts).unwrap();
            let d = det.detect(&image, &class, &settings).unwrap();
            let all: Vec<_> = d.prompts.normal.iter().chain(&d.prompts.abnormal).collect();
            match ablation {
                Ablation::Templates => assert!(all.iter().all(|p| p.source == PromptSource::Template && p.kept)),
                Ablation::Llm => {
                    assert!(all.iter().any(|p| p.source == PromptSource::Llm));
                    assert!(all.iter().all(|p| p.kept), "no contextual scoring: every prompt is used");
                }
                Ablation::Context | Ablation::Full => assert_eq!(all.len(), 24),
            }
            rows.push(d);
        }
        // Same prompts and selection, with and without the aligner: the maps differ.
        assert_eq!(rows[2].global_score, rows[3].global_score);
        assert_ne!(rows[2].patch_map, rows[3].patch_map);
        assert_ne!(rows[0].global_score, rows[1].global_score);
    }
}

/// The bf16 image tower (where this CPU has AVX512-BF16) changes maps and scores
/// only slightly. Bounds measured on this fixture with margin (README, Precision):
/// bf16 keeps 8 significant bits of each linear layer's inputs and weights.
#[test]
fn bf16_image_tower_stays_close_to_f32() {
    use alfa::clip::Precision;
    if Precision::Bf16.check(&candle_core::Device::Cpu, alfa::clip::Kernels::Native).is_err() {
        eprintln!("no AVX512-BF16 on this CPU: bf16 is refused (clip_errors covers the message)");
        return;
    }
    let mut f32_det = detector(None);
    let mut bf16_det = common::detector_in(Precision::Bf16, "tiny-gelu", None, None);
    let image = test_image(57, 41);
    let embeddings = |det: &Detector| det.clip.encode_images(std::slice::from_ref(&image)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let cosine: f32 = embeddings(&f32_det).iter().zip(embeddings(&bf16_det)).map(|(a, b)| a * b).sum();
    eprintln!("image embedding cosine {cosine}");
    assert!(cosine > 0.999, "image embedding cosine f32 vs bf16: {cosine}");
    for mode in [WindowMode::Tokens, WindowMode::Pixels] {
        let (a, b) = (detect_in(&mut f32_det, &image, mode), detect_in(&mut bf16_det, &image, mode));
        assert_ne!(a.map, b.map, "{mode:?}: bf16 must change something, or it did not run");
        let alfa::detect::maps::MapAgreement { max_abs_diff: max_diff, correlation } = a.map.agreement(&b.map);
        let score_diff = (a.image_score - b.image_score).abs();
        eprintln!("{mode:?}: max |map diff| {max_diff}, correlation {correlation}, |score diff| {score_diff}");
        assert!(max_diff < 0.01, "{mode:?}: max |map diff| {max_diff}");
        assert!(correlation > 0.999, "{mode:?}: map correlation {correlation}");
        assert!(score_diff < 0.005, "{mode:?}: image score {} vs {}", a.image_score, b.image_score);
    }
}

/// The GPU's half-precision path (`--precision f16|bf16` on the generic kernels, run
/// here on the CPU): the image tower's transformer computes in f16 or bf16, everything
/// it returns is f32, and images, maps and scores stay close to f32's on the same
/// kernels. Bounds measured on this fixture with margin (README, Precision): f16 keeps
/// 11 significant bits of every weight and activation, bf16 8.
#[test]
fn half_precision_image_tower_on_the_generic_kernels_stays_close_to_f32() {
    use alfa::clip::{Kernels, Precision, VisionCapture};
    use candle_core::DType;
    common::with_kernels(Kernels::Generic, || {
        let mut f32_det = detector(None);
        let image = test_image(57, 41);
        let embeddings = |det: &Detector| det.clip.encode_images(std::slice::from_ref(&image)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let reference = embeddings(&f32_det);
        // (precision, its type, least embedding cosine, largest map difference, least map
        // correlation, largest image score difference), about 4x the measured distance
        // (tokens and pixels mode, the worse of the two): f16 cosine 0.9999995, map 0.00079,
        // correlation 0.99998, score 0.00034; bf16 0.99996, 0.0041, 0.9989, 0.0022.
        for (precision, dtype, min_cosine, max_map_diff, min_correlation, max_score_diff) in [
            (Precision::F16, DType::F16, 0.999995, 0.003, 0.9999, 0.0015),
            (Precision::Bf16, DType::BF16, 0.9998, 0.015, 0.995, 0.008),
        ] {
            let mut det = common::detector_in(precision, "tiny-gelu", None, None);
            let vision = &det.clip.model.vision;
            assert_eq!(vision.dtype(), dtype);
            // What the detector reads from the tower is f32.
            let pixels = det.pixels(&image).unwrap();
            let out = vision.forward_detailed(&pixels, VisionCapture { layers: true, last_values: true, ..Default::default() }).unwrap();
            let returned = [&out.pooled, &out.tokens, out.last_values.as_ref().unwrap()].into_iter().chain(&out.layers);
            assert!(returned.into_iter().all(|t| t.dtype() == DType::F32), "{precision:?}: the tower returns f32");
            assert_eq!(vision.embed(&pixels).unwrap().dtype(), DType::F32);
            let (windows, values) = det.window_features(&pixels, 2, WindowMode::Tokens, 256, true).unwrap();
            assert_eq!((windows.dtype(), values.unwrap().dtype()), (DType::F32, DType::F32));

            let cosine: f32 = reference.iter().zip(embeddings(&det)).map(|(a, b)| a * b).sum();
            eprintln!("{precision:?}: image embedding cosine {cosine}");
            assert!(cosine > min_cosine && cosine < 1.0, "{precision:?}: image embedding cosine against f32: {cosine}");
            for mode in [WindowMode::Tokens, WindowMode::Pixels] {
                let (a, b) = (detect_in(&mut f32_det, &image, mode), detect_in(&mut det, &image, mode));
                let alfa::detect::maps::MapAgreement { max_abs_diff: max_diff, correlation } = a.map.agreement(&b.map);
                let score_diff = (a.image_score - b.image_score).abs();
                eprintln!("{precision:?} {mode:?}: max |map diff| {max_diff}, correlation {correlation}, |score diff| {score_diff}");
                assert!(max_diff > 0.0, "{precision:?} {mode:?}: the map must move, or the half precision did not run");
                assert!(max_diff < max_map_diff, "{precision:?} {mode:?}: max |map diff| {max_diff}");
                assert!(correlation > min_correlation, "{precision:?} {mode:?}: map correlation {correlation}");
                assert!(score_diff < max_score_diff, "{precision:?} {mode:?}: image score {} vs {}", a.image_score, b.image_score);
            }
        }
    });
}

/// `detect_progressive` tells S_G, then the map of each window scale but the last, in
/// order; its result is exactly the result without progress, zero- and few-shot.
#[test]
fn progressive_results_arrive_in_order_and_the_final_one_is_unchanged() {
    let mut det = detector(None);
    let class = det.encode_class(small_prompts()).unwrap();
    let image = test_image(57, 41);
    let settings = DetectSettings { scales: vec![1, 2, 3], ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<std::path::PathBuf> = [41, 43]
        .map(|w| {
            let path = dir.path().join(format!("ref{w}.png"));
            test_image(w, 40).save(&path).unwrap();
            path
        })
        .into();
    let bank = det.build_reference_bank(&files, &settings, |_, _| {}).unwrap().bank.expect("two readable references");
    for bank in [None, Some(&bank)] {
        let plain = det.detect_with_references(&image, &class, bank, &settings).unwrap();
        let mut partials = Vec::new();
        let progressive = det.detect_progressive(&image, &class, bank, &settings, Some(&mut |p| partials.push(p))).unwrap();
        assert_eq!(progressive.map, plain.map);
        assert_eq!(progressive.patch_map, plain.patch_map);
        assert_eq!((progressive.image_score, progressive.global_score), (plain.image_score, plain.global_score));
        assert_eq!(partials.len(), 3, "S_G, then scales 1 and 2 of 3: {partials:?}");
        assert_eq!(partials[0], Partial::Global { global_score: plain.global_score });
        for (k, partial) in partials[1..].iter().enumerate() {
            let Partial::Scale { scale, done, total, image_score, map } = partial else { panic!("{partial:?}") };
            assert_eq!((*scale, *done, *total), (k + 1, k + 1, 3));
            assert_eq!((map.width, map.height), (57, 41), "at the image's resolution");
            assert!(image_score.is_finite() && map.values.iter().all(|v| v.is_finite()));
            assert_ne!(map, &plain.map, "a partial map is the scales so far, not the final one");
        }
    }
}

/// Weights holding NaN (a damaged file) make NaN features without any error; the
/// result is refused as not a number, by ALFA and by a baseline, where a NaN score
/// would otherwise pass as a result (neither above nor below any threshold).
#[test]
fn weights_holding_nan_give_an_error_not_a_nan_score() {
    use alfa::clip::{Clip, ModelRequest, Precision};
    use alfa::detect::baselines::build_method;
    use alfa::detect::{ClassSpec, DetectError, MethodKind};
    use candle_core::Device;

    let dir = tempfile::tempdir().unwrap();
    let fixture = common::fixtures().join("tiny-gelu");
    std::fs::copy(fixture.join("open_clip_config.json"), dir.path().join("open_clip_config.json")).unwrap();
    let mut tensors = candle_core::safetensors::load(fixture.join("open_clip_model.safetensors"), &Device::Cpu).unwrap();
    let conv = &tensors["visual.conv1.weight"];
    let nan = (conv.ones_like().unwrap() * f64::NAN).unwrap();
    tensors.insert("visual.conv1.weight".into(), nan);
    candle_core::safetensors::save(&tensors, dir.path().join("open_clip_model.safetensors")).unwrap();
    let request = ModelRequest { model: Some(dir.path().display().to_string()), tokenizer: Some(common::shared_tokenizer()), ..Default::default() };
    let clip = Clip::load(&request.resolve().unwrap(), &Device::Cpu, Precision::F32, common::kernels()).unwrap();
    let mut det = Detector::new(clip, "nan-weights", None);
    let class = det.encode_class(small_prompts()).unwrap();
    let image = test_image(40, 40);
    let err = det.detect(&image, &class, &DetectSettings::default()).unwrap_err();
    assert!(matches!(err, DetectError::NotFinite), "{err:?}");
    assert!(err.to_string().contains("not a number") && err.to_string().contains("weights"), "{err}");
    let mut baseline = build_method(MethodKind::Clip, det, DetectSettings::default()).unwrap();
    let spec = ClassSpec { id: "bottle".into(), name: "bottle".into(), prompts: small_prompts() };
    baseline.prepare(&spec, &[]).unwrap();
    let err = baseline.score(&image).unwrap_err();
    assert!(matches!(err, DetectError::NotFinite), "{err:?}");
}
