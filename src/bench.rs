//! Timings of the CLIP towers and of the whole detector on random weights of a real
//! architecture's shapes (`alfa bench`, `alfa bench --engine`), on the CPU or a GPU
//! (`--device`). `benches/openclip_bench.py` times the same cases with OpenCLIP on
//! PyTorch; `benches/compare.sh` runs both and prints them side by side. `alfa bench
//! --dinov2 FILE` times DINOv2 (`benches/dinov2.sh`: against timm).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::clip::model::ClipModel;
use crate::clip::tokenizer::{END_OF_TEXT, START_OF_TEXT};
use crate::clip::kernels::{Activation, Epilogue, LinearWeight, linear};
use crate::clip::{Clip, ClipError, CpuFamily, Kernels, OpenClipConfig, Precision, RandomWeights, TensorSource};
use crate::detect::engine::StageTime;
use crate::detect::maps::{MapAgreement, window_indices};
use crate::detect::{DetectSettings, Detector, RefsBackbone, WindowMode};
use crate::prompts::PromptStore;

/// Where a benchmark runs: the device and the kernels (the CPU threads are the
/// process's: `alfa bench --threads`).
#[derive(Debug, Clone)]
pub struct BenchTarget {
    pub device: Device,
    /// As asked; other devices than the CPU always run the generic kernels.
    pub kernels: Kernels,
}

impl BenchTarget {
    /// `cpu`, `cuda:0`, `metal:0`.
    fn device_name(&self) -> String {
        match self.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".into(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        }
    }

    fn describe(&self) -> String {
        let kernels = kernels_label(self.kernels.on(&self.device), self.cpu_family());
        format!("{}, {kernels} kernels, {} CPU threads", self.device_name(), candle_core::utils::get_num_threads())
    }

    /// The CPU kernel family where the native kernels run, for the reports.
    fn cpu_family(&self) -> Option<CpuFamily> {
        (self.device.is_cpu() && self.kernels.on(&self.device) == Kernels::Native).then(CpuFamily::active)
    }
}

#[derive(Debug, Serialize)]
pub struct ClipBenchReport {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub arch: String,
    /// The image tower's (the text tower is always f32).
    pub precision: Precision,
    pub device: String,
    pub kernels: Kernels,
    /// The native kernels' instruction family (`ALFA_CPU`); none elsewhere.
    pub cpu: Option<CpuFamily>,
    pub threads: usize,
    pub image_b1_s: f64,
    pub image_b8_s: f64,
    /// 150 prompts padded to the full 77-token context, as OpenCLIP encodes them.
    pub text_150_s: f64,
    /// The same prompts cut to the longest one, as alfa encodes them.
    pub text_150_truncated_s: f64,
    /// All stride-1 windows of 2 and 3 patches (365 on a 15x15 grid), tokens mode.
    pub windows_365_s: f64,
}

impl ClipBenchReport {
    pub fn table(&self) -> String {
        format!(
            "alfa (candle, {}, {} kernels, {} threads), {} random weights, image tower {}\n\
             image forward, batch 1      {:>8.3} s\n\
             image forward, batch 8      {:>8.3} s\n\
             text, 150 prompts @ 77      {:>8.3} s\n\
             text, 150 prompts truncated {:>8.3} s\n\
             windows, scales 2+3 (365)   {:>8.3} s",
            self.device,
            kernels_label(self.kernels, self.cpu),
            self.threads,
            self.arch,
            self.precision.name(),
            self.image_b1_s,
            self.image_b8_s,
            self.text_150_s,
            self.text_150_truncated_s,
            self.windows_365_s
        )
    }
}

/// `native (avx2)`, `generic`.
fn kernels_label(kernels: Kernels, cpu: Option<CpuFamily>) -> String {
    match cpu {
        Some(cpu) => format!("{} ({})", kernels.name(), cpu.name()),
        None => kernels.name().into(),
    }
}

