//! What the detector is asked to do: window scales and mode, the aligner's and
//! contextual scoring's parameters, smoothing, batches, the few-shot backbone; checked
//! before any work ([`DetectSettings::validate`]).

use serde::Serialize;

use super::DetectError;

/// How window features are computed (METHOD section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum WindowMode {
    /// Only the window's patch tokens (with their position embeddings) and the class
    /// token go through the ViT (WinCLIP's construction): fast.
    Tokens,
    /// The image with everything outside the window blacked out goes through the
    /// whole ViT (the paper's construction): one full forward per window, slow.
    Pixels,
}

/// Which features the few-shot memory bank holds (METHOD sections 5 and 5b).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RefsBackbone {
    /// CLIP window features at the aligner's scales (the paper's few-shot mode).
    #[default]
    Clip,
    /// DINOv2 patch features (AnomalyDINO), 37 x 37 per image.
    Dinov2,
}

impl RefsBackbone {
    /// The name `--refs-backbone` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Clip => "clip",
            Self::Dinov2 => "dinov2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DetectSettings {
    /// Window sizes in patches (stride 1).
    pub scales: Vec<usize>,
    pub window_mode: WindowMode,
    /// Ridge regulariser of the global-to-local projection. 0.1 is a provisional
    /// default: choosing it by measurement needs the real weights and a dataset,
    /// which this project's build machines cannot download (see the README).
    pub ridge_lambda: f32,
    /// Sharpness `k` and threshold `tau` of contextual scoring.
    pub context_k: f32,
    pub context_tau: f32,
    /// Gaussian smoothing of the map at the input resolution, in pixels.
    pub sigma: f32,
    /// How many descriptors to report.
    pub top_descriptors: usize,
    /// Windows per forward batch in tokens mode (memory bound), images in pixels mode
    /// (at most 16 on the CPU). On a GPU the floor of a batch sized from free memory
    /// (`batching`).
    pub window_batch: usize,
    /// The fine-grained aligner: project the text features into each window's
    /// space. Off (an ablation), windows are scored against the global text features.
    pub aligner: bool,
    /// The features of the few-shot memory bank (records written before it existed
    /// were CLIP's).
    #[serde(default)]
    pub refs_backbone: RefsBackbone,
}

impl Default for DetectSettings {
    fn default() -> Self {
        Self {
            scales: vec![2, 3],
            window_mode: WindowMode::Tokens,
            ridge_lambda: 0.1,
            context_k: 1.0,
            context_tau: 0.0,
            sigma: 4.0,
            top_descriptors: 5,
            window_batch: 256,
            aligner: true,
            refs_backbone: RefsBackbone::Clip,
        }
    }
}

/// More window scales than this are refused: each costs a full pass of windows, and
/// a typed list must not be able to make the work (or memory) grow without bound.
pub const MAX_SCALES: usize = 8;
/// The largest Gaussian sigma (pixels) accepted; the kernel grows with it.
pub const MAX_SIGMA: f32 = 256.0;
/// The largest window batch accepted (windows per forward pass hold activations).
pub const MAX_WINDOW_BATCH: usize = 4096;

impl DetectSettings {
    /// Refuses settings the detector cannot run on a model whose patch grid is
    /// `grid` x `grid`, with a message that says what is allowed. Every entry point
    /// (detection, window features, reference banks, baselines) calls it, so a bad
    /// value typed anywhere is an error and never an index out of bounds.
    pub fn validate(&self, grid: usize) -> Result<(), DetectError> {
        let refuse = |m: String| Err(DetectError::Settings(m));
        if self.scales.is_empty() {
            return refuse("at least one window scale is needed".into());
        }
        if self.scales.len() > MAX_SCALES {
            return refuse(format!("{} window scales given; at most {MAX_SCALES} are allowed", self.scales.len()));
        }
        if let Some(&s) = self.scales.iter().find(|&&s| s == 0 || s > grid) {
            return refuse(format!("window scale {s} must be between 1 and the model's patch grid size {grid}"));
        }
        if let Some((i, &s)) = self.scales.iter().enumerate().find(|(i, s)| self.scales[..*i].contains(s)) {
            return refuse(format!("window scale {s} is given twice (position {})", i + 1));
        }
        if !(1..=MAX_WINDOW_BATCH).contains(&self.window_batch) {
            return refuse(format!("window batch {} must be between 1 and {MAX_WINDOW_BATCH}", self.window_batch));
        }
        if !(self.sigma.is_finite() && (0.0..=MAX_SIGMA).contains(&self.sigma)) {
            return refuse(format!("sigma {} must be between 0 and {MAX_SIGMA} pixels", self.sigma));
        }
        if !(self.ridge_lambda.is_finite() && self.ridge_lambda > 0.0) {
            return refuse(format!("ridge lambda {} must be a positive number", self.ridge_lambda));
        }
        if !(self.context_k.is_finite() && self.context_tau.is_finite()) {
            return refuse(format!("contextual scoring k {} and tau {} must be numbers", self.context_k, self.context_tau));
        }
        Ok(())
    }
}

/// Parses a typed list of window scales ("2, 3") and checks it against a patch grid
/// (`None`: no model loaded yet, only the grid-free checks).
pub fn parse_scales(text: &str, grid: Option<usize>) -> Result<Vec<usize>, DetectError> {
    let scales = text
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<usize>()
                .map_err(|_| DetectError::Settings(format!("`{v}` is not a window scale: give whole numbers separated by commas")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let settings = DetectSettings { scales, ..DetectSettings::default() };
    // Without a model the grid is unknown: the detector checks it again when it runs.
    settings.validate(grid.unwrap_or(usize::MAX))?;
    Ok(settings.scales)
}
