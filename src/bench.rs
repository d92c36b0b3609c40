//! Timings of the CLIP towers and of the whole detector on random weights of a real
//! architecture's shapes (`alfa bench`, `alfa bench --engine`), on the CPU or a GPU
//! (`--device`). `benches/openclip_bench.py` times the same cases with OpenCLIP on
//! PyTorch; `benches/compare.sh` runs both and prints them side by side.

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
use crate::detect::{DetectSettings, Detector, WindowMode};
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
    precision.check(&Device::Cpu)?;
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
    /// For bf16: how far its result is from f32's.
    pub versus_f32: Option<PrecisionAgreement>,
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
                "detect, {:?} mode, {:>2} references: {:>8.3} s  ({})\n",
                run.window_mode,
                run.references,
                run.total_s,
                stages.join(", ")
            ));
        }
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
/// `pixels` adds the paper's slow mode.
pub fn engine(
    arch: &str,
    tokenizer: &crate::clip::TokenizerSource,
    size: u32,
    repeats: usize,
    pixels: bool,
    precision: Precision,
    target: &BenchTarget,
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
    let mut cases = vec![(WindowMode::Tokens, None), (WindowMode::Tokens, bank.as_ref())];
    if pixels {
        cases.push((WindowMode::Pixels, None));
    }
    let mut runs = Vec::new();
    for (window_mode, bank) in cases {
        let settings = DetectSettings { window_mode, ..Default::default() };
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
        log(&format!("detect, {window_mode:?} mode, {references} references: {total_s:.3} s"));
        runs.push(EngineTiming { window_mode, references, total_s, best_s, stages });
    }
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
        versus_f32,
    })
}