/// Median wall time of `repeats` runs after one warm-up run, each run waiting for
/// `device` to finish (a GPU runs queued work after the call returns).
fn time<T>(repeats: usize, device: &Device, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?;
    device.synchronize()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Token ids of `count` prompts of 12 to 24 tokens, padded to `width`.
fn prompt_ids(count: usize, width: usize, vocab: usize, device: &Device) -> Result<Tensor> {
    let mut data = vec![0u32; count * width];
    for row in 0..count {
        let len = 12 + row % 13;
        let ids = &mut data[row * width..][..len];
        ids[0] = START_OF_TEXT;
        for (j, id) in ids.iter_mut().enumerate().take(len - 1).skip(1) {
            *id = ((row * 7919 + j * 104_729) % (vocab - 2)) as u32;
        }
        ids[len - 1] = END_OF_TEXT;
    }
    Ok(Tensor::from_vec(data, (count, width), device)?)
}

pub fn clip_forward(
    arch: &str,
    repeats: usize,
    precision: Precision,
    target: &BenchTarget,
    log: impl Fn(&str),
) -> Result<ClipBenchReport> {
    let config = OpenClipConfig::builtin(arch).with_context(|| {
        format!("unknown architecture `{arch}` (known: {})", OpenClipConfig::BUILTIN_ARCHS.join(", "))
    })?;
    let device = target.device.clone();
    let model = ClipModel::new(&RandomWeights { device: device.clone() }, &config.model_cfg, precision, target.kernels)?;
    let size = config.model_cfg.vision_cfg.image_size();
    let threads = candle_core::utils::get_num_threads();
    log(&format!("{arch}: random weights, {}, median of {repeats}", target.describe()));

    let pixels = |b: usize| Tensor::randn(0f32, 1.0, (b, 3, size, size), &device);
    let b1 = pixels(1)?;
    let image_b1_s = time(repeats, &device, || Ok(model.vision.forward(&b1)?))?;
    log(&format!("image batch 1: {image_b1_s:.3} s"));
    let b8 = pixels(8)?;
    let image_b8_s = time(repeats, &device, || Ok(model.vision.forward(&b8)?))?;
    log(&format!("image batch 8: {image_b8_s:.3} s"));

    let text_cfg = &config.model_cfg.text_cfg;
    let full = prompt_ids(150, text_cfg.context_length, text_cfg.vocab_size, &device)?;
    let text_150_s = time(repeats, &device, || Ok(model.text.forward(&full)?))?;
    log(&format!("text 150 @ {}: {text_150_s:.3} s", text_cfg.context_length));
    let cut = full.narrow(1, 0, 24)?.contiguous()?;
    let text_150_truncated_s = time(repeats, &device, || Ok(model.text.forward(&cut)?))?;
    log(&format!("text 150 truncated: {text_150_truncated_s:.3} s"));

    let grid = model.vision.grid();
    let windows: Vec<Tensor> = [2, 3]
        .iter()
        .map(|&s| {
            let w = window_indices(grid, s);
            let n = w.len();
            Tensor::from_vec(w.concat(), (n, s * s), &device)
        })
        .collect::<candle_core::Result<_>>()?;
    let windows_365_s = time(repeats, &device, || {
        let embedded = model.vision.embed(&b1)?;
        for w in &windows {
            model.vision.forward_windows(&embedded, w, false)?;
        }
        Ok(())
    })?;
    log(&format!("windows 2+3: {windows_365_s:.3} s"));
    Ok(ClipBenchReport {
        implementation: "alfa".into(),
        arch: arch.into(),
        precision,
        device: target.device_name(),
        kernels: model.kernels,
        cpu: target.cpu_family(),
        threads,
        image_b1_s,
        image_b8_s,
        text_150_s,
        text_150_truncated_s,
        windows_365_s,
    })
}

/// The throughput of one linear layer of the image tower.
#[derive(Debug, Serialize)]
pub struct MatmulCase {
    pub layer: &'static str,
    pub rows: usize,
    pub inner: usize,
    pub cols: usize,
    pub seconds: f64,
    pub gflops: f64,
}

/// `alfa bench --matmul`: the image tower's linear layers, each with its fused finish,
/// on the CPU kernel family `ALFA_CPU` chooses.
#[derive(Debug, Serialize)]
pub struct MatmulBenchReport {
    pub arch: String,
    pub precision: Precision,
    pub cpu: CpuFamily,
    /// `packed` (this crate's kernel) or `gemm` (the portable family's).
    pub matmul: &'static str,
    pub threads: usize,
    pub cases: Vec<MatmulCase>,
    /// All cases together: their FLOPs over their summed times.
    pub gflops: f64,
}

impl MatmulBenchReport {
    pub fn table(&self) -> String {
        let mut table = format!(
            "alfa linear layers ({} matmul, {} family, {} threads), {}, {}\n",
            self.matmul,
            self.cpu.name(),
            self.threads,
            self.arch,
            self.precision.name()
        );
        for c in &self.cases {
            table += &format!("{:<24} [{}, {}] x [{}, {}] {:>8.4} s {:>7.1} GFLOP/s\n", c.layer, c.rows, c.inner, c.inner, c.cols, c.seconds, c.gflops);
        }
        table + &format!("all layers {:>7.1} GFLOP/s", self.gflops)
    }
}

/// Times `x W + b` with the image tower's four linear shapes and their finishes (the
/// MLP's activation, the residual adds) on 2670 rows, the token count of the 365
/// windows at scales 2 and 3, through `kernels::linear` as the model runs them.
pub fn matmul(arch: &str, repeats: usize, precision: Precision, log: impl Fn(&str)) -> Result<MatmulBenchReport> {
    let config = OpenClipConfig::builtin(arch).with_context(|| {
        format!("unknown architecture `{arch}` (known: {})", OpenClipConfig::BUILTIN_ARCHS.join(", "))
    })?;
    let cpu = CpuFamily::from_env()?;
    precision.check(&Device::Cpu, Kernels::Native)?;
    let vision = &config.model_cfg.vision_cfg;
    let (width, mlp, rows) = (vision.width, vision.mlp_width(), 2670);
    let threads = candle_core::utils::get_num_threads();
    log(&format!("{arch}: {rows} rows, {} family, {threads} CPU threads, median of {repeats}", cpu.name()));
    let random = |shape: (usize, usize)| Tensor::randn(0f32, 0.02, shape, &Device::Cpu);
    let residual = random((rows, width))?;
    let layers = [
        ("attention in_proj", width, 3 * width, Epilogue::None),
        ("attention out_proj + x", width, width, Epilogue::Residual(&residual)),
        ("mlp c_fc + activation", width, mlp, Epilogue::Activation(Activation::Gelu)),
        ("mlp c_proj + x", mlp, width, Epilogue::Residual(&residual)),
    ];
    let mut cases = Vec::new();
    let mut matmul = "gemm";
    for (layer, inner, cols, epilogue) in layers {
        let weight = LinearWeight::new(random((inner, cols))?, precision, Kernels::Native)?;
        if matches!(weight, LinearWeight::Packed(_)) {
            matmul = "packed";
        }
        let (x, bias) = (random((rows, inner))?, random((1, cols))?.squeeze(0)?);
        let seconds = time(repeats, &Device::Cpu, || Ok(linear(&x, &weight, Some(&bias), epilogue)?))?;
        let gflops = 2.0 * (rows * inner * cols) as f64 / seconds / 1e9;
        log(&format!("{layer}: {seconds:.4} s, {gflops:.1} GFLOP/s"));
        cases.push(MatmulCase { layer, rows, inner, cols, seconds, gflops });
    }
    let flops: f64 = cases.iter().map(|c| 2.0 * (c.rows * c.inner * c.cols) as f64).sum();
    let gflops = flops / cases.iter().map(|c| c.seconds).sum::<f64>() / 1e9;
    Ok(MatmulBenchReport { arch: arch.into(), precision, cpu, matmul, threads, cases, gflops })
}

/// The bench image's zero-shot tokens-mode result in a non-f32 precision next to
/// f32's, with the same weights in both.
#[derive(Debug, Serialize)]
pub struct PrecisionAgreement {
    pub map: MapAgreement,
    pub image_score_f32: f32,
    pub image_score: f32,
}

/// Random weights drawn once per name and handed out again, so that two models
/// built from it (one per precision) are the same model.
struct SharedRandomWeights {
    random: RandomWeights,
    drawn: RefCell<HashMap<String, Tensor>>,
}

impl TensorSource for SharedRandomWeights {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, ClipError> {
        if let Some(t) = self.drawn.borrow().get(name) {
            return Ok(t.clone());
        }
        let t = self.random.tensor(name, shape)?;
        self.drawn.borrow_mut().insert(name.to_owned(), t.clone());
        Ok(t)
    }
}

/// One configuration of the whole detector on one image.
#[derive(Debug, Serialize)]
pub struct EngineTiming {
    pub window_mode: WindowMode,
    /// The features of the memory bank (with references).
    pub refs_backbone: RefsBackbone,
    /// Normal reference images in the memory bank (0: zero-shot).
    pub references: usize,
    /// Median wall time of `detect`, all stages.
    pub total_s: f64,
    /// The fastest run: on a shared machine, noise only ever adds time.
    pub best_s: f64,
    /// The stages of the median run.
    pub stages: Vec<StageTime>,
}

#[derive(Debug, Serialize)]
pub struct EngineBenchReport {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub arch: String,
    /// The image tower's (the text tower is always f32).
    pub precision: Precision,
    pub device: String,
    pub kernels: Kernels,
    /// As in [`ClipBenchReport`].
    pub cpu: Option<CpuFamily>,
    pub threads: usize,
    pub image: String,
    pub class: String,
    /// Prompts and descriptors of the class, encoded with a cold cache.
    pub class_texts: usize,
    /// Encoding them in length-sorted batches cut to the longest prompt in each.
    pub class_text_s: f64,
    pub runs: Vec<EngineTiming>,
    /// How soon the first answers exist (zero-shot, tokens mode).
    pub progressive: FirstAnswers,
    /// For bf16: how far its result is from f32's.
    pub versus_f32: Option<PrecisionAgreement>,
}

/// Medians, from the start of decoding the image file (PNG, in memory) to the partial
/// results the window shows: `S_G`, then the first window scale's map.
#[derive(Debug, Serialize)]
pub struct FirstAnswers {
    pub first_score_s: f64,
    pub first_map_s: f64,
    pub final_s: f64,
}

impl EngineBenchReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "alfa detector ({}, {} kernels, {} threads), {} random weights, image tower {}, one {} image, class `{}`\n\
             encode {} prompts + descriptors (cold cache) {:>8.3} s\n",
            self.device,
            kernels_label(self.kernels, self.cpu),
            self.threads,
            self.arch,
            self.precision.name(),
            self.image,
            self.class,
            self.class_texts,
            self.class_text_s
        );
        for run in &self.runs {
            let stages: Vec<String> = run.stages.iter().map(|s| format!("{} {:.3}", s.stage, s.seconds)).collect();
            out.push_str(&format!(
                "detect, {:?} mode, {:>2} references ({}): {:>8.3} s  ({})\n",
                run.window_mode,
                run.references,
                run.refs_backbone.name(),
                run.total_s,
                stages.join(", ")
            ));
        }
        let p = &self.progressive;
        out.push_str(&format!(
            "progressive, tokens mode, 0 references, from decoding the PNG: S_G {:.3} s, first map {:.3} s, result {:.3} s\n",
            p.first_score_s, p.first_map_s, p.final_s
        ));
        if let Some(a) = &self.versus_f32 {
            out.push_str(&format!(
                "versus f32, tokens mode: map max |diff| {:.4}, correlation {:.5}; image score {:.4} (f32 {:.4})\n",
                a.map.max_abs_diff, a.map.correlation, a.image_score, a.image_score_f32
            ));
        }
        out
    }
}

