//! `alfa eval` end to end on a generated MVTec-layout dataset with the tiny model.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fixtures, shared_tokenizer};
use image::{GrayImage, Luma, RgbImage};

/// A textured 48x48 part; a defect is a bright 10x10 square at the given corner.
fn part(defect: Option<(u32, u32)>, phase: u32) -> RgbImage {
    common::textured_part(48, 10, defect, phase)
}

/// `widget`: a textured part; defects are bright squares with their masks.
fn dataset(root: &Path) {
    let save = |rel: &str, image: &RgbImage| common::save_png(image, &root.join(rel));
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
        // Never the user's own recipes.
        .env("ALFA_RECIPES", cache.join("recipes"))
        .output()
        .unwrap()
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

const KEYS: [&str; 6] = ["image_auroc", "image_aupr", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro"];

/// Every method evaluates; `alfa detect --method M` on the dataset, then `eval
/// --maps`, gives the same numbers as `eval --method M`.
#[test]
fn every_method_evaluates_and_its_detect_maps_score_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mvtec");
    dataset(&root);
    let r = root.to_str().unwrap();
    for method in ["alfa", "clip", "winclip", "anovl-tfa", "anovl-tta"] {
        let direct = dir.path().join(format!("{method}.json"));
        let out = alfa(&["eval", "--root", r, "--method", method, "--json", direct.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{method}: {}", String::from_utf8_lossy(&out.stderr));
        let table = String::from_utf8(out.stdout).unwrap();
        assert!(table.contains("| widget |") && table.contains("| **mean** |"), "{table}");
        let direct_report = report(&direct);
        for key in KEYS {
            let v = direct_report["classes"]["widget"][key].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{method} {key} {v}");
            assert_eq!(direct_report["mean"][key], direct_report["classes"]["widget"][key]);
        }
        assert_eq!(direct_report["run"]["method"], method);
        let maps = dir.path().join(format!("maps-{method}"));
        let out = alfa(&["detect", "--method", method, "--out", maps.to_str().unwrap(), r], dir.path());
        assert!(out.status.success(), "{method}: {}", String::from_utf8_lossy(&out.stderr));
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(maps.join("widget/test/crack/000.json")).unwrap()).unwrap();
        assert_eq!(record["method"], method);
        assert!(record["image_score"].is_number(), "{record}");
        assert_eq!(record["prompts"].is_object(), method == "alfa", "only ALFA reports its prompts: {record}");
        assert!(maps.join("widget/test/crack/000_overlay.png").is_file());
        let json = dir.path().join(format!("maps-{method}.json"));
        let csv = dir.path().join(format!("maps-{method}.csv"));
        let out = alfa(&["eval", "--root", r, "--maps", maps.to_str().unwrap(), "--json", json.to_str().unwrap(), "--csv", csv.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{method}: {}", String::from_utf8_lossy(&out.stderr));
        let (from_maps, direct) = (report(&json), report(&direct));
        for key in KEYS {
            let (a, b) = (from_maps["classes"]["widget"][key].as_f64().unwrap(), direct["classes"]["widget"][key].as_f64().unwrap());
            assert!((a - b).abs() < 1e-9, "{method} {key}: maps {a} vs method {b}");
        }
        assert!(std::fs::read_to_string(&csv).unwrap().starts_with("class,image_auroc,"));
    }
    // A zero-shot method with references asked for: refused before any work.
    let out = alfa(&["detect", "--method", "clip", "--shots", "1", "--out", dir.path().join("x").to_str().unwrap(), r], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--method clip is zero-shot only"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("x").exists(), "nothing written");
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shots works with --method alfa, winclip or anomalydino"));

    let json = dir.path().join("templates.json");
    let out = alfa(&["eval", "--root", r, "--ablation", "templates", "--json", json.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(report(&json)["run"]["ablation"], "templates");

    let out = alfa(&["eval", "--root", r, "--classes", "gadget"], dir.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("widget"), "the error lists the classes");
}

#[test]
fn anovl_views_are_checked_before_any_work_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    // No dataset there: an error about the flag, not the root, comes before any work.
    let missing = dir.path().join("no-dataset");
    let m = missing.to_str().unwrap();
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();
    for (args, message) in [
        (vec!["--method", "clip", "--anovl-views", "22"], "--anovl-views works with --method anovl-tfa or anovl-tta, not clip"),
        (vec!["--anovl-views", "1"], "--anovl-views works with --method anovl-tfa or anovl-tta, not alfa"),
        (vec!["--method", "anovl-tfa", "--anovl-views", "5"], "not 5"),
        (vec!["--method", "anovl-tta", "--anovl-views", "22", "--maps", m], "does nothing with --maps"),
    ] {
        let out = alfa(&[&["eval", "--root", m][..], &args].concat(), dir.path());
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }

    let root = dir.path().join("mvtec");
    dataset(&root);
    let r = root.to_str().unwrap();
    let mut image_auroc = Vec::new();
    for views in [None, Some("22")] {
        let json = dir.path().join(format!("views-{views:?}.json"));
        let mut args = vec!["eval", "--root", r, "--method", "anovl-tfa", "--json", json.to_str().unwrap()];
        args.extend(views.map(|v| ["--anovl-views", v]).into_iter().flatten());
        let out = alfa(&args, dir.path());
        assert!(out.status.success(), "{}", stderr(&out));
        let report = report(&json);
        assert_eq!(report["run"]["anovl_views"], views.map_or(1, |v| v.parse::<u64>().unwrap()));
        image_auroc.push(report["classes"]["widget"]["image_auroc"].as_f64().unwrap());
    }
    assert!(image_auroc.iter().all(|v| (0.0..=1.0).contains(v)), "{image_auroc:?}");
}

/// Photos sorted into MVTec's folders without `ground_truth/`: image-level metrics, and
/// the pixel columns empty with a note that names the class, instead of an error.
#[test]
fn an_mvtec_layout_without_masks_reports_image_metrics_and_says_why_pixels_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mvtec");
    dataset(&root);
    std::fs::remove_dir_all(root.join("widget/ground_truth")).unwrap();
    let json = dir.path().join("report.json");
    let markdown = dir.path().join("report.md");
    let out = alfa(
        &["eval", "--root", root.to_str().unwrap(), "--json", json.to_str().unwrap(), "--markdown", markdown.to_str().unwrap()],
        dir.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = report(&json);
    for key in ["image_auroc", "image_aupr", "image_f1_max"] {
        let v = report["classes"]["widget"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    for key in ["pixel_auroc", "pixel_f1_max", "pro"] {
        assert!(report["classes"]["widget"][key].is_null() && report["mean"][key].is_null(), "{key}: {report}");
    }
    let note = report["notes"][0].as_str().unwrap_or_default();
    assert!(note.contains("ground-truth masks") && note.contains("`widget`"), "{report}");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| widget |") && table.contains(" – |"), "{table}");
    assert!(table.contains("Note: pixel metrics") && table.contains("`widget`"), "{table}");
    assert_eq!(std::fs::read_to_string(&markdown).unwrap().trim(), table.trim());
}

/// The folder layout's class is named by `--class` (its folder's name rarely is a
/// class), and eval says which prompt set each class used.
#[test]
fn a_folder_dataset_takes_its_class_from_the_flag_and_names_the_prompt_set() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folder_ds");
    for i in 0..2u32 {
        for (folder, defect) in [("normal", None), ("abnormal", Some((8 + 12 * i, 20)))] {
            let path = root.join(format!("{folder}/{i:03}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            part(defect, i).save(path).unwrap();
        }
    }
    let prompts_dir = dir.path().join("prompts");
    std::fs::create_dir_all(&prompts_dir).unwrap();
    let r = root.to_str().unwrap();
    let pd = prompts_dir.to_str().unwrap();
    let json = dir.path().join("report.json");
    let j = json.to_str().unwrap();
    let stderr = |out: &Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // Without --class: the folder's name, and the generic set, said out loud.
    let out = alfa(&["eval", "--root", r, "--recipes", pd, "--json", j], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("class folder_ds: generic (no prompt set named folder_ds)"), "{}", stderr(&out));
    assert!(report(&json)["classes"]["folder_ds"].is_object());

    let out = alfa(&["eval", "--root", r, "--recipes", pd, "--class", "bottle", "--json", j], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("class bottle: built-in bottle"), "{}", stderr(&out));
    let bottle = report(&json);
    assert!(bottle["classes"]["bottle"]["image_auroc"].is_number() && bottle["classes"].get("folder_ds").is_none(), "{bottle}");
    assert_eq!(bottle["run"]["prompt_sets"]["bottle"], "built-in bottle");

    // A set in the class's recipe is named by its path.
    let own = prompts_dir.join("bottle/prompts.toml");
    std::fs::create_dir_all(own.parent().unwrap()).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("prompts/bottle.toml"), &own).unwrap();
    let out = alfa(&["eval", "--root", r, "--recipes", pd, "--classes", "bottle"], dir.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("class bottle: {}", own.display())), "{}", stderr(&out));

    let out = alfa(&["eval", "--root", r, "--class", "bottle,screw"], dir.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("one class"), "{}", stderr(&out));
}

/// `eval --shard I/N --save-maps DIR` in three processes at once, then `eval --maps
/// DIR`: the metrics of one unsharded `eval` (few-shot, so references are drawn the same
/// in every shard), and the saved maps are byte-equal to an unsharded `--save-maps`.
#[test]
fn three_eval_shards_in_three_processes_score_as_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mvtec");
    dataset(&root);
    let r = root.to_str().unwrap();
    let few_shot = ["--shots", "1", "--seeds", "1"];
    let (whole_json, whole_maps, shards) = (dir.path().join("whole.json"), dir.path().join("whole"), dir.path().join("shards"));
    let mut args = vec!["eval", "--root", r, "--json", whole_json.to_str().unwrap(), "--save-maps", whole_maps.to_str().unwrap()];
    args.extend(few_shot);
    let out = alfa(&args, dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let s = shards.to_str().unwrap();
    let children: Vec<_> = (1..=3)
        .map(|k| {
            let shard = format!("{k}/3");
            let mut args = vec!["eval", "--root", r, "--shard", &shard, "--save-maps", s];
            args.extend(few_shot);
            Command::new(env!("CARGO_BIN_EXE_alfa"))
                .args(args)
                .args(["--model", fixtures().join("tiny-gelu").to_str().unwrap()])
                .args(["--tokenizer", shared_tokenizer().to_str().unwrap()])
                .env("XDG_CACHE_HOME", dir.path())
                .env("ALFA_RECIPES", dir.path().join("recipes"))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (k, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "shard {}: {stderr}", k + 1);
        assert!(out.stdout.is_empty(), "a shard prints no metrics of its own");
        assert!(stderr.contains(&format!("shard {}/3 done", k + 1)) && stderr.contains("--maps"), "{stderr}");
        let scores = std::fs::read_to_string(shards.join(format!("widget/scores-shard-{}-of-3.csv", k + 1))).unwrap();
        assert_eq!(scores.lines().count(), 1 + 2, "six test images in three parts of two:\n{scores}");
    }
    let maps = |root: &Path| {
        common::file_tree(root).into_iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "tiff")).collect::<Vec<_>>()
    };
    assert_eq!(maps(&whole_maps).len(), 6);
    assert!(maps(&whole_maps) == maps(&shards), "the shards' maps are the run's maps");

    let union_json = dir.path().join("union.json");
    let out = alfa(&["eval", "--root", r, "--maps", s, "--json", union_json.to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (whole, union) = (report(&whole_json), report(&union_json));
    for key in KEYS {
        let (a, b) = (whole["classes"]["widget"][key].as_f64().unwrap(), union["classes"]["widget"][key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "{key}: unsharded {a} vs shards {b}");
    }

    // Refused before any work: a second run into the same folder, a shard without
    // somewhere to save, and more seeds than one set of maps.
    let mut again = vec!["eval", "--root", r, "--shard", "1/3", "--save-maps", s];
    again.extend(few_shot);
    let out = alfa(&again, dir.path());
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("scores-shard-1-of-3.csv"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = alfa(&["eval", "--root", r, "--shard", "1/3"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--save-maps"));
    let never = dir.path().join("never");
    let out = alfa(&["eval", "--root", r, "--shots", "1", "--seeds", "2", "--save-maps", never.to_str().unwrap()], dir.path());
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--seeds 1"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!never.exists());
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = alfa(&["eval", "--root", r, "--save-maps", file.to_str().unwrap()], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("it is a file, not a folder") && !stderr.contains("panicked"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x", "the file is left as it was");
}
