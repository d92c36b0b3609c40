//! `alfa detect` end to end: the binary on generated images with the tiny fixture model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use alfa::detect::export::read_map_tiff;
use common::{fixtures, shared_tokenizer};
use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};

struct Run {
    _cache: tempfile::TempDir,
    cache: PathBuf,
}

impl Run {
    fn new() -> Self {
        let cache = tempfile::tempdir().unwrap();
        let path = cache.path().to_owned();
        Self { _cache: cache, cache: path }
    }

    /// `alfa detect` with the tiny model, small prompt sets and a private cache.
    fn detect(&self, args: &[&str]) -> Output {
        self.detect_with(&[], args)
    }

    /// `detect` with these environment variables set.
    fn detect_with(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_alfa"))
            .envs(env.iter().copied())
            .arg("detect")
            .arg("--model")
            .arg(fixtures().join("tiny-gelu"))
            .arg("--tokenizer")
            .arg(shared_tokenizer())
            .args(args)
            .env("XDG_CACHE_HOME", &self.cache)
            // Never the user's own recipes.
            .env("ALFA_RECIPES", self.cache.join("recipes"))
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A part with a dark spot, in any pixel format.
fn part(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(ImageBuffer::from_fn(width, height, |x, y| {
        if (x as i32 - 20).pow(2) + (y as i32 - 14).pow(2) < 30 {
            Rgb([15, 10, 5])
        } else {
            Rgb([(90 + x % 50) as u8, (110 + y % 40) as u8, 150])
        }
    }))
}

fn save(image: &DynamicImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image.save(path).unwrap();
}

#[test]
fn every_pixel_format_gives_a_map_of_its_size_and_a_bad_file_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let base = part(48, 36);
    save(&base, &input.join("rgb.png"));
    save(&DynamicImage::ImageLuma8(base.to_luma8()), &input.join("gray.png"));
    let gray16: ImageBuffer<Luma<u16>, Vec<u16>> = ImageBuffer::from_fn(40, 30, |x, y| Luma([(x * 1500 + y * 700) as u16]));
    save(&DynamicImage::ImageLuma16(gray16), &input.join("gray16.png"));
    let rgba: ImageBuffer<Rgba<u8>, Vec<u8>> = ImageBuffer::from_fn(30, 50, |x, y| Rgba([200, x as u8 * 5, y as u8 * 4, (x * 8) as u8]));
    save(&DynamicImage::ImageRgba8(rgba), &input.join("alpha.png"));
    let la: ImageBuffer<LumaA<u8>, Vec<u8>> = ImageBuffer::from_pixel(20, 20, LumaA([90, 128]));
    save(&DynamicImage::ImageLumaA8(la), &input.join("gray_alpha.png"));
    // Smaller than one patch of the model.
    save(&part(3, 2), &input.join("tiny.png"));
    save(&DynamicImage::ImageRgb16(part(24, 24).to_rgb16()), &input.join("rgb16.tiff"));
    std::fs::write(input.join("broken.png"), b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();

    let out = dir.path().join("out");
    let run = Run::new();
    let result = run.detect(&["--class", "bottle", "--json", "--out", out.to_str().unwrap(), input.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(4), "a broken file makes the exit status 4");
    let err = stderr(&result);
    assert!(err.contains("broken.png"), "{err}");
    assert!(err.contains("8 image(s): 7 analysed, 1 failed"), "{err}");
    assert!(err.contains("1 image(s) failed (reasons above); the others were written to"), "{err}");

    let lines: Vec<serde_json::Value> = String::from_utf8(result.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7, "one JSON line per good image");
    for (stem, size) in [
        ("rgb", (48, 36)),
        ("gray", (48, 36)),
        ("gray16", (40, 30)),
        ("alpha", (30, 50)),
        ("gray_alpha", (20, 20)),
        ("tiny", (3, 2)),
        ("rgb16", (24, 24)),
    ] {
        let map = read_map_tiff(&out.join(format!("{stem}.tiff"))).unwrap();
        assert_eq!((map.width, map.height), size, "{stem}");
        assert!(map.values.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), "{stem}");
        let overlay = image::open(out.join(format!("{stem}_overlay.png"))).unwrap();
        assert!(overlay.width() > size.0 as u32 && overlay.height() >= size.1 as u32, "{stem}: legend beside the image");
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("{stem}.json"))).unwrap()).unwrap();
        let image_score = record["image_score"].as_f64().unwrap();
        let (sg, sl) = (record["global_score"].as_f64().unwrap(), record["local_max"].as_f64().unwrap());
        assert!((image_score - (sg + sl) / 2.0).abs() < 1e-6, "{stem}");
        assert!((sl - f64::from(map.values.iter().copied().fold(0.0, f32::max))).abs() < 0.5);
        let normal = record["prompts"]["normal"].as_array().unwrap();
        assert!(normal.iter().all(|p| p["score"].is_number() && p["similarity"].is_number() && p["kept"].is_boolean()));
        assert!(normal.iter().any(|p| p["kept"] == true));
        assert!(record["prompts"]["normal_fallback"].is_boolean());
        assert_eq!(record["descriptors"].as_array().unwrap().len(), 5);
        let stages: Vec<&str> = record["timings"].as_array().unwrap().iter().map(|t| t["stage"].as_str().unwrap()).collect();
        assert_eq!(stages, ["preprocess", "global", "prompts", "windows", "aligner", "map"]);
        assert!(lines.iter().any(|l| l["file"] == record["file"] && l["image_score"] == record["image_score"]));
    }
    assert!(!out.join("broken.tiff").exists());
    let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    assert_eq!(scores.lines().count(), 8, "header and seven images:\n{scores}");
    assert!(scores.starts_with("path,score,verdict\n"));
}