/// References in the few-shot case (the budget: at most 30% over zero-shot).
const FEW_SHOT_REFERENCES: usize = 16;

/// The whole detector on a `size` x `size` image with the default settings, after
/// the class's text features are cached, zero-shot and with 16 references;
/// `pixels` adds the paper's slow mode, `dinov2` a bank of the references' DINOv2
/// patches (built before the timing, as a class's bank is).
#[allow(clippy::too_many_arguments)]
pub fn engine(
    arch: &str,
    tokenizer: &crate::clip::TokenizerSource,
    size: u32,
    repeats: usize,
    pixels: bool,
    precision: Precision,
    target: &BenchTarget,
    dinov2: Option<std::sync::Arc<crate::dinov2::Dinov2>>,
    log: impl Fn(&str),
) -> Result<EngineBenchReport> {
    let config = OpenClipConfig::builtin(arch)
        .with_context(|| format!("unknown architecture `{arch}`"))?;
    let device = target.device.clone();
    log(&format!("{arch}: random weights, {}, median of {repeats}", target.describe()));
    let weights = SharedRandomWeights { random: RandomWeights { device: device.clone() }, drawn: Default::default() };
    let clip = Clip::from_source(&config, &weights, tokenizer, &device, precision, target.kernels)?;
    let kernels = clip.model.kernels;
    let mut detector = Detector::new(clip, &format!("random {arch}"), None);
    if let Some(dino) = dinov2.clone() {
        detector = detector.with_dinov2(dino);
    }
    let class = "bottle";
    let prompts = PromptStore { recipes: None }.resolve(class)?.set.expand();
    let class_texts = prompts.normal.len() + prompts.abnormal.len() + prompts.descriptors.len();
    let start = Instant::now();
    let encoded = detector.encode_class(prompts)?;
    device.synchronize()?;
    let class_text_s = start.elapsed().as_secs_f64();
    log(&format!("encoded {} texts in {class_text_s:.3} s", detector.texts_encoded()));

    // A textured part with a defect, so the numbers are not those of a constant image.
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(size, size, |x, y| {
        let spot = (x as i64 - 600).pow(2) + (y as i64 - 300).pow(2) < 40 * 40;
        if spot { image::Rgb([30, 20, 10]) } else { image::Rgb([(x % 97) as u8 + 100, (y % 89) as u8 + 90, 140]) }
    }));
    // Few-shot: 16 references of the same kind of part (the bank is built once per
    // class, outside the per-image time).
    let references: Vec<(std::path::PathBuf, image::DynamicImage)> = (0..FEW_SHOT_REFERENCES)
        .map(|i| (format!("reference {i}").into(), image.crop_imm(i as u32, 0, size - 16, size)))
        .collect();
    let tokens = DetectSettings::default();
    let bank = detector.reference_bank(&references, &tokens, |_, _| ())?.bank;
    let dino_settings = DetectSettings { refs_backbone: RefsBackbone::Dinov2, ..Default::default() };
    let dino_bank = match dinov2 {
        Some(_) => detector.reference_bank(&references, &dino_settings, |_, _| ())?.bank,
        None => None,
    };
    let mut cases = vec![(tokens.clone(), None), (tokens.clone(), bank.as_ref())];
    if let Some(bank) = &dino_bank {
        cases.push((dino_settings, Some(bank)));
    }
    if pixels {
        cases.push((DetectSettings { window_mode: WindowMode::Pixels, ..Default::default() }, None));
    }
    let mut runs = Vec::new();
    for (settings, bank) in cases {
        let window_mode = settings.window_mode;
        // Pixels mode is hundreds of full forwards: time it once after the warm-up.
        let repeats = if window_mode == WindowMode::Pixels { 1 } else { repeats };
        let mut detections = Vec::new();
        detector.detect_with_references(&image, &encoded, bank, &settings)?;
        for _ in 0..repeats {
            let start = Instant::now();
            let d = detector.detect_with_references(&image, &encoded, bank, &settings)?;
            detections.push((start.elapsed().as_secs_f64(), d.timings));
        }
        detections.sort_by(|a, b| a.0.total_cmp(&b.0));
        let best_s = detections[0].0;
        let (total_s, stages) = detections.swap_remove(detections.len() / 2);
        let references = bank.map_or(0, |b| b.files.len());
        let refs_backbone = settings.refs_backbone;
        log(&format!("detect, {window_mode:?} mode, {references} references ({}): {total_s:.3} s", refs_backbone.name()));
        runs.push(EngineTiming { window_mode, refs_backbone, references, total_s, best_s, stages });
    }
    let progressive = first_answers(&detector, &image, &encoded, repeats)?;
    log(&format!(
        "progressive: S_G {:.3} s, first map {:.3} s, result {:.3} s",
        progressive.first_score_s, progressive.first_map_s, progressive.final_s
    ));
    // The text tower is f32 in every precision, so the class's features serve both.
    let versus_f32 = if precision == Precision::F32 {
        None
    } else {
        let f32_clip = Clip::from_source(&config, &weights, tokenizer, &device, Precision::F32, target.kernels)?;
        let reference = Detector::new(f32_clip, &format!("random {arch}"), None).detect(&image, &encoded, &tokens)?;
        let ours = detector.detect(&image, &encoded, &tokens)?;
        Some(PrecisionAgreement {
            map: reference.map.agreement(&ours.map),
            image_score_f32: reference.image_score,
            image_score: ours.image_score,
        })
    };
    Ok(EngineBenchReport {
        implementation: "alfa".into(),
        arch: arch.into(),
        precision,
        device: target.device_name(),
        kernels,
        cpu: target.cpu_family(),
        threads: candle_core::utils::get_num_threads(),
        image: format!("{size}x{size}"),
        class: class.into(),
        class_texts,
        class_text_s,
        runs,
        progressive,
        versus_f32,
    })
}

