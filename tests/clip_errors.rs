//! Bad input gets a clear error naming the file and the problem, never a panic.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixtures, shared_tokenizer};

/// Runs `alfa embed` and returns (success, stderr).
fn embed(model: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_alfa"))
        .arg("embed")
        .arg("--model")
        .arg(model)
        .arg("--tokenizer")
        .arg(shared_tokenizer())
        .args(extra)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.success(), stderr)
}

/// A copy of the tiny GELU model in a temp dir, to break.
fn model_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-gelu").join(f), dir.join(f)).unwrap();
    }
    (tmp, dir)
}

#[test]
fn working_model_embeds() {
    let (_tmp, dir) = model_copy();
    let (ok, stderr) = embed(&dir, &["--text", "a photo of a bottle"]);
    assert!(ok, "{stderr}");
}

#[test]
fn missing_weights_say_what_is_expected() {
    let (_tmp, dir) = model_copy();
    std::fs::remove_file(dir.join("open_clip_model.safetensors")).unwrap();
    let (ok, stderr) = embed(&dir, &["--text", "x"]);
    assert!(!ok);
    assert!(stderr.contains("no weights") && stderr.contains("open_clip_model.safetensors"), "{stderr}");
}

#[test]
fn truncated_weights_name_the_file() {
    let (_tmp, dir) = model_copy();
    let weights = dir.join("open_clip_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, stderr) = embed(&dir, &["--text", "x"]);
    assert!(!ok);
    assert!(stderr.contains("open_clip_model.safetensors"), "{stderr}");
}

#[test]
fn shape_mismatch_names_tensor_and_both_shapes() {
    let (_tmp, dir) = model_copy();
    let config = dir.join("open_clip_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    // 48 -> 64 wide vision tower (head_width 16 still divides it).
    std::fs::write(&config, text.replace("\"width\": 48", "\"width\": 64")).unwrap();
    let (ok, stderr) = embed(&dir, &["--text", "x"]);
    assert!(!ok);
    assert!(stderr.contains("visual.conv1.weight"), "{stderr}");
    assert!(stderr.contains("[48, 3, 8, 8]") && stderr.contains("[64, 3, 8, 8]"), "{stderr}");
}

#[test]
fn unknown_architecture_field_is_named() {
    let (_tmp, dir) = model_copy();
    let config = dir.join("open_clip_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"patch_size\": 8", "\"patch_size\": 8, \"frobnicate\": 1")).unwrap();
    let (ok, stderr) = embed(&dir, &["--text", "x"]);
    assert!(!ok);
    assert!(stderr.contains("frobnicate") && stderr.contains("open_clip_config.json"), "{stderr}");
}

#[test]
fn corrupt_image_names_the_file() {
    let (tmp, dir) = model_copy();
    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    let (ok, stderr) = embed(&dir, &["--image", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("broken.png"), "{stderr}");
    let missing = tmp.path().join("nope.jpg");
    let (ok, stderr) = embed(&dir, &["--image", missing.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("nope.jpg"), "{stderr}");
}

#[test]
fn empty_text_is_refused() {
    let (_tmp, dir) = model_copy();
    let (ok, stderr) = embed(&dir, &["--text", "a bottle", "--text", "   "]);
    assert!(!ok);
    assert!(stderr.contains("empty"), "{stderr}");
}

/// `alfa embed --model MODEL --text TEXT` with `HF_HUB_OFFLINE=1` and the cache in `cache`.
fn embed_offline(model: &str, text: &str, cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_alfa"))
        .args(["embed", "--model", model, "--text", text])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .output()
        .unwrap()
}

#[test]
fn uncached_hub_model_offline_says_what_to_download() {
    let tmp = tempfile::tempdir().unwrap();
    let out = embed_offline("someone/not-cached-model", "x", tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("someone/not-cached-model") && stderr.contains("--model FOLDER"), "{stderr}");
}

#[test]
fn missing_tensor_is_named() {
    let (_tmp, dir) = model_copy();
    let weights = dir.join("open_clip_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    assert!(tensors.remove("visual.ln_post.bias").is_some());
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let (ok, stderr) = embed(&dir, &["--text", "x"]);
    assert!(!ok);
    assert!(stderr.contains("visual.ln_post.bias"), "{stderr}");
}

/// The commit of the hub model in [`cached_hub_model`].
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub model laid out in a Hugging Face cache as Python's `huggingface_hub` does it,
/// with `tokenizer` as its tokenizer.json (none: the repo has none, as OpenCLIP's).
fn cached_hub_model(tokenizer: Option<&Path>) -> tempfile::TempDir {
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--someone--tiny-gelu");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for f in ["open_clip_config.json", "open_clip_model.safetensors"] {
        std::fs::copy(fixtures().join("tiny-gelu").join(f), snapshot.join(f)).unwrap();
    }
    if let Some(tokenizer) = tokenizer {
        std::fs::copy(tokenizer, snapshot.join("tokenizer.json")).unwrap();
    }
    cache
}

/// A model already in the Hugging Face cache is used as it is, without the network,
/// with its own tokenizer.json or, without one, the embedded one.
#[test]
fn hub_model_in_the_cache_is_used_offline() {
    for tokenizer in [Some(shared_tokenizer()), None] {
        let cache = cached_hub_model(tokenizer.as_deref());
        let out = embed_offline("someone/tiny-gelu", "a photo of a bottle", cache.path());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["texts"][0]["embedding"].as_array().unwrap().len(), 16);
    }
}

/// `alfa embed ARGS` with an empty cache and a hub nobody answers (nothing listens on
/// port 9); returns (success, stdout, stderr). Proxies are cleared so the connection is
/// really refused.
fn embed_without_network(args: &[&str]) -> (bool, String, String) {
    let cache = tempfile::tempdir().unwrap();
    let out = embed_with_hub(args, "http://127.0.0.1:9", cache.path());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// `alfa embed ARGS` with the hub at `endpoint`, the cache in `cache`, the network
/// allowed and no proxy.
fn embed_with_hub(args: &[&str], endpoint: &str, cache: &Path) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_alfa"));
    command
        .arg("embed")
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_HUB_OFFLINE");
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        command.env_remove(proxy);
    }
    command.output().unwrap()
}

/// A cached model whose repo has no tokenizer.json (the `.no_exist` marker a first
/// download leaves) loads with the embedded tokenizer and never asks the hub again.
#[test]
fn cached_model_without_tokenizer_asks_the_hub_nothing() {
    let cache = cached_hub_model(None);
    let marker = cache.path().join("models--someone--tiny-gelu/.no_exist").join(COMMIT).join("tokenizer.json");
    std::fs::create_dir_all(marker.parent().unwrap()).unwrap();
    std::fs::write(&marker, "").unwrap();
    // A hub that hangs up on every connection, and counts them.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for _ in listener.incoming() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let out = embed_with_hub(&["--model", "someone/tiny-gelu", "--text", "a photo of a bottle"], &endpoint, cache.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0, "the hub was asked");
}

/// What every first run without network prints: the way out first and short, the
/// cause in words, the URL once, and nothing about a tokenizer (it is built in).
fn assert_offline_message(stderr: &str) {
    let first = stderr.lines().next().unwrap_or_default();
    assert!(first.contains("To work offline") && first.len() < 220, "{stderr}");
    assert!(stderr.contains("no network (cannot reach 127.0.0.1)"), "{stderr}");
    assert!(!stderr.contains("HTTP request error") && !stderr.contains("error sending request"), "{stderr}");
    assert_eq!(stderr.matches("http://").count() + stderr.matches("https://").count(), 1, "one URL: {stderr}");
    assert!(!stderr.contains("tokenizer") && !stderr.contains("openai/clip-vit-base-patch32"), "{stderr}");
}

#[test]
fn default_model_without_network_says_what_to_do_first() {
    let (ok, _, stderr) = embed_without_network(&["--text", "x"]);
    assert!(!ok, "{stderr}");
    assert_offline_message(&stderr);
    let first = stderr.lines().next().unwrap();
    assert!(first.contains("--model FOLDER") && first.contains(alfa::clip::DEFAULT_MODEL), "{stderr}");
}

/// A model folder without tokenizer.json needs no network: the embedded tokenizer
/// gives the same embeddings as CLIP's tokenizer.json.
#[test]
fn model_folder_without_tokenizer_works_without_network() {
    let (_tmp, dir) = model_copy();
    let model = dir.to_str().unwrap();
    let text = ["--text", "a photo of a bottle with a crack &amp; a chip"];
    let (ok, embedded, stderr) = embed_without_network(&[&["--model", model], &text[..]].concat());
    assert!(ok, "{stderr}");
    let file = shared_tokenizer();
    let (ok, from_file, stderr) = embed_without_network(&[&["--model", model, "--tokenizer", file.to_str().unwrap()], &text[..]].concat());
    assert!(ok, "{stderr}");
    assert_eq!(embedded, from_file);
}

/// `ALFA_KERNELS` takes `native` or `generic`; anything else stops with the allowed
/// values. The generic kernels run bf16 and f16 (as GPUs do).
#[test]
fn kernel_choice_errors_name_the_allowed_values() {
    let (_tmp, dir) = model_copy();
    let run = |kernels: &str, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_alfa"))
            .args(["embed", "--model", dir.to_str().unwrap(), "--tokenizer"])
            .arg(shared_tokenizer())
            .args(["--text", "a photo of a bottle"])
            .args(extra)
            .env("ALFA_KERNELS", kernels)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        (out.status.success(), stderr)
    };
    let (ok, stderr) = run("fast", &[]);
    assert!(!ok);
    assert!(stderr.contains("ALFA_KERNELS=`fast`") && stderr.contains("`native`") && stderr.contains("`generic`"), "{stderr}");
    for kernels in ["native", "generic", ""] {
        let (ok, stderr) = run(kernels, &[]);
        assert!(ok, "ALFA_KERNELS={kernels}: {stderr}");
    }
    // Half precision in candle's types is the generic kernels' (the GPU's path).
    for precision in ["bf16", "f16"] {
        let (ok, stderr) = run("generic", &["--precision", precision]);
        assert!(ok, "ALFA_KERNELS=generic --precision {precision}: {stderr}");
    }
}

