//! DINOv2 patch features through candle-transformers against timm
//! (`tests/fixtures/generate_dinov2_fixtures.py`: a tiny random DINOv2-style ViT).

#[macro_use]
mod common;

use std::path::{Path, PathBuf};

use alfa::dinov2::{DinoRequest, Dinov2, Dinov2Error, GRID};
use candle_core::{DType, Device, IndexOp, Tensor};
use common::fixtures;

fn weights() -> PathBuf {
    fixtures().join("dinov2/tiny-dinov2.safetensors")
}

/// `model` on the kernels the test runs on (`common::kernels`): alfa's own forward, or
/// the crate's model (`generic`).
fn load(model: &Path) -> Result<Dinov2, Dinov2Error> {
    let files = DinoRequest { model: Some(model.display().to_string()), ..Default::default() }.resolve()?;
    Dinov2::load(&files, &Device::Cpu, common::kernels())
}

fn expected(name: &str) -> Tensor {
    let mut all = candle_core::safetensors::load(fixtures().join("dinov2/expected.safetensors"), &Device::Cpu).unwrap();
    all.remove(name).unwrap().to_dtype(DType::F32).unwrap()
}

fn images() -> Vec<PathBuf> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("dinov2/expected.json")).unwrap()).unwrap();
    meta["images"].as_array().unwrap().iter().map(|p| fixtures().join(p.as_str().unwrap())).collect()
}

/// The worst per patch cosine and the largest absolute difference. The reference rows
/// are normalised again: float16 storage moves their norms by about 1e-4.
fn compare(ours: &Tensor, reference: &Tensor) -> (f32, f32) {
    let reference = &alfa::clip::l2_normalize(reference).unwrap();
    let cosines = (ours * reference).unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
    let worst = cosines.into_iter().fold(f32::INFINITY, f32::min);
    let diff = (ours - reference).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    (worst, diff)
}

both_kernels! {
    fn patch_features_match_timm() {
        let model = load(&weights()).unwrap();
        assert_eq!((model.shape.depth, model.shape.embed_dim, model.shape.num_heads), (2, 48, 3));
        let (candle_ops, dinov2) = (expected("candle_ops"), expected("dinov2"));
        let native = common::kernels() == alfa::clip::Kernels::Native;
        for (i, file) in images().iter().enumerate() {
            let image = alfa::clip::open_image(file).unwrap();
            let ours = model.patch_features(&image).unwrap();
            assert_eq!(ours.dims(), &[GRID * GRID, 48]);
            let (cosine, diff) = compare(&ours, &candle_ops.i(i).unwrap());
            let (cosine_dinov2, diff_dinov2) = compare(&ours, &dinov2.i(i).unwrap());
            eprintln!(
                "{file:?}: against the crate's ops cosine >= {cosine}, max diff {diff}; against DINOv2 cosine >= {cosine_dinov2}, max diff {diff_dinov2}"
            );
            if native {
                // alfa's forward: DINOv2's exact GELU, its blocks' norms at CLIP's eps 1e-5
                // (DINOv2: 1e-6), float16 storage of the expected values.
                assert!(cosine_dinov2 >= 0.99999 && diff_dinov2 <= 1e-3, "{file:?}: against DINOv2, cosine {cosine_dinov2}, max diff {diff_dinov2}");
            } else {
                // The crate's model: the same computation as timm configured with the
                // crate's eps 1e-5 and tanh GELU: only float16 storage of the expected
                // values and summation order differ. Measured: worst cosine 0.9999996,
                // largest difference 2.3e-4 (float16 steps).
                assert!(cosine >= 0.99999 && diff <= 1e-3, "{file:?}: against the crate's ops, cosine {cosine}, max diff {diff}");
            }
            // Against DINOv2 itself (eps 1e-6, exact GELU), either way.
            assert!(cosine_dinov2 >= 0.9999, "{file:?}: against DINOv2, worst patch cosine {cosine_dinov2}");
        }
    }
}