/// [`FirstAnswers`] of `image`, median of `repeats` (after one warm-up).
fn first_answers(detector: &Detector, image: &image::DynamicImage, class: &crate::detect::ClassPrompts, repeats: usize) -> Result<FirstAnswers> {
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png)?;
    let png = png.into_inner();
    let settings = DetectSettings::default();
    let mut runs = Vec::new();
    for _ in 0..=repeats {
        let start = Instant::now();
        let (mut first_score, mut first_map) = (f64::NAN, f64::NAN);
        let decoded = image::load_from_memory(&png)?;
        let mut progress = |partial: crate::detect::Partial| match partial {
            crate::detect::Partial::Global { .. } => first_score = start.elapsed().as_secs_f64(),
            crate::detect::Partial::Scale { done: 1, .. } => first_map = start.elapsed().as_secs_f64(),
            crate::detect::Partial::Scale { .. } => {}
        };
        detector.detect_progressive(&decoded, class, None, &settings, Some(&mut progress))?;
        runs.push((first_score, first_map, start.elapsed().as_secs_f64()));
    }
    runs.remove(0);
    let median = |pick: fn(&(f64, f64, f64)) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Ok(FirstAnswers { first_score_s: median(|r| r.0), first_map_s: median(|r| r.1), final_s: median(|r| r.2) })
}

