//! `--refs-backbone dinov2` and `--method anomalydino` end to end: the binary with the
//! tiny CLIP and DINOv2 fixture models on generated parts.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, save_png, shared_tokenizer, textured_part};

fn dino_model() -> String {
    fixtures().join("dinov2/tiny-dinov2.safetensors").display().to_string()
}

/// `alfa <args>` with the tiny models, a private cache and recipes folder, offline.
fn alfa(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alfa"))
        .args(args)
        .args(["--model", fixtures().join("tiny-gelu").to_str().unwrap()])
        .args(["--tokenizer", shared_tokenizer().to_str().unwrap()])
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("ALFA_RECIPES", home.join("recipes"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn detect_and_threshold_with_a_dinov2_bank() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let query = home.join("query.png");
    save_png(&textured_part(48, 10, Some((20, 12)), 0), &query);
    let refs = home.join("refs");
    save_png(&textured_part(48, 10, None, 0), &refs.join("good-a.png"));
    save_png(&textured_part(48, 10, None, 2), &refs.join("good-b.png"));
    std::fs::write(refs.join("broken.png"), b"not a png").unwrap();
    let out = home.join("out");
    let (q, o, d) = (query.to_str().unwrap(), out.to_str().unwrap(), dino_model());
    let detect = |extra: &[&str]| {
        let mut args = vec!["detect", "--class", "widget", "--dino-model", &d, "--json", "--force", "--out", o];
        args.extend_from_slice(extra);
        args.push(q);
        alfa(&args, home)
    };

    // No references: refused before any image is analysed (exit code 1), saying why
    // and what to do, once.
    let none = detect(&["--refs-backbone", "dinov2"]);
    assert_eq!(none.status.code(), Some(1), "{}", stderr(&none));
    assert_eq!(stderr(&none).matches("--refs-backbone dinov2 compares images with normal reference images").count(), 1, "{}", stderr(&none));
    assert!(stderr(&none).contains("alfa refs add --class widget"), "{}", stderr(&none));
    assert!(none.stdout.is_empty(), "no record");

    // References: the unreadable one is skipped and named, the others make the bank.
    let few = detect(&["--refs-backbone", "dinov2", "--refs", refs.to_str().unwrap()]);
    assert!(few.status.success(), "{}", stderr(&few));
    assert!(stderr(&few).contains("skipped reference") && stderr(&few).contains("broken.png"), "{}", stderr(&few));
    assert!(stderr(&few).contains("2 reference image(s)") && stderr(&few).contains("DINOv2 patches"), "{}", stderr(&few));
    let record: serde_json::Value = serde_json::from_slice(&few.stdout).unwrap();
    assert_eq!(record["few_shot"]["references"], 2);
    assert!(record["few_shot"]["max_score"].as_f64().unwrap() > 0.0);
    assert_eq!(record["settings"]["refs_backbone"], "dinov2", "{record}");
    assert!(record["model"].as_str().unwrap().contains(" + dinov2 "), "the records name both weights: {record}");

    // --resume keeps what these weights made, and refuses other DINOv2 weights.
    let resume = |model: &str| {
        let args = ["detect", "--class", "widget", "--dino-model", model, "--refs-backbone", "dinov2", "--refs", refs.to_str().unwrap()];
        alfa(&[&args[..], &["--json", "--resume", "--out", o, q]].concat(), home)
    };
    let same = resume(&d);
    assert!(same.status.success() && same.stdout.is_empty(), "nothing left to analyse: {}", stderr(&same));
    let other = home.join("other-dinov2.safetensors");
    std::fs::copy(&d, &other).unwrap();
    let refused = resume(other.to_str().unwrap());
    assert!(!refused.status.success(), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("cannot resume") && stderr(&refused).contains("another model"), "{}", stderr(&refused));

    // Only ALFA's bank has a backbone to choose.
    let winclip = detect(&["--method", "winclip", "--refs-backbone", "dinov2"]);
    assert!(!winclip.status.success());
    assert!(stderr(&winclip).contains("not --method winclip's"), "{}", stderr(&winclip));

    // The class's recipe records the backbone its thresholds hold for.
    let set = alfa(&["threshold", "--class", "widget", "--refs-backbone", "dinov2", "--threshold", "0.5"], home);
    assert!(set.status.success(), "{}", stderr(&set));
    let recipe = std::fs::read_to_string(home.join("recipes/widget/recipe.toml")).unwrap();
    assert!(recipe.contains("refs_backbone = \"dinov2\""), "{recipe}");
    let shown = Command::new(env!("CARGO_BIN_EXE_alfa")).args(["recipe", "show", "widget"]).env("ALFA_RECIPES", home.join("recipes")).output().unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains("few-shot bank: dinov2 features"), "{}", stderr(&shown));
}

#[test]
fn eval_runs_anomalydino_and_the_fused_method_few_shot() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let root = home.join("mvtec");
    for i in 0..2 {
        save_png(&textured_part(48, 10, None, i), &root.join(format!("widget/train/good/{i:03}.png")));
        save_png(&textured_part(48, 10, None, i + 1), &root.join(format!("widget/test/good/{i:03}.png")));
        save_png(&textured_part(48, 10, Some((8 + 20 * i, 10)), i), &root.join(format!("widget/test/crack/{i:03}.png")));
    }
    let (r, d) = (root.to_str().unwrap(), dino_model());
    let json = home.join("dino.json");
    let out = alfa(&["eval", "--root", r, "--method", "anomalydino", "--dino-model", &d, "--shots", "1", "--seeds", "2", "--json", json.to_str().unwrap()], home);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["run"]["method"], "anomalydino");
    assert_eq!(report["run"]["seeds"], serde_json::json!([0, 1]));
    assert!(report["run"]["dinov2"].as_str().unwrap().ends_with("tiny-dinov2.safetensors"), "{}", report["run"]);

    let fused = alfa(&["eval", "--root", r, "--refs-backbone", "dinov2", "--dino-model", &d, "--shots", "1", "--seeds", "1"], home);
    assert!(fused.status.success(), "{}", stderr(&fused));

    for args in [["--method", "anomalydino"], ["--refs-backbone", "dinov2"]] {
        let zero = alfa(&[&["eval", "--root", r, "--dino-model", &d][..], &args[..]].concat(), home);
        assert!(!zero.status.success());
        assert!(stderr(&zero).contains("give --shots K"), "{}", stderr(&zero));
    }
}
