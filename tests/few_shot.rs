//! Few-shot mode (METHOD section 5) on the tiny fixture model and generated textures.

#[macro_use]
mod common;

use std::path::PathBuf;

use alfa::detect::references::{add_references, draw, list_references, remove_references};
use alfa::detect::{Ablation, AlfaMethod, ClassSpec, DetectSettings, Method};
use alfa::prompts::PromptStore;
use common::detector;
use image::{DynamicImage, Rgb, RgbImage};

/// A woven texture, shifted by `phase`; with `defect` a bright square in patch
/// (x 2, y 1) of the 4x4 grid (the tiny model sees 64x64 as 32x32 in 8 px patches).
fn texture(phase: u32, defect: bool) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| {
        if defect && (34..46).contains(&x) && (18..30).contains(&y) {
            return Rgb([250, 240, 30]);
        }
        let v = if ((x + phase) / 4 + y / 4) % 2 == 0 { 70 } else { 150 };
        Rgb([v, v / 2 + 40, 200 - v / 2])
    }))
}

fn small_class() -> ClassSpec {
    let mut prompts = PromptStore { recipes: None }.resolve("carpet").unwrap().set.expand();
    prompts.normal.truncate(10);
    prompts.abnormal.truncate(10);
    prompts.descriptors.truncate(3);
    ClassSpec { id: "carpet".into(), name: "carpet".into(), prompts }
}

/// AUROC by counting ordered pairs (ties count half).
fn auroc(scores: &[f32], labels: &[bool]) -> f64 {
    let (mut pairs, mut wins) = (0.0, 0.0);
    for (s_pos, _) in scores.iter().zip(labels).filter(|(_, l)| **l) {
        for (s_neg, _) in scores.iter().zip(labels).filter(|(_, l)| !**l) {
            pairs += 1.0;
            wins += if s_pos > s_neg { 1.0 } else if s_pos == s_neg { 0.5 } else { 0.0 };
        }
    }
    wins / pairs
}

both_kernels! {
    fn a_pasted_defect_is_found_by_the_few_shot_map() {
        let mut det = detector("tiny-gelu", None, None);
        let class = det.encode_class(small_class().prompts).unwrap();
        // On the tiny model's 4x4 grid every window over an edge patch also covers its
        // interior neighbour, so windows alone cannot tell them apart; single-patch
        // windows (scale 1) can. ViT-B's 15x15 grid has room for the default scales.
        let settings = DetectSettings { scales: vec![1, 2], ..Default::default() };
        let refs = vec![(PathBuf::from("clean-a.png"), texture(0, false)), (PathBuf::from("clean-b.png"), texture(2, false))];
        let bank = det.reference_bank(&refs, &settings, |_, _| ()).unwrap().bank.unwrap();

        let query = texture(0, true);
        let d = det.detect_with_references(&query, &class, Some(&bank), &settings).unwrap();
        let few_shot = d.few_shot.as_ref().unwrap();
        assert_eq!(few_shot.references, 2);
        let labels: Vec<bool> = (0..16).map(|i| i == 1 * 4 + 2).collect();
        let auc = auroc(&few_shot.map.values, &labels);
        assert!(auc >= 0.9, "few-shot patch AUROC {auc}: {:?}", few_shot.map.values);
        // The explained region is where the fused map peaks.
        let peak = d.patch_map.values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(few_shot.worst_patch, [peak % 4, peak / 4]);
        // The explanation points at a window of a reference image, inside its bounds.
        let nearest = few_shot.nearest.as_ref().unwrap();
        assert!(nearest.file.ends_with("clean-a.png") || nearest.file.ends_with("clean-b.png"));
        let [x0, y0, x1, y1] = nearest.region;
        assert!(x0 < x1 && y0 < y1 && x1 <= 64 && y1 <= 64, "{:?}", nearest.region);
        // Fusion: the image score adds the few-shot maximum to the zero-shot score.
        let zero_shot = det.detect(&query, &class, &settings).unwrap();
        assert!(zero_shot.few_shot.is_none());
        assert!((d.image_score - (zero_shot.image_score + few_shot.max_score)).abs() < 1e-5);
        assert_eq!((d.map.width, d.map.height), (64, 64));
    }
}

both_kernels! {
    fn the_query_itself_as_reference_scores_zero() {
        let mut det = detector("tiny-gelu", None, None);
        let class = det.encode_class(small_class().prompts).unwrap();
        let settings = DetectSettings::default();
        let query = texture(1, true);
        let bank = det.reference_bank(&[(PathBuf::from("self.png"), query.clone())], &settings, |_, _| ()).unwrap();
        let d = det.detect_with_references(&query, &class, bank.bank.as_ref(), &settings).unwrap();
        let few_shot = d.few_shot.unwrap();
        assert!(few_shot.max_score.abs() < 1e-5, "{}", few_shot.max_score);
        assert!(few_shot.map.values.iter().all(|v| v.abs() < 1e-5));
    }
}