/// DINOv2's forward at 518 px (`alfa bench --dinov2 FILE`) and what its operations cost.
#[derive(Debug, Serialize)]
pub struct Dinov2BenchReport {
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Which forward ran: alfa's CPU kernels (`native`) or candle-transformers' model.
    pub forward: String,
    pub weights: String,
    pub depth: usize,
    pub width: usize,
    pub threads: usize,
    /// One image: preprocessed pixels to unit patch features.
    pub forward_b1_s: f64,
    /// Eight images, one forward each (the crate's model takes one image per call).
    pub forward_b8_s: f64,
    /// The forward's operations on its shapes, each timed alone (median), and how
    /// often one forward runs each: where the time goes.
    pub ops: Vec<OpTiming>,
}

#[derive(Debug, Serialize)]
pub struct OpTiming {
    pub op: String,
    pub per_forward: usize,
    pub each_s: f64,
}

impl Dinov2BenchReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "alfa DINOv2 ({} forward, {} threads), {} blocks x {} wide, {}\n\
             forward 518 px, batch 1  {:>8.3} s\n\
             forward 518 px, batch 8  {:>8.3} s\n\
             operation (shapes of one forward)            each (ms)  x count  = ms per forward\n",
            self.forward, self.threads, self.depth, self.width, self.weights, self.forward_b1_s, self.forward_b8_s
        );
        for op in &self.ops {
            out.push_str(&format!(
                "{:<44} {:>9.3} {:>8} {:>10.1}\n",
                op.op,
                op.each_s * 1e3,
                op.per_forward,
                op.each_s * 1e3 * op.per_forward as f64
            ));
        }
        out
    }
}