/// The fixture's tensors, rewritten with `edit`, in a temporary folder, with the
/// fixture's metadata (its head count: candle's writer has no metadata, so the file is
/// written here, as the format describes it: a JSON header, then the raw tensors).
fn edited_weights(edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) -> (tempfile::TempDir, PathBuf) {
    let mut tensors = candle_core::safetensors::load(weights(), &Device::Cpu).unwrap();
    edit(&mut tensors);
    let mut header = serde_json::json!({"__metadata__": {"num_heads": "3"}});
    let mut data = Vec::new();
    for (name, tensor) in &tensors {
        let values = tensor.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header[name] = serde_json::json!({"dtype": "F32", "shape": tensor.dims(), "data_offsets": [start, data.len()]});
    }
    let header = serde_json::to_vec(&header).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.safetensors");
    let bytes = [&(header.len() as u64).to_le_bytes()[..], &header, &data].concat();
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[test]
fn weights_of_the_wrong_shape_name_the_tensor_and_both_shapes() {
    // Position embeddings of a 224 px model (16 x 16 patches + the class token).
    let (_dir, path) = edited_weights(|t| {
        let pos = t["pos_embed"].narrow(1, 0, 257).unwrap();
        t.insert("pos_embed".into(), pos);
    });
    let message = load(&path).unwrap_err().to_string();
    assert!(message.contains("`pos_embed`") && message.contains("[1, 257, 48]") && message.contains("[1, 1370, 48]"), "{message}");
    // A tensor the model needs is missing: named.
    let (_dir, path) = edited_weights(|t| {
        t.remove("blocks.1.mlp.fc2.bias");
    });
    let message = load(&path).unwrap_err().to_string();
    assert!(message.contains("`blocks.1.mlp.fc2.bias`"), "{message}");
}

#[test]
fn a_missing_model_says_what_it_accepts() {
    let message = load(Path::new("/nonexistent/dino.safetensors")).unwrap_err().to_string();
    assert!(message.contains("vits14") && message.contains(".safetensors"), "{message}");
    let empty = tempfile::tempdir().unwrap();
    let message = load(empty.path()).unwrap_err().to_string();
    assert!(message.contains("dinov2_vits14.safetensors"), "{message}");
}

#[test]
fn offline_the_message_says_what_to_download_and_where_without_waiting() {
    let cache = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_alfa"))
        .args(["embed", "--dinov2", "vits14", "--image"])
        .arg(&images()[0])
        .env("HF_HUB_CACHE", cache.path())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("To work offline, download https://huggingface.co/lmz/candle-dino-v2/resolve/main/dinov2_vits14.safetensors")
            && stderr.contains("--dino-model"),
        "{stderr}"
    );
}

/// The tiny CLIP detector with the tiny DINOv2 model.
fn detector_with_dinov2() -> alfa::detect::Detector {
    common::detector("tiny-gelu", None, None).with_dinov2(std::sync::Arc::new(load(&weights()).unwrap()))
}

/// A 259 x 259 textured part (DINOv2 sees it at 518: a patch is 7 px here); with
/// `defect`, a bright 28 px square at (112, 84).
fn part(phase: u32, defect: bool) -> image::DynamicImage {
    image::DynamicImage::ImageRgb8(common::textured_part(259, 28, defect.then_some((112, 84)), phase))
}

fn defect_mask() -> Vec<bool> {
    (0..259 * 259).map(|i| (112..140).contains(&(i % 259)) && (84..112).contains(&(i / 259))).collect()
}