/// `--precision bf16` runs where the CPU has AVX512-BF16 (the record says so and the
/// map stays close to f32's) and is refused with a way out where it has not.
#[test]
fn bf16_precision_runs_or_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("part.png");
    save(&part(40, 30), &image);
    let run = Run::new();
    let record = |precision: &str| {
        let out = dir.path().join(precision);
        let output = run.detect(&["--class", "bottle", "--precision", precision, "--out", out.to_str().unwrap(), image.to_str().unwrap()]);
        (output, out)
    };
    let (f32_run, f32_out) = record("f32");
    assert!(f32_run.status.success(), "{}", stderr(&f32_run));
    let (bf16_run, bf16_out) = record("bf16");
    if alfa::clip::Precision::Bf16.check(&candle_core::Device::Cpu, alfa::clip::Kernels::Native).is_err() {
        assert!(!bf16_run.status.success());
        let message = stderr(&bf16_run);
        assert!(message.contains("AVX512-BF16") && message.contains("--precision f32"), "{message}");
        return;
    }
    assert!(bf16_run.status.success(), "{}", stderr(&bf16_run));
    let json = |out: &Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(out.join("part.json")).unwrap()).unwrap() };
    assert_eq!(json(&f32_out)["precision"], "f32");
    assert_eq!(json(&bf16_out)["precision"], "bf16");
    let (a, b) = (read_map_tiff(&f32_out.join("part.tiff")).unwrap(), read_map_tiff(&bf16_out.join("part.tiff")).unwrap());
    let agreement = a.agreement(&b);
    // Measured: max |diff| 0.011, correlation 0.99993 (full shipped prompt set).
    assert!(agreement.max_abs_diff > 0.0 && agreement.max_abs_diff < 0.03 && agreement.correlation > 0.999, "{agreement:?}");
}

/// `--precision f16` is for GPUs: on the CPU's own kernels the run stops before any
/// image (exit code 1, nothing written), saying what to use instead. With
/// ALFA_KERNELS=generic (the GPU's path, on the CPU) it runs, and the record says f16.
#[test]
fn f16_precision_is_refused_on_the_cpu_with_what_to_use_instead() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("part.png");
    save(&part(40, 30), &image);
    let out = dir.path().join("out");
    let run = Run::new();
    let args = ["--cpu", "--class", "bottle", "--precision", "f16", "--out", out.to_str().unwrap(), image.to_str().unwrap()];
    let refused = run.detect_with(&[("ALFA_KERNELS", "native")], &args);
    let message = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{message}");
    assert!(!message.contains("panicked"), "{message}");
    assert!(message.contains("f16 precision is for GPUs") && message.contains("Use --precision f32"), "{message}");
    let bf16_here = alfa::clip::Precision::Bf16.check(&candle_core::Device::Cpu, alfa::clip::Kernels::Native).is_ok();
    assert_eq!(message.contains("--precision bf16 (this CPU has AVX512-BF16)"), bf16_here, "{message}");
    assert!(!out.exists(), "refused before any image, and the output folder it made is gone");
    // Nested folders it made go too; a folder that was there stays, empty or not.
    let refused_into = |out: &std::path::Path| {
        let args = ["--cpu", "--class", "bottle", "--precision", "f16", "--out", out.to_str().unwrap(), image.to_str().unwrap()];
        run.detect_with(&[("ALFA_KERNELS", "native")], &args).status.code()
    };
    assert_eq!(refused_into(&dir.path().join("a/b/out")), Some(1));
    assert!(!dir.path().join("a").exists(), "every folder the refused run made is removed");
    let before = dir.path().join("before");
    std::fs::create_dir(&before).unwrap();
    assert_eq!(refused_into(&before), Some(1));
    assert!(before.is_dir(), "a folder the user made is never removed");
    let generic = run.detect_with(&[("ALFA_KERNELS", "generic")], &args);
    assert!(generic.status.success(), "{}", stderr(&generic));
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("part.json")).unwrap()).unwrap();
    assert_eq!(record["precision"], "f16");
}