/// Times `dino` on a textured 518 x 518 image, then each kind of operation of the
/// forward it runs on tensors of the same shapes: alfa's kernels as the native
/// forward calls them, or candle's ops as the crate's model calls them.
pub fn dinov2_forward(dino: &crate::dinov2::Dinov2, repeats: usize, log: impl Fn(&str)) -> Result<Dinov2BenchReport> {
    let size = crate::dinov2::IMAGE_SIZE as u32;
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x % 97) as u8 + 100, (y % 89) as u8 + 90, ((x + y) % 61) as u8 + 120])
    }));
    let threads = candle_core::utils::get_num_threads();
    let pixels = dino.pixels(&image)?;
    let device = dino.device.clone();
    let forward_b1_s = time(repeats, &device, || Ok(dino.features_of_pixels(&pixels)?))?;
    log(&format!("DINOv2 forward, batch 1: {forward_b1_s:.3} s"));
    let forward_b8_s = time(repeats, &device, || {
        for _ in 0..8 {
            dino.features_of_pixels(&pixels)?;
        }
        Ok(())
    })?;
    log(&format!("DINOv2 forward, batch 8: {forward_b8_s:.3} s"));

    let shape = DinoOpShape {
        depth: dino.shape.depth,
        width: dino.shape.embed_dim,
        heads: dino.shape.num_heads,
        tokens: crate::dinov2::GRID * crate::dinov2::GRID + 1,
    };
    let mut ops = Vec::new();
    let mut op = |name: String, per_forward: usize, f: &mut dyn FnMut() -> Result<Tensor>| -> Result<()> {
        let each_s = time(repeats, &device, &mut *f)?;
        log(&format!("{name}: {:.3} ms x {per_forward}", each_s * 1e3));
        ops.push(OpTiming { op: name, per_forward, each_s });
        Ok(())
    };
    if dino.runs_native() {
        native_dinov2_ops(shape, &device, &mut op)?;
    } else {
        crate_dinov2_ops(shape, &device, &mut op)?;
    }
    // Few-shot: one image's patches against a bank of 16 references' patches.
    let (patches, width) = (shape.tokens - 1, shape.width);
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, &device);
    let bank = crate::detect::memory::MemoryBank::new(&[randn(&[16 * patches, width])?])?;
    let queries = randn(&[patches, width])?;
    op(format!("few-shot: {patches} patches against 16 x {patches} (not in the forward)"), 0, &mut || {
        bank.nearest(&queries)?;
        Ok(queries.clone())
    })?;
    Ok(Dinov2BenchReport {
        implementation: "alfa".into(),
        forward: if dino.runs_native() { "native" } else { "candle-transformers" }.into(),
        weights: dino.files.name.clone(),
        depth: shape.depth,
        width,
        threads,
        forward_b1_s,
        forward_b8_s,
        ops,
    })
}