/// AUROC by ranks (ties share their mean rank), for the 67k pixels of a map.
fn auroc(scores: &[f32], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < order.len() {
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += order[i..j].iter().filter(|&&k| labels[k]).count() as f64 * mean_rank;
        i = j;
    }
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[test]
fn anomalydino_finds_a_pasted_defect() {
    use alfa::detect::baselines::build_method;
    use alfa::detect::{ClassSpec, DetectSettings, MethodKind};
    let class = ClassSpec {
        id: "carpet".into(),
        name: "carpet".into(),
        prompts: alfa::prompts::PromptStore { recipes: None }.resolve("carpet").unwrap().set.expand(),
    };
    let mut method = build_method(MethodKind::Anomalydino, detector_with_dinov2(), DetectSettings::default()).unwrap();
    let message = method.prepare(&class, &[]).unwrap_err().to_string();
    assert!(message.contains("reference"), "{message}");
    method.prepare(&class, &[part(0, false), part(3, false)]).unwrap();
    let defective = method.score(&part(0, true)).unwrap();
    assert_eq!((defective.map.width, defective.map.height), (259, 259));
    // Measured: 0.99993 on the random tiny model.
    let auc = auroc(&defective.map.values, &defect_mask());
    // A clean part the references do not hold as such (another phase of the texture).
    let clean = method.score(&part(1, false)).unwrap();
    eprintln!("pixel AUROC {auc}, image score {} (defect) against {} (clean)", defective.image_score, clean.image_score);
    assert!(auc >= 0.9, "pixel AUROC {auc}");
    assert!(defective.image_score > clean.image_score + 0.05, "{} vs {}", defective.image_score, clean.image_score);
}

#[test]
fn alfa_fuses_the_dinov2_few_shot_map() {
    use alfa::detect::{DetectSettings, RefsBackbone};
    let mut det = detector_with_dinov2();
    let mut prompts = alfa::prompts::PromptStore { recipes: None }.resolve("carpet").unwrap().set.expand();
    prompts.normal.truncate(10);
    prompts.abnormal.truncate(10);
    let class = det.encode_class(prompts).unwrap();
    let settings = DetectSettings { refs_backbone: RefsBackbone::Dinov2, ..Default::default() };
    let refs = vec![(PathBuf::from("clean-a.png"), part(0, false)), (PathBuf::from("clean-b.png"), part(3, false))];
    let bank = det.reference_bank(&refs, &settings, |_, _| ()).unwrap().bank.unwrap();
    assert!(bank.dinov2_patches().is_some() && bank.scale(2).is_none());
    // A CLIP-window run cannot use it (nor the other way round).
    assert!(det.detect_with_references(&part(0, true), &class, Some(&bank), &DetectSettings::default()).is_err());

    let query = part(0, true);
    let d = det.detect_with_references(&query, &class, Some(&bank), &settings).unwrap();
    let few_shot = d.few_shot.as_ref().unwrap();
    assert_eq!((few_shot.map.width, few_shot.map.height), (GRID, GRID));
    assert_eq!((d.patch_map.width, d.map.width), (GRID, 259));
    // Section 5's fusion: the image score adds the few-shot image score.
    let zero_shot = det.detect(&query, &class, &settings).unwrap();
    assert!((d.image_score - (zero_shot.image_score + few_shot.max_score)).abs() < 1e-5);
    // The worst patch lies on the defect (patches 16 to 19 of 37 across, 12 to 15 down)
    // and its nearest reference patch is a 7 px box of a reference.
    let [x, y] = few_shot.worst_patch;
    assert!((15..=20).contains(&x) && (11..=16).contains(&y), "worst patch {:?}", few_shot.worst_patch);
    let nearest = few_shot.nearest.as_ref().unwrap();
    assert!(nearest.file.ends_with("clean-a.png") || nearest.file.ends_with("clean-b.png"));
    let [x0, y0, x1, y1] = nearest.region;
    assert!(x1 - x0 <= 8 && y1 - y0 <= 8 && x1 <= 259 && y1 <= 259, "{:?}", nearest.region);

    // Without DINOv2 loaded, a DINOv2 bank cannot be built: said, not a panic.
    let plain = common::detector("tiny-gelu", None, None);
    let message = plain.reference_bank(&refs, &settings, |_, _| ()).err().unwrap().to_string();
    assert!(message.contains("DINOv2"), "{message}");
}

#[test]
fn embed_prints_the_patch_features_row_major() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_alfa"))
        .args(["embed", "--dinov2", weights().to_str().unwrap(), "--image"])
        .arg(&images()[1])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let image = &printed["images"][0];
    assert_eq!(image["file"], images()[1].display().to_string());
    assert_eq!(image["grid"], serde_json::json!([GRID, GRID]));
    let rows: Vec<f32> = image["patches"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    let printed = Tensor::from_vec(rows, (GRID * GRID, 48), &Device::Cpu).unwrap();
    let (cosine, _) = compare(&printed, &expected("candle_ops").i(1).unwrap());
    assert!(cosine >= 0.99999, "worst patch cosine {cosine}");
    // CLIP's texts need CLIP: refused with --dinov2.
    let texts = std::process::Command::new(env!("CARGO_BIN_EXE_alfa"))
        .args(["embed", "--dinov2", "vits14", "--text", "a bottle"])
        .output()
        .unwrap();
    assert!(!texts.status.success());
}