#[test]
fn outputs_are_never_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("part.png");
    save(&part(32, 32), &image);
    let out = dir.path().join("out");
    let run = Run::new();
    let args = ["--class", "bottle", "--out", out.to_str().unwrap(), image.to_str().unwrap()];
    assert!(run.detect(&args).status.success());
    let map = out.join("part.tiff");
    std::fs::write(&map, b"keep me").unwrap();

    let again = run.detect(&args);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    assert_eq!(std::fs::read(&map).unwrap(), b"keep me");

    let forced = run.detect(&[&args[..], &["--force"]].concat());
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(read_map_tiff(&map).unwrap().width, 32);
}

#[test]
fn an_mvtec_layout_keeps_the_evaluation_layout_and_names_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dataset");
    save(&part(40, 40), &root.join("widget/train/good/000.png"));
    save(&part(40, 40), &root.join("widget/test/good/000.png"));
    save(&part(40, 40), &root.join("widget/test/crack/000.png"));
    save(&part(40, 40), &root.join("widget/ground_truth/crack/000_mask.png"));
    let out = dir.path().join("maps");
    // No --class: the layout names it; `widget` has no prompt set of its own.
    let result = Run::new().detect(&["--out", out.to_str().unwrap(), root.to_str().unwrap()]);
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(stderr(&result).contains("generic"), "the generic fallback is announced: {}", stderr(&result));
    for defect in ["good", "crack"] {
        assert!(out.join(format!("widget/test/{defect}/000.tiff")).is_file(), "{defect}");
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("widget/test/{defect}/000.json"))).unwrap()).unwrap();
        assert_eq!(record["class"], "widget");
        assert_eq!(record["generic_fallback"], true);
    }
    assert!(!out.join("widget/train").exists() && !out.join("widget/ground_truth").exists());
    let scores = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    assert!(scores.contains("widget/test/crack/000.tiff,"), "{scores}");
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = Run::new();

    let image = dir.path().join("plain.png");
    save(&part(16, 16), &image);
    let no_class = run.detect(&["--out", out.to_str().unwrap(), image.to_str().unwrap()]);
    assert!(!no_class.status.success());
    assert!(stderr(&no_class).contains("--class"), "{}", stderr(&no_class));

    let missing = run.detect(&["--class", "bottle", "--out", out.to_str().unwrap(), "no/such/image.png"]);
    assert!(stderr(&missing).contains("no/such/image.png"), "{}", stderr(&missing));

    // A PNG whose header claims 100000 x 100000 pixels.
    let huge = dir.path().join("huge.png");
    std::fs::write(&huge, png_header(100_000, 100_000)).unwrap();
    let result = run.detect(&["--class", "bottle", "--out", out.to_str().unwrap(), huge.to_str().unwrap()]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("huge.png") && err.contains("100000 x 100000 pixels is over the limit"), "{err}");

    let prompts = dir.path().join("mine.toml");
    std::fs::write(&prompts, "[class]\nid = \"x\"\nname = \"x\nkind = \"object\"\n").unwrap();
    let result = run.detect(&["--class", "x", "--prompts", prompts.to_str().unwrap(), "--out", out.to_str().unwrap(), image.to_str().unwrap()]);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("mine.toml") && err.contains("line 3"), "{err}");
}