both_kernels! {
    fn banks_are_cached_per_model_and_rebuilt_when_it_changes() {
        let cache = tempfile::tempdir().unwrap();
        let settings = DetectSettings::default();
        let refs = vec![(PathBuf::from("a.png"), texture(0, false)), (PathBuf::from("b.png"), texture(3, false))];
        let first = detector("tiny-gelu", Some("model one"), Some(cache.path()));
        let built = first.reference_bank(&refs, &settings, |_, _| ()).unwrap();
        assert_eq!((built.computed, built.reused), (2, 0));
        let again = first.reference_bank(&refs, &settings, |_, _| ()).unwrap();
        assert_eq!((again.computed, again.reused), (0, 2));
        // Same features from the cache as computed.
        let q = texture(1, true);
        let mut det = detector("tiny-gelu", Some("model one"), Some(cache.path()));
        let class = det.encode_class(small_class().prompts).unwrap();
        let a = det.detect_with_references(&q, &class, built.bank.as_ref(), &settings).unwrap();
        let b = det.detect_with_references(&q, &class, again.bank.as_ref(), &settings).unwrap();
        assert_eq!(a.map, b.map);
        // Another model: rebuilt.
        let other = detector("tiny-gelu", Some("model two"), Some(cache.path()));
        assert_eq!(other.reference_bank(&refs, &settings, |_, _| ()).unwrap().computed, 2);
    }
}

both_kernels! {
    fn references_of_any_size_or_mode_work_and_broken_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let gray = dir.path().join("gray.png");
        DynamicImage::ImageLuma8(texture(0, false).to_luma8()).resize_exact(50, 90, image::imageops::FilterType::Triangle).save(&gray).unwrap();
        let rgba = dir.path().join("alpha.png");
        DynamicImage::ImageRgba8(texture(2, false).to_rgba8()).save(&rgba).unwrap();
        let broken = dir.path().join("broken.png");
        std::fs::write(&broken, b"not an image").unwrap();

        let mut det = detector("tiny-gelu", None, None);
        let settings = DetectSettings::default();
        let build = det.build_reference_bank(&[gray.clone(), broken.clone(), rgba.clone()], &settings, |_, _| ()).unwrap();
        assert_eq!(build.skipped.len(), 1);
        assert_eq!(build.skipped[0].0, broken);
        let bank = build.bank.unwrap();
        assert_eq!(bank.files, [gray, rgba]);
        assert_eq!(bank.sizes, [(50, 90), (64, 64)]);
        let class = det.encode_class(small_class().prompts).unwrap();
        assert!(det.detect_with_references(&texture(1, true), &class, Some(&bank), &settings).is_ok());

        // No usable reference: zero-shot.
        let none = det.build_reference_bank(&[broken], &settings, |_, _| ()).unwrap();
        assert!(none.bank.is_none());
        // The method interface: zero references is zero-shot, the same as `detect`.
        let mut method = AlfaMethod::new(detector("tiny-gelu", None, None), settings.clone(), Ablation::Full);
        method.prepare(&small_class(), &[]).unwrap();
        let scored = method.score(&texture(1, true)).unwrap();
        let direct = det.detect(&texture(1, true), &class, &settings).unwrap();
        assert_eq!(scored.map, direct.map);
    }
}

#[test]
fn reference_folders_copy_list_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("good.png");
    texture(0, false).save(&source).unwrap();
    let refs = dir.path().join("prompts/carpet.refs");
    assert!(list_references(&refs).unwrap().is_empty());
    let added = add_references(&refs, &[source.clone(), source.clone()]).unwrap();
    assert_eq!(added, [refs.join("good.png")], "the same image twice is one reference");
    assert!(source.exists(), "the user's file is copied, never moved");
    // Another image of the same name gets a suffix.
    let other = dir.path().join("other/good.png");
    std::fs::create_dir(other.parent().unwrap()).unwrap();
    texture(1, false).save(&other).unwrap();
    assert_eq!(add_references(&refs, &[other, source.clone()]).unwrap(), [refs.join("good-1.png")]);
    assert_eq!(list_references(&refs).unwrap(), [refs.join("good-1.png"), refs.join("good.png")]);
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"nope").unwrap();
    let err = add_references(&refs, &[broken]).unwrap_err().to_string();
    assert!(err.contains("broken.png"), "{err}");
    remove_references(&refs, &["good-1.png".into()]).unwrap();
    assert_eq!(list_references(&refs).unwrap(), [refs.join("good.png")]);
    let err = remove_references(&refs, &["nope.png".into()]).unwrap_err().to_string();
    assert!(err.contains("nope.png") && err.contains("good.png"), "{err}");
    // Seeded draws of K shots are repeatable.
    let pool: Vec<PathBuf> = (0..8).map(|i| PathBuf::from(format!("{i}.png"))).collect();
    assert_eq!(draw(&pool, 4, 3), draw(&pool, 4, 3));
}