#[derive(Clone, Copy)]
struct DinoOpShape {
    depth: usize,
    width: usize,
    heads: usize,
    tokens: usize,
}

/// Times one operation: its name, how often one forward runs it, the operation.
type TimeOp<'a> = dyn FnMut(String, usize, &mut dyn FnMut() -> Result<Tensor>) -> Result<()> + 'a;

/// The native forward's operations (`dinov2::native`): CLIP's blocks on alfa's kernels.
fn native_dinov2_ops(shape: DinoOpShape, device: &Device, op: &mut TimeOp) -> Result<()> {
    use crate::clip::kernels::{self, Activation, Epilogue, Kernels, LayerNorm, LinearWeight, Mask};
    use crate::clip::Precision;
    let DinoOpShape { depth, width, heads, tokens } = shape;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, device);
    let weight = |i: usize, o: usize| -> Result<(LinearWeight, Tensor)> {
        Ok((LinearWeight::new(randn(&[i, o])?, Precision::F32, Kernels::Native)?, randn(&[o])?))
    };
    let x = randn(&[1, tokens, width])?;
    let hidden = randn(&[1, tokens, 4 * width])?;
    let (qkv, proj, fc1, fc2) = (weight(width, 3 * width)?, weight(width, width)?, weight(width, 4 * width)?, weight(4 * width, width)?);
    let qkv_out = kernels::linear(&x, &qkv.0, Some(&qkv.1), Epilogue::None)?;
    let norm = LayerNorm::new(randn(&[width])?, randn(&[width])?, 1e-5, Kernels::Native);
    op(patch_embedding_name(width), 1, &mut patch_embedding(width, device)?)?;
    op(format!("layer norm [{tokens}, {width}]"), 2 * depth + 1, &mut || Ok(norm.forward(&x)?))?;
    op(format!("linear qkv {width} -> {}", 3 * width), depth, &mut || Ok(kernels::linear(&x, &qkv.0, Some(&qkv.1), Epilogue::None)?))?;
    op(format!("attention ({heads} heads of {}, alfa's kernel)", width / heads), depth, &mut || {
        Ok(kernels::attention(&qkv_out, heads, tokens, Mask::Full, Kernels::Native)?)
    })?;
    op(format!("linear proj {width} -> {width} + residual"), depth, &mut || {
        Ok(kernels::linear(&x, &proj.0, Some(&proj.1), Epilogue::Residual(&x))?)
    })?;
    op(format!("linear fc1 {width} -> {} + GELU", 4 * width), depth, &mut || {
        Ok(kernels::linear(&x, &fc1.0, Some(&fc1.1), Epilogue::Activation(Activation::Gelu))?)
    })?;
    op(format!("linear fc2 {} -> {width} + residual", 4 * width), depth, &mut || {
        Ok(kernels::linear(&hidden, &fc2.0, Some(&fc2.1), Epilogue::Residual(&x))?)
    })?;
    Ok(())
}