/// A PNG header of the given size with an empty pixel stream.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for chunk in [ihdr, b"IDAT".to_vec(), b"IEND".to_vec()] {
        png.extend((chunk.len() as u32 - 4).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn references_switch_detect_to_few_shot() {
    let dir = tempfile::tempdir().unwrap();
    let prompts_dir = dir.path().join("prompts");
    let good = dir.path().join("good.png");
    save(&part(32, 32), &good);
    let alfa = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_alfa")).args(args).output().unwrap()
    };
    let pd = prompts_dir.to_str().unwrap();
    let listed = alfa(&["refs", "list", "--class", "bottle", "--recipes", pd]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("zero-shot"));
    // Another image of the same name becomes good-1.png.
    let other = dir.path().join("other/good.png");
    save(&part(33, 32), &other);
    let added = alfa(&["refs", "add", "--class", "bottle", "--recipes", pd, good.to_str().unwrap(), other.to_str().unwrap()]);
    assert!(added.status.success(), "{}", stderr(&added));
    let listed = String::from_utf8(alfa(&["refs", "list", "--class", "bottle", "--recipes", pd]).stdout).unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");

    let run = Run::new();
    let out = dir.path().join("out");
    let few = run.detect(&["--class", "bottle", "--recipes", pd, "--shots", "2", "--seed", "3", "--json", "--out", out.to_str().unwrap(), good.to_str().unwrap()]);
    assert!(few.status.success(), "{}", stderr(&few));
    assert!(stderr(&few).contains("few-shot for `bottle`: 2 reference image(s)"), "{}", stderr(&few));
    let record: serde_json::Value = serde_json::from_slice(&few.stdout).unwrap();
    // The query is one of the references: its few-shot term vanishes.
    assert_eq!(record["few_shot"]["references"], 2);
    assert!(record["few_shot"]["max_score"].as_f64().unwrap().abs() < 1e-5);
    assert!(record["few_shot"]["nearest"]["region"].is_array());

    let zero = run.detect(&["--class", "bottle", "--recipes", pd, "--zero-shot", "--json", "--force", "--out", out.to_str().unwrap(), good.to_str().unwrap()]);
    let record: serde_json::Value = serde_json::from_slice(&zero.stdout).unwrap();
    assert!(record["few_shot"].is_null());

    let removed = alfa(&["refs", "remove", "--class", "bottle", "--recipes", pd, "good.png", "good-1.png"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    let fresh = run.detect(&["--class", "bottle", "--recipes", pd, "--force", "--out", out.to_str().unwrap(), good.to_str().unwrap()]);
    assert!(stderr(&fresh).contains("zero-shot for `bottle`: no reference images"), "{}", stderr(&fresh));
}

/// A `--out` that cannot be a folder of outputs is refused before the model is loaded
/// (here the model does not even exist: its error would come first otherwise).
#[test]
fn an_unusable_out_is_refused_before_the_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("part.png");
    save(&part(32, 32), &image);
    let file = dir.path().join("maps.csv");
    std::fs::write(&file, "keep me").unwrap();
    let detect = |out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_alfa"))
            .args(["detect", "--model", dir.path().join("no-such-model").to_str().unwrap(), "--class", "bottle"])
            .args(["--out", out.to_str().unwrap(), image.to_str().unwrap()])
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let result = detect(&file);
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("maps.csv is a file, not a folder") && !err.contains("no-such-model"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    let result = detect(&file.join("maps"));
    assert!(!result.status.success());
    let err = stderr(&result);
    assert!(err.contains("cannot create the output folder") && !err.contains("no-such-model"), "{err}");
}

#[test]
fn help_says_detect_is_zero_or_few_shot() {
    for args in [&["detect", "--help"][..], &["--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_alfa")).args(args).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(help.contains("few-shot with the class's reference images") && !help.contains("(ALFA, zero-shot)"), "{help}");
    }
}

/// `alfa refs add` takes folders like the app: every image in them, recursively, but
/// not MVTec's masks; an unreadable image is named and the others are still added.
#[test]
fn refs_add_takes_folders() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("good");
    save(&part(32, 32), &src.join("000.png"));
    save(&part(30, 32), &src.join("more/001.jpg"));
    save(&part(32, 32), &src.join("ground_truth/000_mask.png"));
    std::fs::write(src.join("notes.txt"), "not an image").unwrap();
    let pd = dir.path().join("prompts");
    let refs = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_alfa"))
            .args(["refs"])
            .args(args)
            .args(["--class", "bottle", "--recipes", pd.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let added = refs(&["add", src.to_str().unwrap()]);
    assert!(added.status.success(), "{}", stderr(&added));
    let listed = String::from_utf8(refs(&["list"]).stdout).unwrap();
    let names: Vec<&str> = listed.lines().map(|l| l.rsplit('/').next().unwrap()).collect();
    assert_eq!(names, ["000.png", "001.jpg"], "{listed}");

    std::fs::write(src.join("more/broken.png"), b"\x89PNG\r\n\x1a\nnot a png").unwrap();
    save(&part(28, 32), &src.join("more/002.png"));
    let added = refs(&["add", src.to_str().unwrap()]);
    assert!(!added.status.success());
    assert!(stderr(&added).contains("broken.png") && stderr(&added).contains("1 of 4 image(s) could not be read"), "{}", stderr(&added));
    assert!(String::from_utf8_lossy(&added.stdout).contains("002.png"), "the readable ones are added");
    assert_eq!(String::from_utf8(refs(&["list"]).stdout).unwrap().lines().count(), 3);

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let added = refs(&["add", empty.to_str().unwrap()]);
    assert!(!added.status.success() && stderr(&added).contains("no images in"), "{}", stderr(&added));
}

/// Window scales the tiny model (4 x 4 patches) cannot run are refused with the
/// reason before any image, with references and without; none panics or runs away.
#[test]
fn window_scales_beyond_the_grid_are_refused_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let prompts_dir = dir.path().join("prompts");
    let good = dir.path().join("good.png");
    save(&part(32, 32), &good);
    let refs = prompts_dir.join("bottle/refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::copy(&good, refs.join("good.png")).unwrap();
    let run = Run::new();
    let pd = prompts_dir.to_str().unwrap();
    for (scales, why) in [
        ("5", "window scale 5 must be between 1 and the model's patch grid size 4"),
        ("50", "window scale 50 must be between 1 and the model's patch grid size 4"),
        ("2,2", "window scale 2 is given twice"),
    ] {
        for mode in ["--zero-shot", "--shots=1"] {
            let out = dir.path().join(format!("out-{scales}{mode}"));
            let run = run.detect(&["--class", "bottle", "--recipes", pd, mode, "--scales", scales, "--out", out.to_str().unwrap(), good.to_str().unwrap()]);
            assert_eq!(run.status.code(), Some(1), "--scales {scales} {mode}: {}", stderr(&run));
            assert!(stderr(&run).contains(why), "--scales {scales} {mode}: {}", stderr(&run));
            assert!(!stderr(&run).contains("panicked"), "{}", stderr(&run));
            assert!(!out.join("good.tiff").exists(), "no output for a refused run");
        }
    }
}

/// Outputs get the permissions a plain file create gives under the user's umask
/// (the atomic writes once made every one private, 0600).
#[cfg(unix)]
#[test]
fn outputs_are_written_with_the_users_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("part.png");
    save(&part(32, 32), &image);
    let out = dir.path().join("out");
    let run = Run::new().detect(&["--class", "bottle", "--zero-shot", "--out", out.to_str().unwrap(), image.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for file in ["part.tiff", "part_overlay.png", "part.json", "scores.csv"] {
        assert_eq!(mode(&out.join(file)), mode(&plain), "{file}");
    }
}

/// `--anovl-views 22` scores AnoVL's image with its public code's views; with another
/// method, or another count, it is refused before any work.
#[test]
fn anovl_views_in_detect() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("part.png");
    save(&part(32, 32), &image);
    let run = Run::new();
    let score = |views: &str| {
        let out = dir.path().join(format!("out-{views}"));
        let detect = run.detect(&["--class", "bottle", "--method", "anovl-tfa", "--anovl-views", views, "--json", "--out", out.to_str().unwrap(), image.to_str().unwrap()]);
        assert!(detect.status.success(), "{}", stderr(&detect));
        let record: serde_json::Value = serde_json::from_slice(&detect.stdout).unwrap();
        record["image_score"].as_f64().unwrap()
    };
    assert_ne!(score("1"), score("22"), "22 views average other probabilities");
    for (method, views, why) in [("clip", "22", "--anovl-views works with --method anovl-tfa or anovl-tta, not clip"), ("anovl-tfa", "5", "not 5")] {
        let out = dir.path().join("refused");
        let detect = run.detect(&["--class", "bottle", "--method", method, "--anovl-views", views, "--out", out.to_str().unwrap(), image.to_str().unwrap()]);
        assert!(!detect.status.success());
        assert!(stderr(&detect).contains(why), "{}", stderr(&detect));
        assert!(!out.exists(), "refused before any work");
    }
}

/// When every image fails, the last line does not speak of "the others".
#[test]
fn a_run_where_every_image_fails_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let out = dir.path().join("out");
    let result = Run::new().detect(&["--class", "bottle", "--out", out.to_str().unwrap(), broken.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(4));
    let err = stderr(&result);
    assert!(err.contains("1 image(s): 0 analysed, 1 failed") && err.contains("no image could be analysed"), "{err}");
    assert!(!err.contains("the others"), "{err}");
}