/// `ALFA_CPU` takes a kernel family this CPU has; anything else stops with the
/// choices and the CPU's families, and bf16 (AVX-512 only) is refused on a narrower one.
#[test]
fn cpu_family_errors_name_the_choices() {
    let (_tmp, dir) = model_copy();
    let run = |family: &str, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_alfa"))
            .args(["embed", "--model", dir.to_str().unwrap(), "--tokenizer"])
            .arg(shared_tokenizer())
            .args(["--text", "a photo of a bottle"])
            .args(extra)
            .env("ALFA_CPU", family)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        (out.status.success(), stderr)
    };
    let (ok, stderr) = run("sse4", &[]);
    assert!(!ok);
    assert!(stderr.contains("ALFA_CPU=`sse4`") && stderr.contains("`avx512` (") && stderr.contains("this CPU has"), "{stderr}");
    for family in alfa::clip::CpuFamily::ALL {
        let (ok, stderr) = run(family.name(), &[]);
        assert_eq!(ok, family.is_available(), "ALFA_CPU={}: {stderr}", family.name());
        if !ok {
            assert!(stderr.contains("this CPU has") && stderr.contains("`portable`"), "{stderr}");
        }
    }
    if alfa::clip::Precision::Bf16.check(&candle_core::Device::Cpu, alfa::clip::Kernels::Native).is_ok() {
        let (ok, stderr) = run("avx2", &["--precision", "bf16"]);
        assert!(!ok);
        assert!(stderr.contains("ALFA_CPU") && stderr.contains("--precision f32"), "{stderr}");
    }
}

/// A GPU asked for and not usable is an error that says what to do, never a quiet
/// run on the CPU: without the backend built in, how to build it; with it (and no
/// GPU or driver here), that `--cpu` runs on the CPU.
#[test]
fn a_gpu_device_that_cannot_be_used_is_an_error_that_says_why() {
    for (device, feature) in [("cuda", "cuda"), ("metal", "metal")] {
        let out = Command::new(env!("CARGO_BIN_EXE_alfa"))
            .args(["bench", "--engine", "--repeats", "1", "--image-size", "240", "--device", device, "--tokenizer"])
            .arg(shared_tokenizer())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        let built = if feature == "cuda" { cfg!(feature = "cuda") } else { cfg!(feature = "metal") };
        if built && out.status.success() {
            continue; // a usable GPU: nothing to report
        }
        assert!(!out.status.success(), "{device}: {stderr}");
        assert!(!stderr.contains("detect, Tokens mode"), "{device}: it must not run on the CPU instead: {stderr}");
        if built {
            assert!(stderr.contains("no ") && stderr.contains("--cpu"), "{device}: {stderr}");
        } else {
            assert!(stderr.contains(&format!("--features {feature}")), "{device}: {stderr}");
        }
    }
}