/// The crate's model's operations, as `candle_transformers::models::dinov2` calls them.
fn crate_dinov2_ops(shape: DinoOpShape, device: &Device, op: &mut TimeOp) -> Result<()> {
    use candle_core::{D, Module};
    let DinoOpShape { depth, width, heads, tokens } = shape;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, device);
    let x = randn(&[1, tokens, width])?;
    let linear = |i: usize, o: usize| -> Result<candle_nn::Linear> { Ok(candle_nn::Linear::new(randn(&[o, i])?, Some(randn(&[o])?))) };
    let norm = candle_nn::LayerNorm::new(randn(&[width])?, randn(&[width])?, 1e-5);
    let (qkv, proj, fc1, fc2) = (linear(width, 3 * width)?, linear(width, width)?, linear(width, 4 * width)?, linear(4 * width, width)?);
    let hidden = randn(&[1, tokens, 4 * width])?;
    let gamma = randn(&[width])?;
    let qkv_out = qkv.forward(&x)?;
    let head = width / heads;
    let scores = randn(&[1, heads, tokens, tokens])?;
    op(patch_embedding_name(width), 1, &mut patch_embedding(width, device)?)?;
    op(format!("layer norm [{tokens}, {width}]"), 2 * depth + 1, &mut || Ok(norm.forward(&x)?))?;
    op(format!("linear qkv {width} -> {}", 3 * width), depth, &mut || Ok(qkv.forward(&x)?))?;
    // The crate's attention: heads split by transposes, Q K^T, softmax, A V, merged.
    op(format!("attention core ({heads} heads of {head})"), depth, &mut || {
        let (b, n, c) = x.dims3()?;
        let qkv = qkv_out.reshape((b, n, 3, heads, c / heads))?.transpose(1, 2)?.transpose(0, 1)?.transpose(2, 3)?;
        let q = (qkv.get(0)? * (1.0 / (head as f64).sqrt()))?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let attention = candle_nn::ops::softmax(&q.matmul(&k.t()?)?, D::Minus1)?;
        Ok(attention.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?)
    })?;
    op(format!("  of which softmax [{heads}, {tokens}, {tokens}]"), 0, &mut || Ok(candle_nn::ops::softmax(&scores, D::Minus1)?))?;
    // What the same softmax costs as candle's fused last-dimension kernel, which the
    // crate's attention does not call: the room a faster attention has.
    op("  (softmax_last_dim, fused, not used by the crate)".to_owned(), 0, &mut || Ok(candle_nn::ops::softmax_last_dim(&scores)?))?;
    op(format!("linear proj {width} -> {width}"), depth, &mut || Ok(proj.forward(&x)?))?;
    op(format!("linear fc1 {width} -> {}", 4 * width), depth, &mut || Ok(fc1.forward(&x)?))?;
    op(format!("GELU (tanh) [{tokens}, {}]", 4 * width), depth, &mut || Ok(hidden.gelu()?))?;
    op(format!("linear fc2 {} -> {width}", 4 * width), depth, &mut || Ok(fc2.forward(&hidden)?))?;
    op(format!("layer scale + residual [{tokens}, {width}]"), 2 * depth, &mut || Ok((x.broadcast_mul(&gamma)? + &x)?))?;
    Ok(())
}

fn patch_embedding_name(width: usize) -> String {
    format!("patch embedding conv 14x14/14 -> {width}")
}

/// The patch embedding (candle's conv2d in both forwards) on random pixels.
fn patch_embedding(width: usize, device: &Device) -> Result<impl FnMut() -> Result<Tensor>> {
    use candle_core::Module;
    let size = crate::dinov2::IMAGE_SIZE;
    let randn = |shape: &[usize]| Tensor::randn(0f32, 1.0, shape, device);
    let conv = candle_nn::Conv2d::new(randn(&[width, 3, 14, 14])?, Some(randn(&[width])?), candle_nn::Conv2dConfig { stride: 14, ..Default::default() });
    let pixels = randn(&[1, 3, size, size])?;
    Ok(move || Ok(conv.forward(&pixels)?))
}
