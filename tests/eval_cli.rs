//! `alfa eval` end to end on a generated MVTec-layout dataset with the tiny model.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, shared_tokenizer};
use image::{GrayImage, Luma, Rgb, RgbImage};

/// `widget`: a textured part; defects are bright squares with their masks.
fn dataset(root: &Path) {
    let part = |defect: Option<(u32, u32)>, phase: u32| {
        RgbImage::from_fn(48, 48, |x, y| {
            if let Some((dx, dy)) = defect
                && (dx..dx + 10).contains(&x)
                && (dy..dy + 10).contains(&y)
            {
                return Rgb([250, 240, 30]);
            }
            let v = if ((x + phase) / 4 + y / 4) % 2 == 0 { 70 } else { 150 };
            Rgb([v, v / 2 + 40, 200 - v / 2])
        })
    };
    let save = |rel: &str, image: &RgbImage| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image.save(path).unwrap();
    };
    for i in 0..3 {
        save(&format!("widget/train/good/{i:03}.png"), &part(None, i));
        save(&format!("widget/test/good/{i:03}.png"), &part(None, i + 1));
    }
    for (i, at) in [(5, 8), (30, 20), (18, 33)].into_iter().enumerate() {
        save(&format!("widget/test/crack/{i:03}.png"), &part(Some(at), i as u32));
        let mask = GrayImage::from_fn(48, 48, |x, y| {
            Luma([if (at.0..at.0 + 10).contains(&x) && (at.1..at.1 + 10).contains(&y) { 255 } else { 0 }])
        });
        let path = root.join(format!("widget/ground_truth/crack/{i:03}_mask.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        mask.save(path).unwrap();
    }
}

fn alfa(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alfa"))
        .args(args)
        .args(["--model", fixtures().join("tiny-gelu").to_str().unwrap()])
        .args(["--tokenizer", shared_tokenizer().to_str().unwrap()])
        .env("XDG_CACHE_HOME", cache)
        .output()
        .unwrap()
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

const KEYS: [&str; 6] = ["image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro"];

#[test]
fn every_method_runs_and_saved_maps_score_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mvtec");
    dataset(&root);
    let r = root.to_str().unwrap();
    let mut alfa_report = None;
    for method in ["alfa", "clip", "winclip", "anovl-tfa", "anovl-tta"] {
        let json = dir.path().join(format!("{method}.json"));
        let out = alfa(&["eval", "--root", r, "--method", method, "--json", json.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{method}: {}", String::from_utf8_lossy(&out.stderr));
        let table = String::from_utf8(out.stdout).unwrap();
        assert!(table.contains("| widget |") && table.contains("| **mean** |"), "{table}");
        let report = report(&json);
        for key in KEYS {
            let v = report["classes"]["widget"][key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{method} {key} {v}");
            assert_eq!(report["mean"][key], report["classes"]["widget"][key]);
        }
        assert_eq!(report["run"]["method"], method);
        if method == "alfa" {
            alfa_report = Some(report);
        }
    }

    // `alfa detect` on the dataset, then `eval --maps`: the same numbers as `eval --method alfa`.
    let maps = dir.path().join("maps");
    let out = alfa(&["detect", "--out", maps.to_str().unwrap(), r], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = dir.path().join("maps.json");
    let csv = dir.path().join("maps.csv");
    let out = alfa(&["eval", "--root", r, "--maps", maps.to_str().unwrap(), "--json", json.to_str().unwrap(), "--csv", csv.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let from_maps = report(&json);
    let alfa_report = alfa_report.unwrap();
    for key in KEYS {
        let (a, b) = (from_maps["classes"]["widget"][key].as_f64().unwrap(), alfa_report["classes"]["widget"][key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{key}: maps {a} vs method {b}");
    }
    assert!(std::fs::read_to_string(&csv).unwrap().starts_with("class,image_auroc,"));
}

#[test]
fn few_shot_seeds_and_ablations() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mvtec");
    dataset(&root);
    let r = root.to_str().unwrap();
    let json = dir.path().join("few.json");
    let out = alfa(&["eval", "--root", r, "--shots", "1", "--seeds", "2", "--json", json.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let few = report(&json);
    assert_eq!(few["run"]["seeds"], serde_json::json!([0, 1]));
    assert!(few["std"]["mean"]["image_auroc"].as_f64().unwrap() >= 0.0);
    assert!(String::from_utf8(out.stdout).unwrap().contains(" ± "));

    // AnoVL's test-time noise is drawn per seed too.
    let json = dir.path().join("tta.json");
    let out = alfa(&["eval", "--root", r, "--method", "anovl-tta", "--seeds", "2", "--json", json.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tta = report(&json);
    assert_eq!(tta["run"]["seeds"], serde_json::json!([0, 1]));
    // Different noise, different maps: the seeds' pixel AUROCs spread (3e-5 here).
    assert!(tta["std"]["mean"]["pixel_auroc"].as_f64().unwrap() > 0.0, "{}", tta["std"]);

    let out = alfa(&["eval", "--root", r, "--method", "clip", "--shots", "1"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shots works with --method alfa or winclip"));

    let json = dir.path().join("templates.json");
    let out = alfa(&["eval", "--root", r, "--ablation", "templates", "--json", json.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report(&json)["run"]["ablation"], "templates");

    let out = alfa(&["eval", "--root", r, "--classes", "gadget"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("widget"), "the error lists the classes");
}
