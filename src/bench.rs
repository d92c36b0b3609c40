//! Timings of the CLIP towers on random weights of a real architecture's shapes
//! (`alfa bench`). `benches/openclip_bench.py` times the same cases with OpenCLIP on
//! PyTorch; `benches/compare.sh` runs both and prints them side by side.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::clip::model::ClipModel;
use crate::clip::tokenizer::{END_OF_TEXT, START_OF_TEXT};
use crate::clip::{OpenClipConfig, RandomWeights};
use crate::detect::maps::window_indices;

#[derive(Debug, Serialize)]
pub struct ClipBenchReport {
    #[serde(rename = "impl")]
    pub implementation: String,
    pub arch: String,
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
            "alfa (candle, {} threads), {} random weights\n\
             image forward, batch 1      {:>8.3} s\n\
             image forward, batch 8      {:>8.3} s\n\
             text, 150 prompts @ 77      {:>8.3} s\n\
             text, 150 prompts truncated {:>8.3} s\n\
             windows, scales 2+3 (365)   {:>8.3} s",
            self.threads,
            self.arch,
            self.image_b1_s,
            self.image_b8_s,
            self.text_150_s,
            self.text_150_truncated_s,
            self.windows_365_s
        )
    }
}

/// Median wall time of `repeats` runs after one warm-up run.
fn time<T>(repeats: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
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

pub fn clip_forward(arch: &str, repeats: usize, log: impl Fn(&str)) -> Result<ClipBenchReport> {
    let config = OpenClipConfig::builtin(arch).with_context(|| {
        format!("unknown architecture `{arch}` (known: {})", OpenClipConfig::BUILTIN_ARCHS.join(", "))
    })?;
    let device = Device::Cpu;
    let model = ClipModel::new(&RandomWeights { device: device.clone() }, &config.model_cfg)?;
    let size = config.model_cfg.vision_cfg.image_size();
    let threads = candle_core::utils::get_num_threads();
    log(&format!("{arch}: random weights, {threads} threads, median of {repeats}"));

    let pixels = |b: usize| Tensor::randn(0f32, 1.0, (b, 3, size, size), &device);
    let b1 = pixels(1)?;
    let image_b1_s = time(repeats, || Ok(model.vision.forward(&b1)?))?;
    log(&format!("image batch 1: {image_b1_s:.3} s"));
    let b8 = pixels(8)?;
    let image_b8_s = time(repeats, || Ok(model.vision.forward(&b8)?))?;
    log(&format!("image batch 8: {image_b8_s:.3} s"));

    let text_cfg = &config.model_cfg.text_cfg;
    let full = prompt_ids(150, text_cfg.context_length, text_cfg.vocab_size, &device)?;
    let text_150_s = time(repeats, || Ok(model.text.forward(&full)?))?;
    log(&format!("text 150 @ {}: {text_150_s:.3} s", text_cfg.context_length));
    let cut = full.narrow(1, 0, 24)?.contiguous()?;
    let text_150_truncated_s = time(repeats, || Ok(model.text.forward(&cut)?))?;
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
    let windows_365_s = time(repeats, || {
        let embedded = model.vision.embed(&b1)?;
        for w in &windows {
            model.vision.forward_windows(&embedded, w, Default::default())?;
        }
        Ok(())
    })?;
    log(&format!("windows 2+3: {windows_365_s:.3} s"));
    Ok(ClipBenchReport {
        implementation: "alfa".into(),
        arch: arch.into(),
        threads,
        image_b1_s,
        image_b8_s,
        text_150_s,
        text_150_truncated_s,
        windows_365_s,
    })
}
