//! `alfa threshold` and `alfa recipe` end to end: the binary with the tiny fixture
//! model on generated good images, recipes in a temporary folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alfa::detect::threshold::threshold_at_fpr;
use alfa::prompts::PromptStore;
use alfa::recipe::{Recipes, ThresholdHow};
use common::{fixtures, shared_tokenizer};
use image::{Rgb, RgbImage};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn recipes(&self) -> Recipes {
        Recipes::new(self.dir.path().join("recipes"))
    }

    /// `alfa ARGS` with the recipes and the cache in the temporary folder.
    fn alfa(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_alfa"))
            .args(args)
            .env("ALFA_RECIPES", self.recipes().root)
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    }

    /// `alfa threshold` with the tiny model.
    fn threshold(&self, args: &[&str]) -> Output {
        let model = fixtures().join("tiny-gelu");
        let tokenizer = shared_tokenizer();
        let mut all = vec!["threshold", "--model", model.to_str().unwrap(), "--tokenizer", tokenizer.to_str().unwrap()];
        all.extend_from_slice(args);
        self.alfa(&all)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Good parts, each a little different.
fn good_folder(dir: &Path, n: u32) -> PathBuf {
    let good = dir.join("good");
    std::fs::create_dir_all(&good).unwrap();
    for i in 0..n {
        RgbImage::from_fn(40, 32, |x, y| Rgb([(80 + i * 7 + x % 30) as u8, (100 + (y * (i + 1)) % 40) as u8, 150 - i as u8 * 3]))
            .save(good.join(format!("{i:02}.png")))
            .unwrap();
    }
    good
}

#[test]
fn thresholds_from_good_images_are_the_apps_and_go_into_the_recipe() {
    let env = Env::new();
    let good = good_folder(env.dir.path(), 10);
    let broken = good.join("99.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nnot a png").unwrap();
    let out = env.threshold(&["--class", "bottle", "--good", good.to_str().unwrap(), "--fpr", "0.2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The unreadable file is named and left out.
    assert!(stderr(&out).contains("skipped (cannot be read)") && stderr(&out).contains("99.png"), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("written to"), "{}", String::from_utf8_lossy(&out.stdout));

    let recipe = env.recipes().read("bottle").unwrap().expect("the recipe is written");
    let model = recipe.model.as_ref().unwrap();
    let weights = std::fs::read(fixtures().join("tiny-gelu/open_clip_model.safetensors")).unwrap();
    assert_eq!(model.weights_blake3, blake3::hash(&weights).to_hex().to_string());
    assert_eq!(model.id, fixtures().join("tiny-gelu").display().to_string());
    let method = recipe.method.as_ref().unwrap();
    assert_eq!((method.name, method.settings()), (alfa::detect::MethodKind::Alfa, Default::default()));
    let image = recipe.thresholds.image.clone().unwrap();
    let region = recipe.thresholds.region.clone().unwrap();
    assert_eq!((image.how, image.fpr, image.images), (ThresholdHow::GoodImages, Some(0.2), Some(10)));
    assert!(image.good[0].ends_with("good"), "{:?}", image.good);

    // The same good images scored here, one by one: the stored thresholds are the
    // app's rule on those scores, and at most floor(0.2 x 10) = 2 good images are NG.
    let mut detector = common::detector("tiny-gelu", None, None);
    let class = detector.encode_class(PromptStore { recipes: None }.resolve("bottle").unwrap().set.expand()).unwrap();
    let (mut scores, mut maxima) = (Vec::new(), Vec::new());
    for i in 0..10 {
        let picture = alfa::clip::open_image(&good.join(format!("{i:02}.png"))).unwrap();
        let detection = detector.detect(&picture, &class, &Default::default()).unwrap();
        scores.push(detection.image_score);
        maxima.push(detection.map.max());
    }
    assert_eq!(image.value, threshold_at_fpr(&scores, 0.2).unwrap());
    assert_eq!(region.value, threshold_at_fpr(&maxima, 0.2).unwrap());
    assert!(scores.iter().filter(|&&s| s >= image.value).count() <= 2);
    assert!(maxima.iter().filter(|&&s| s >= region.value).count() <= 2);

    // By hand: the OK/NG threshold changes, the region threshold (same model) stays.
    let out = env.threshold(&["--class", "bottle", "--threshold", "0.42"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let again = env.recipes().read("bottle").unwrap().unwrap();
    let by_hand = again.thresholds.image.unwrap();
    assert_eq!((by_hand.value, by_hand.how), (0.42, ThresholdHow::ByHand));
    assert_eq!(again.thresholds.region, Some(region));

    // The recipe as `alfa recipe` shows it.
    let listed = String::from_utf8(env.alfa(&["recipe", "list"]).stdout).unwrap();
    assert!(listed.contains("bottle") && listed.contains("0.42 (by hand)") && listed.contains("10 good, FPR 0.2"), "{listed}");
    let shown = env.alfa(&["recipe", "show", "bottle", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["recipe"]["thresholds"]["image"]["value"], 0.42);
    assert!(shown["prompt_set"].as_str().unwrap().contains("built-in bottle"), "{shown}");
}

#[test]
fn a_baseline_is_not_fitted_and_a_bad_recipe_is_named_with_its_line() {
    let env = Env::new();
    let good = good_folder(env.dir.path(), 2);
    let out = env.threshold(&["--class", "bottle", "--method", "winclip", "--good", good.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("set a baseline's by hand"), "{}", stderr(&out));

    let file = env.recipes().recipe_file("bottle");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "format = 1\nclass = \"bottle\"\n\n[method]\nname = \"alfa\"\nscales = [2, 3]\nwindow_modes = \"tokens\"\n").unwrap();
    for args in [vec!["recipe", "show", "bottle"], vec!["recipe", "list"]] {
        let out = env.alfa(&args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        assert!(text.contains(&format!("{}, line 7", file.display())) && text.contains("window_modes"), "{args:?}: {text}");
    }
    let out = env.threshold(&["--class", "bottle", "--threshold", "0.5"]);
    assert!(!out.status.success() && stderr(&out).contains("line 7"), "{}", stderr(&out));
}

#[test]
fn a_recipes_folder_that_cannot_be_written_is_named_with_the_way_out() {
    let env = Env::new();
    let image = good_folder(env.dir.path(), 1).join("00.png");
    let not_a_folder = env.dir.path().join("recipes-file");
    std::fs::write(&not_a_folder, "x").unwrap();
    let out = env.alfa(&["refs", "add", "--class", "bottle", "--recipes", not_a_folder.to_str().unwrap(), image.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&not_a_folder.display().to_string()) && err.contains("--recipes DIR"), "{err}");
}

#[test]
fn export_and_import_move_a_class_between_recipe_folders() {
    let env = Env::new();
    let image = good_folder(env.dir.path(), 1).join("00.png");
    let added = env.alfa(&["refs", "add", "--class", "screw", image.to_str().unwrap()]);
    assert!(added.status.success(), "{}", stderr(&added));
    let zip = env.dir.path().join("screw.zip");
    let out = env.alfa(&["recipe", "export", "screw", "--out", zip.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let other = env.dir.path().join("other");
    let import = |force: bool| {
        let mut args = vec!["recipe", "import", zip.to_str().unwrap(), "--recipes", other.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        env.alfa(&args)
    };
    let first = import(false);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(std::fs::read(other.join("screw/refs/00.png")).unwrap(), std::fs::read(&image).unwrap());
    let again = import(false);
    assert!(!again.status.success() && stderr(&again).contains("--force"), "{}", stderr(&again));
    assert!(import(true).status.success());
}

/// Good images, and the `bottle` recipe `alfa threshold` fitted on them with its OK/NG threshold.
fn fitted_bottle(env: &Env) -> (PathBuf, alfa::recipe::Recipe, f32) {
    let good = good_folder(env.dir.path(), 4);
    let fitted = env.threshold(&["--class", "bottle", "--good", good.to_str().unwrap(), "--fpr", "0.25"]);
    assert!(fitted.status.success(), "{}", stderr(&fitted));
    let recipe = env.recipes().read("bottle").unwrap().unwrap();
    let threshold = recipe.thresholds.image.as_ref().unwrap().value;
    (good, recipe, threshold)
}

#[test]
fn detect_applies_the_recipes_thresholds_and_refuses_another_models() {
    let env = Env::new();
    let (good, recipe, threshold) = fitted_bottle(&env);
    let model = fixtures().join("tiny-gelu");
    let tokenizer = shared_tokenizer();
    let image = good.join("00.png");
    let detect = |out: &str, extra: &[&str]| {
        let out = env.dir.path().join(out);
        let mut args = vec!["detect", "--model", model.to_str().unwrap(), "--tokenizer", tokenizer.to_str().unwrap()];
        args.extend_from_slice(&["--class", "bottle", "--json", "--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        args.push(image.to_str().unwrap());
        env.alfa(&args)
    };
    // 0: all OK, 3: some NG; both are a run that applied its thresholds.
    let applied = |out: &Output| matches!(out.status.code(), Some(0 | 3));

    // Made with this model, method and settings: its thresholds decide.
    let run = detect("same", &[]);
    assert!(applied(&run), "{}", stderr(&run));
    let record: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(record["threshold"].as_f64().unwrap() as f32, threshold);
    assert!(record["verdict"].is_string(), "{record}");

    // Other window scales than the recipe's: refused, the recipe's settings named.
    let run = detect("scales", &["--scales", "2"]);
    assert!(!applied(&run) && stderr(&run).contains("--scales 2,3"), "{}", stderr(&run));

    // Made with another model: refused, unless --threshold or --force.
    let mut other = recipe.clone();
    other.model.as_mut().unwrap().weights_blake3 = "0".repeat(64);
    env.recipes().write(&other).unwrap();
    let run = detect("other", &[]);
    let err = stderr(&run);
    assert!(!applied(&run) && err.contains("may not transfer") && err.contains("--threshold") && err.contains("--force"), "{err}");
    assert!(!env.dir.path().join("other/00.tiff").exists(), "refused before any image");
    let run = detect("forced", &["--force"]);
    assert!(applied(&run) && stderr(&run).contains("applied anyway"), "{}", stderr(&run));
    let run = detect("by-hand", &["--threshold", "0.5"]);
    assert!(applied(&run), "{}", stderr(&run));
    let record: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(record["threshold"].as_f64(), Some(0.5));
}

#[test]
fn watch_applies_the_class_recipes_thresholds_and_refuses_another_models() {
    let env = Env::new();
    let (good, recipe, threshold) = fitted_bottle(&env);
    let model = fixtures().join("tiny-gelu");
    let tokenizer = shared_tokenizer();
    let input = env.dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(good.join("00.png"), input.join("00.png")).unwrap();
    let watch = |out: &str, extra: &[&str]| {
        let out = env.dir.path().join(out);
        let mut args = vec!["watch", input.to_str().unwrap(), "--model", model.to_str().unwrap(), "--tokenizer", tokenizer.to_str().unwrap()];
        args.extend_from_slice(&["--class", "bottle", "--settle-ms", "100", "--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_alfa"))
            .args(&args)
            .env("ALFA_RECIPES", env.recipes().root)
            .env("XDG_CACHE_HOME", env.dir.path().join("cache"))
            .env("HF_HUB_OFFLINE", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The first line of OUT/results.jsonl, once the image already in the folder is analysed.
    let first_result = |out: &str, mut child: std::process::Child| {
        let results = env.dir.path().join(out).join("results.jsonl");
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(&results).is_ok_and(|s| s.ends_with('\n')) {
            assert!(child.try_wait().unwrap().is_none(), "the watch stopped: {}", stderr(&child.wait_with_output().unwrap()));
            assert!(start.elapsed().as_secs() < 120, "no result in time");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let line = std::fs::read_to_string(&results).unwrap();
        serde_json::from_str::<serde_json::Value>(line.lines().next().unwrap()).unwrap()
    };

    // Made with this model, method and settings: its thresholds decide.
    let record = first_result("same", watch("same", &[]));
    assert_eq!(record["threshold"].as_f64().unwrap() as f32, threshold, "{record}");
    assert!(record["verdict"].is_string(), "{record}");

    // Made with another model: refused before any image (watch has no --force), unless --threshold.
    let mut other = recipe.clone();
    other.model.as_mut().unwrap().weights_blake3 = "0".repeat(64);
    env.recipes().write(&other).unwrap();
    let refused = watch("other", &[]).wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("may not transfer"), "{}", stderr(&refused));
    assert!(!env.dir.path().join("other/00.tiff").exists(), "refused before any image");
    let record = first_result("by-hand", watch("by-hand", &["--threshold", "0.5"]));
    assert_eq!(record["threshold"].as_f64(), Some(0.5), "{record}");
}
