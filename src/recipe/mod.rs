//! Recipes: one human-readable folder per class holding everything an OK/NG decision
//! needs, so that copying the folder to another machine reproduces the decision.
//!
//! ```text
//! <recipes>/<class>/recipe.toml    model (+ weights hash), method and settings, thresholds
//! <recipes>/<class>/prompts.toml   the class's prompt set (absent: the built-in set)
//! <recipes>/<class>/refs/          normal reference images (few-shot)
//! ```
//!
//! `<recipes>` is `--recipes DIR`, else `$ALFA_RECIPES`, else the per-user data folder
//! (`~/.local/share/alfa/recipes` on Linux). The app and every command read and write
//! the same files; `recipe.toml` is parsed strictly (an unknown key is an error naming
//! the file and line, so a typo never drops a setting silently).

pub mod archive;
pub mod hash;
pub mod legacy;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::recipes_folder::{PROMPTS_FILE, RECIPE_FILE, REFS_DIR, Recipes, check_class_name};
use crate::clip::config::OpenClipConfig;
use crate::clip::{ModelFiles, Precision};
use crate::detect::{DetectSettings, MethodKind, RefsBackbone, WindowMode};

/// The `format` this version writes and reads.
pub const FORMAT: u32 = 1;
/// The environment variable naming the recipes folder (below `--recipes`, above the default).
pub const ENV: &str = "ALFA_RECIPES";

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}{}: {reason}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Parse { path: PathBuf, line: Option<usize>, reason: String },
    #[error("cannot write {path}: {source}{hint}")]
    Write { path: PathBuf, source: std::io::Error, hint: String },
    #[error("{0}")]
    Refused(String),
    #[error("no recipes folder: this system has no per-user data folder; pass --recipes DIR or set {ENV}")]
    NoRoot,
    #[error(transparent)]
    Prompts(#[from] crate::prompts::PromptError),
}

/// A class's `recipe.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// [`FORMAT`]; a newer format is refused rather than half understood.
    pub format: u32,
    /// The class (the folder's name).
    pub class: String,
    /// The model the thresholds were set with; absent until they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelStamp>,
    /// The method and its settings the thresholds were set with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodRecipe>,
    #[serde(default, skip_serializing_if = "RecipeThresholds::is_empty")]
    pub thresholds: RecipeThresholds,
}

/// Which model a recipe was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelStamp {
    /// The model as given: a Hugging Face repo id, a folder or a weights file.
    pub id: String,
    /// The OpenCLIP architecture (`ViT-B-16-plus-240`, or its shape when not a known one).
    pub arch: String,
    /// BLAKE3 of the weights file, hex: the same weights under any name or path.
    pub weights_blake3: String,
    /// The image tower's number format.
    pub precision: Precision,
}

/// The method a recipe's thresholds were set with, and every setting that moves a score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodRecipe {
    /// `alfa`, `clip`, `winclip`, `anovl-tfa` or `anovl-tta`.
    pub name: MethodKind,
    // The fields of `DetectSettings`, spelt out so that an unknown key is an error.
    pub scales: Vec<usize>,
    pub window_mode: WindowMode,
    pub sigma: f32,
    pub ridge_lambda: f32,
    pub context_k: f32,
    pub context_tau: f32,
    pub top_descriptors: usize,
    pub window_batch: usize,
    pub aligner: bool,
    /// Few-shot: the features of the memory bank (absent: CLIP's windows, as recipes
    /// written before DINOv2 say nothing).
    #[serde(default, skip_serializing_if = "is_clip_backbone")]
    pub refs_backbone: RefsBackbone,
    /// Few-shot: K of the references, drawn with `seed` (absent: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shots: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// AnoVL: the views its image score averages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anovl_views: Option<usize>,
}

impl MethodRecipe {
    pub fn new(name: MethodKind, settings: &DetectSettings) -> Self {
        let DetectSettings { scales, window_mode, ridge_lambda, context_k, context_tau, sigma, top_descriptors, window_batch, aligner, refs_backbone } =
            settings.clone();
        Self {
            name,
            scales,
            window_mode,
            sigma,
            ridge_lambda,
            context_k,
            context_tau,
            top_descriptors,
            window_batch,
            aligner,
            refs_backbone,
            shots: None,
            seed: None,
            anovl_views: None,
        }
    }

    pub fn settings(&self) -> DetectSettings {
        DetectSettings {
            scales: self.scales.clone(),
            window_mode: self.window_mode,
            ridge_lambda: self.ridge_lambda,
            context_k: self.context_k,
            context_tau: self.context_tau,
            sigma: self.sigma,
            top_descriptors: self.top_descriptors,
            window_batch: self.window_batch,
            aligner: self.aligner,
            refs_backbone: self.refs_backbone,
        }
    }
}

fn is_clip_backbone(backbone: &RefsBackbone) -> bool {
    *backbone == RefsBackbone::Clip
}

/// The two thresholds of a class: OK/NG on the image score, and the region threshold
/// on map values (outlines, masks). Either may be unset (the default applies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeThresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ThresholdRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<ThresholdRecord>,
}

impl RecipeThresholds {
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.region.is_none()
    }
}

/// How a threshold was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThresholdHow {
    /// Fitted on good images at a target false-positive rate.
    GoodImages,
    ByHand,
}

/// One threshold and how it was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRecord {
    /// NG (or in a region) at or above it.
    pub value: f32,
    pub how: ThresholdHow,
    /// good-images: the target false-positive rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fpr: Option<f64>,
    /// good-images: the folders or files the good images came from (`refs`: this
    /// recipe's references, each scored against the others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub good: Vec<String>,
    /// good-images: how many were scored (unreadable files are not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<usize>,
    /// When it was set, `YYYY-MM-DD` (UTC).
    pub date: String,
}

impl ThresholdRecord {
    pub fn by_hand(value: f32) -> Self {
        Self { value, how: ThresholdHow::ByHand, fpr: None, good: Vec::new(), images: None, date: today() }
    }

    pub fn from_good_images(value: f32, fpr: f64, good: Vec<String>, images: usize) -> Self {
        Self { value, how: ThresholdHow::GoodImages, fpr: Some(fpr), good, images: Some(images), date: today() }
    }

    /// What set it, for labels: `from 12 good images (good) at FPR 1% on 2026-05-01`
    /// (the folders' or files' names; the recipe has their paths).
    pub fn describe(&self) -> String {
        let name = |g: &String| Path::new(g).file_name().map_or_else(|| g.clone(), |n| n.to_string_lossy().into_owned());
        match self.how {
            ThresholdHow::ByHand => format!("set by hand on {}", self.date),
            ThresholdHow::GoodImages => format!(
                "from {} good images ({}) at FPR {}% on {}",
                self.images.unwrap_or(0),
                self.good.iter().map(name).collect::<Vec<_>>().join(", "),
                self.fpr.unwrap_or(0.0) * 100.0,
                self.date
            ),
        }
    }
}

/// Today as `YYYY-MM-DD` (UTC), from the system clock.
pub fn today() -> String {
    crate::time::utc_date(std::time::SystemTime::now())
}

impl ModelStamp {
    /// The stamp of resolved model files: `id` as the user gave it, the architecture,
    /// and the weights' content hash (computed once per file version, cached in `cache`).
    pub fn of(files: &ModelFiles, id: &str, precision: Precision, cache: Option<&Path>) -> std::io::Result<Self> {
        Ok(Self {
            id: id.to_owned(),
            arch: arch_name(&files.config),
            weights_blake3: hash::weights_blake3(&files.weights, cache)?.hex,
            precision,
        })
    }

    /// The same weights (whatever their name or path) in the same number format.
    pub fn same_model(&self, other: &ModelStamp) -> bool {
        self.weights_blake3 == other.weights_blake3 && self.precision == other.precision
    }

    /// For messages: `timm/vit_base_patch16_plus_240.laion400m_e32 (ViT-B-16-plus-240, f32, weights 1a2b3c4d…)`.
    pub fn describe(&self) -> String {
        let short: String = self.weights_blake3.chars().take(12).collect();
        format!("{} ({}, {}, weights {short}…)", self.id, self.arch, self.precision.name())
    }
}

/// The OpenCLIP name of `config`'s architecture, or its shape when it is not a known one.
pub fn arch_name(config: &OpenClipConfig) -> String {
    for name in OpenClipConfig::BUILTIN_ARCHS {
        if OpenClipConfig::builtin(name).is_some_and(|known| known.model_cfg == config.model_cfg) {
            return (*name).to_owned();
        }
    }
    let (v, t) = (&config.model_cfg.vision_cfg, &config.model_cfg.text_cfg);
    format!(
        "ViT (patch {}, width {}, {} layers; text width {}, {} layers; embed {})",
        v.patch_size, v.width, v.layers, t.width, t.layers, config.model_cfg.embed_dim
    )
}

impl Recipe {
    /// An empty recipe of `class`: nothing set yet.
    pub fn new(class: &str) -> Self {
        Self { format: FORMAT, class: class.to_owned(), model: None, method: None, thresholds: RecipeThresholds::default() }
    }

    /// Parses and checks `text`; `path` names the file in messages, and the folder's
    /// name must be the class (a copy under another name is refused, with the fix).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, RecipeError> {
        let recipe: Recipe = toml::from_str(text).map_err(|e| RecipeError::Parse {
            path: path.to_owned(),
            line: e.span().map(|s| line_at(text, s.start)),
            reason: e.message().trim_end().to_owned(),
        })?;
        recipe.validate(text, path)?;
        Ok(recipe)
    }

    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text, path)
    }

    fn validate(&self, text: &str, path: &Path) -> Result<(), RecipeError> {
        let invalid = |table: &str, key: &str, reason: String| RecipeError::Parse {
            path: path.to_owned(),
            line: line_of(text, table, key),
            reason,
        };
        if self.format != FORMAT {
            return Err(invalid(
                "",
                "format",
                format!("format {} is not one this alfa reads (it reads {FORMAT}); a newer alfa wrote it?", self.format),
            ));
        }
        check_class_name(&self.class).map_err(|e| invalid("", "class", e))?;
        let folder = path.parent().and_then(Path::file_name).and_then(|n| n.to_str());
        if let Some(folder) = folder.filter(|f| *f != self.class) {
            return Err(invalid(
                "",
                "class",
                format!("class = {:?} but the folder is `{folder}`: rename the folder or change `class`", self.class),
            ));
        }
        if let Some(model) = &self.model
            && (model.weights_blake3.len() != 64 || !model.weights_blake3.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(invalid("model", "weights_blake3", "`weights_blake3` must be 64 hex digits (a BLAKE3 hash)".into()));
        }
        if let Some(method) = &self.method
            && let Err(e) = method.settings().validate(usize::MAX)
        {
            return Err(invalid("method", "scales", format!("[method]: {e}")));
        }
        for (table, record) in [("thresholds.image", &self.thresholds.image), ("thresholds.region", &self.thresholds.region)] {
            let Some(record) = record else { continue };
            if !record.value.is_finite() {
                return Err(invalid(table, "value", format!("[{table}] value must be a finite number")));
            }
            if !valid_date(&record.date) {
                return Err(invalid(table, "date", format!("[{table}] date {:?} is not YYYY-MM-DD", record.date)));
            }
            if record.how == ThresholdHow::GoodImages {
                if !record.fpr.is_some_and(|f| (0.0..1.0).contains(&f)) {
                    return Err(invalid(table, "fpr", format!("[{table}] how = \"good-images\" needs fpr, from 0 to below 1")));
                }
                if record.images.is_none_or(|n| n == 0) {
                    return Err(invalid(table, "images", format!("[{table}] how = \"good-images\" needs images, at least 1")));
                }
            }
        }
        Ok(())
    }

    /// The file's text: a commented header, then the values.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("a recipe serialises");
        let mut text = String::from(HEADER);
        for line in body.lines() {
            if let Some(comment) = SECTION_COMMENTS.iter().find(|(header, _)| *header == line).map(|(_, c)| c) {
                if !text.ends_with("\n\n") {
                    text.push('\n');
                }
                text.push_str(comment);
            }
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// The thresholds apply to scores of `model` with `method`: the recipe was made
    /// with the same weights and number format, and the same method.
    pub fn made_with(&self, model: &ModelStamp, method: MethodKind) -> bool {
        self.model.as_ref().is_some_and(|m| m.same_model(model)) && self.method.as_ref().is_some_and(|m| m.name == method)
    }

    /// Why the thresholds may not apply to `model` with `method`, or `None` when they do
    /// (or there are none).
    pub fn mismatch(&self, model: &ModelStamp, method: MethodKind) -> Option<String> {
        if self.thresholds.is_empty() || self.made_with(model, method) {
            return None;
        }
        let made = match (&self.model, &self.method) {
            (Some(m), Some(k)) => format!("model {} with method {}", m.describe(), k.name.name()),
            (Some(m), None) => format!("model {}", m.describe()),
            (None, _) => "no recorded model".into(),
        };
        // The same weights in another number format: say how to run in the recipe's
        // (an f16 recipe on the CPU: that load then says f16 needs a GPU).
        let format = match &self.model {
            Some(m) if m.weights_blake3 == model.weights_blake3 && m.precision != model.precision => {
                format!(" (--precision {} runs in the recipe's number format)", m.precision.name())
            }
            _ => String::new(),
        };
        Some(format!(
            "the recipe of `{}` was made with {made}, not {} with {}: its thresholds may not transfer{format}",
            self.class,
            model.describe(),
            method.name()
        ))
    }
}

/// The thresholds a run applies to a class's images, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct RunThresholds {
    /// OK/NG on image scores; `None`: the class has none (no verdicts).
    pub image: Option<f32>,
    /// Regions on map values (masks); `None`: none set.
    pub region: Option<f32>,
    /// For messages and records: `recipe <path>`, `--threshold`.
    pub source: String,
    /// Said on stderr: the recipe was made with another model or method and `--force`
    /// applies it anyway, or `--threshold` replaces a recipe's threshold.
    pub warning: Option<String>,
}

/// What a run does with a recipe made with another model, method or settings, whose
/// thresholds may not transfer (when `--threshold` does not replace them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherRecipe {
    /// Refuse, and say that `--force` applies them anyway (`alfa detect`).
    RefuseUnlessForced,
    /// Refuse; the command has no `--force` (`alfa watch`: a line's decisions are
    /// changed by refitting, not overridden).
    Refuse,
    /// `--force` was given: apply them, with a warning.
    Apply,
}

/// What a batch run applies: `by_hand` (`--threshold`) for OK/NG when given, else the
/// class recipe's thresholds when it was made with `model`, `method` and `settings`.
/// A recipe made with another model, method or settings is handled as `other` says
/// unless `by_hand` replaces its thresholds. `path` names the recipe in messages.
pub fn thresholds_for_run(
    recipe: Option<&Recipe>,
    path: &Path,
    model: &ModelStamp,
    method: MethodKind,
    settings: &DetectSettings,
    by_hand: Option<f32>,
    other: OtherRecipe,
) -> Result<RunThresholds, RecipeError> {
    let mismatch = recipe.and_then(|r| {
        r.mismatch(model, method).or_else(|| {
            let theirs = r.method.as_ref().map(MethodRecipe::settings).filter(|s| s != settings)?;
            let scales = |s: &DetectSettings| s.scales.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
            Some(format!(
                "the thresholds of `{}` were set with other settings (--scales {} --window-mode {:?} --sigma {} --refs-backbone {} \
                 and the rest in the recipe), not these (--scales {} --window-mode {:?} --sigma {} --refs-backbone {}): they may \
                 not transfer",
                r.class,
                scales(&theirs),
                theirs.window_mode,
                theirs.sigma,
                theirs.refs_backbone.name(),
                scales(settings),
                settings.window_mode,
                settings.sigma,
                settings.refs_backbone.name()
            ))
        })
    });
    let source = format!("recipe {}", path.display());
    match (recipe, by_hand, mismatch) {
        (_, Some(value), why) => {
            let recipe_region = recipe.filter(|_| why.is_none()).and_then(|r| value_of(&r.thresholds.region));
            Ok(RunThresholds {
                image: Some(value),
                region: recipe_region,
                source: "--threshold".into(),
                warning: why.map(|w| format!("{w}; OK/NG by --threshold {value}, and no region threshold")),
            })
        }
        (Some(recipe), None, None) => Ok(RunThresholds {
            image: value_of(&recipe.thresholds.image),
            region: value_of(&recipe.thresholds.region),
            source,
            warning: None,
        }),
        (Some(recipe), None, Some(why)) if other == OtherRecipe::Apply => Ok(RunThresholds {
            image: value_of(&recipe.thresholds.image),
            region: value_of(&recipe.thresholds.region),
            source,
            warning: Some(format!("{why}; applied anyway (--force)")),
        }),
        (Some(recipe), None, Some(why)) => {
            let force = if other == OtherRecipe::RefuseUnlessForced { ", or pass --force to apply them anyway" } else { "" };
            Err(RecipeError::Refused(format!(
                "{why} ({}). Refit them with `alfa threshold --class {} --good DIR` with this model or give one with \
                 --threshold VALUE{force}",
                path.display(),
                recipe.class
            )))
        }
        (None, None, _) => Ok(RunThresholds { image: None, region: None, source: "none".into(), warning: None }),
    }
}

fn value_of(record: &Option<ThresholdRecord>) -> Option<f32> {
    record.as_ref().map(|t| t.value)
}

const HEADER: &str = "\
# alfa recipe: what an OK/NG decision for this class needs. Beside it: prompts.toml
# (the prompt set; absent = the built-in set) and refs/ (normal reference images).
# Written by alfa (the app, `alfa threshold`, `alfa recipe import`); you may edit it,
# unknown keys are refused. Copy the whole folder to reproduce the decision elsewhere.
";

const SECTION_COMMENTS: &[(&str, &str)] = &[
    ("[model]", "# The model the thresholds were set with: as given (hub id or path), and the weights' content hash.\n"),
    ("[method]", "# The method and every setting that moves a score.\n"),
    ("[thresholds.image]", "# OK/NG: an image scoring at or above it is NG.\n"),
    ("[thresholds.region]", "# Regions: map values at or above it are outlined and make the mask.\n"),
];

/// 1-based line of byte offset `at`.
fn line_at(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The line of `key` in `[table]` (`""`: the top level), for messages about values.
fn line_of(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[').and_then(|h| h.split(']').next()) {
            current = header.trim().to_owned();
            continue;
        }
        if current == table
            && let Some(rest) = trimmed.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

fn valid_date(date: &str) -> bool {
    let b = date.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// What `alfa recipe list` shows of a class folder.
#[derive(Debug)]
pub struct ClassSummary {
    pub class: String,
    pub dir: PathBuf,
    /// `None`: no recipe.toml (only prompts or references so far).
    pub recipe: Option<Result<Recipe, RecipeError>>,
    pub has_prompts: bool,
    pub refs: usize,
}

/// Finding the recipes folder, and reading and writing recipes in it (its layout:
/// `crate::recipes_folder`).
impl Recipes {
    /// `explicit` (`--recipes DIR`), else `$ALFA_RECIPES`, else [`Recipes::default_root`].
    pub fn locate(explicit: Option<&Path>) -> Result<Self, RecipeError> {
        if let Some(dir) = explicit {
            return Ok(Self::new(dir));
        }
        if let Some(dir) = std::env::var_os(ENV).filter(|d| !d.is_empty()) {
            return Ok(Self::new(PathBuf::from(dir)));
        }
        Self::default_root().map(Self::new).ok_or(RecipeError::NoRoot)
    }

    /// The per-user data folder's `alfa/recipes` (`~/.local/share/alfa/recipes` on
    /// Linux, `~/Library/Application Support/alfa/recipes` on macOS, `%APPDATA%\alfa\recipes`
    /// on Windows).
    pub fn default_root() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("alfa").join("recipes"))
    }

    /// The class's recipe, `None` when it has no recipe.toml.
    pub fn read(&self, class: &str) -> Result<Option<Recipe>, RecipeError> {
        let path = self.recipe_file(class);
        if !path.exists() {
            return Ok(None);
        }
        Recipe::from_file(&path).map(Some)
    }

    /// Writes the recipe's recipe.toml atomically; returns its path.
    pub fn write(&self, recipe: &Recipe) -> Result<PathBuf, RecipeError> {
        check_class_name(&recipe.class).map_err(RecipeError::Refused)?;
        let path = self.recipe_file(&recipe.class);
        self.write_file(&path, recipe.to_toml().as_bytes())?;
        Ok(path)
    }

    /// Writes a file in the recipes folder atomically; an error says where, and that
    /// `--recipes` chooses another folder when this one is not writable.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), RecipeError> {
        crate::files::write_atomic(path, bytes).map_err(|source| self.write_error(path, source))
    }

    pub fn write_error(&self, path: &Path, source: std::io::Error) -> RecipeError {
        use std::io::ErrorKind::*;
        let hint = if matches!(source.kind(), PermissionDenied | ReadOnlyFilesystem | NotADirectory | AlreadyExists) {
            format!(
                " (the recipes folder {} is not writable: pass --recipes DIR or set {ENV} to use another)",
                self.root.display()
            )
        } else {
            String::new()
        };
        RecipeError::Write { path: path.to_owned(), source, hint }
    }

    /// Checks that `class`'s folder can be created and written (before slow work).
    pub fn ensure_writable(&self, class: &str) -> Result<PathBuf, RecipeError> {
        check_class_name(class).map_err(RecipeError::Refused)?;
        let dir = self.class_dir(class);
        std::fs::create_dir_all(&dir).map_err(|e| self.write_error(&dir, e))?;
        tempfile::Builder::new().prefix(".alfa-").tempfile_in(&dir).map_err(|e| self.write_error(&dir, e))?;
        Ok(dir)
    }

    pub fn summary(&self, class: &str) -> ClassSummary {
        let recipe = match self.read(class) {
            Ok(None) => None,
            Ok(Some(r)) => Some(Ok(r)),
            Err(e) => Some(Err(e)),
        };
        let refs = crate::detect::references::list_references(&self.refs_dir(class)).map_or(0, |r| r.len());
        ClassSummary {
            class: class.to_owned(),
            dir: self.class_dir(class),
            recipe,
            has_prompts: self.prompts_file(class).is_file(),
            refs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(class: &str) -> Recipe {
        let mut method = MethodRecipe::new(MethodKind::Alfa, &DetectSettings::default());
        method.shots = Some(4);
        method.seed = Some(7);
        Recipe {
            format: FORMAT,
            class: class.into(),
            model: Some(ModelStamp {
                id: "timm/vit_base_patch16_plus_240.laion400m_e32".into(),
                arch: "ViT-B-16-plus-240".into(),
                weights_blake3: "ab".repeat(32),
                precision: Precision::F32,
            }),
            method: Some(method),
            thresholds: RecipeThresholds {
                image: Some(ThresholdRecord::from_good_images(0.734, 0.01, vec!["/data/good".into()], 120)),
                region: Some(ThresholdRecord::by_hand(0.412)),
            },
        }
    }

    #[test]
    fn a_recipe_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let recipes = Recipes::new(dir.path());
        let recipe = full("bottle");
        let path = recipes.write(&recipe).unwrap();
        assert_eq!(path, dir.path().join("bottle/recipe.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# alfa recipe"), "{text}");
        assert!(text.contains("how = \"good-images\"") && text.contains("scales = [2, 3]"), "{text}");
        assert_eq!(recipes.read("bottle").unwrap(), Some(recipe));
        assert_eq!(recipes.read("screw").unwrap(), None);
        assert_eq!(recipes.classes(), ["bottle"]);
        // An empty recipe is valid too.
        recipes.write(&Recipe::new("screw")).unwrap();
        assert_eq!(recipes.read("screw").unwrap(), Some(Recipe::new("screw")));
    }

    #[test]
    fn thresholds_survive_the_text_form_bit_for_bit() {
        // A fitted threshold sits one f32 step above a score: it must not move.
        let mut value = 1e-6f32;
        let mut n = 0;
        while value < 2.0 {
            let mut recipe = Recipe::new("x");
            recipe.thresholds.image = Some(ThresholdRecord::by_hand(value));
            let back = Recipe::from_toml(&recipe.to_toml(), Path::new("x/recipe.toml")).unwrap();
            assert_eq!(back.thresholds.image.unwrap().value.to_bits(), value.to_bits(), "{value}");
            value = (value * 1.000_37).next_up();
            n += 1;
        }
        assert!(n > 30_000);
    }

    #[test]
    fn a_malformed_recipe_names_the_file_and_line() {
        let text = full("bottle").to_toml().replace("scales = [2, 3]", "scales = [2, 3");
        let err = Recipe::from_toml(&text, Path::new("r/bottle/recipe.toml")).unwrap_err().to_string();
        let line = text.lines().position(|l| l.starts_with("scales")).unwrap() + 1;
        assert!(err.starts_with("r/bottle/recipe.toml, line "), "{err}");
        let said: usize = err["r/bottle/recipe.toml, line ".len()..].split(':').next().unwrap().parse().unwrap();
        assert!(said == line || said == line + 1, "{err} (scales is on line {line})");

        // A value that parses but cannot be right: its own line.
        let text = full("bottle").to_toml().replace("how = \"by-hand\"", "how = \"by-hand\"\nvalue2 = 1");
        let err = Recipe::from_toml(&text, Path::new("bottle/recipe.toml")).unwrap_err().to_string();
        assert!(err.contains("unknown field `value2`"), "{err}");
        let text = full("bottle").to_toml().replace("date = \"", "date = \"x");
        let err = Recipe::from_toml(&text, Path::new("bottle/recipe.toml")).unwrap_err().to_string();
        let line = text.lines().position(|l| l.starts_with("date = \"x")).unwrap() + 1;
        assert!(err.contains(&format!("line {line}:")) && err.contains("YYYY-MM-DD"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        for (from, to, key) in [
            ("window_mode =", "window_mod =", "window_mod"),
            ("weights_blake3 =", "weights_blak3 =", "weights_blak3"),
            ("format = 1", "format = 1\ncolour = \"red\"", "colour"),
            ("[thresholds.region]", "[thresholds.regoin]", "regoin"),
        ] {
            let text = full("bottle").to_toml().replacen(from, to, 1);
            let err = Recipe::from_toml(&text, Path::new("bottle/recipe.toml")).unwrap_err().to_string();
            assert!(err.contains(&format!("unknown field `{key}`")) && err.contains("line "), "{key}: {err}");
        }
    }

    #[test]
    fn a_recipe_under_another_folder_name_or_format_is_refused_with_the_fix() {
        let text = full("bottle").to_toml();
        let err = Recipe::from_toml(&text, Path::new("r/bottle-copy/recipe.toml")).unwrap_err().to_string();
        assert!(err.contains("rename the folder or change `class`"), "{err}");
        let err = Recipe::from_toml(&text.replace("format = 1", "format = 2"), Path::new("bottle/recipe.toml")).unwrap_err().to_string();
        assert!(err.contains("line ") && err.contains("format 2"), "{err}");
    }

    #[test]
    fn thresholds_apply_to_the_same_weights_and_method_only() {
        let recipe = full("bottle");
        let model = recipe.model.clone().unwrap();
        assert!(recipe.made_with(&model, MethodKind::Alfa));
        assert_eq!(recipe.mismatch(&model, MethodKind::Alfa), None);
        let moved = ModelStamp { id: "/elsewhere/model".into(), ..model.clone() };
        assert!(recipe.made_with(&moved, MethodKind::Alfa), "the same weights under another path");
        let other = ModelStamp { weights_blake3: "cd".repeat(32), ..model.clone() };
        let why = recipe.mismatch(&other, MethodKind::Alfa).unwrap();
        assert!(why.contains("may not transfer") && why.contains("abababab"), "{why}");
        assert!(recipe.mismatch(&model, MethodKind::Winclip).is_some());
        // An f16 recipe (made on a GPU) reads anywhere; with f32 its thresholds do not
        // apply, and the message names the precision that would.
        let mut on_gpu = recipe.clone();
        on_gpu.model = Some(ModelStamp { precision: Precision::F16, ..model.clone() });
        let read = Recipe::from_toml(&on_gpu.to_toml(), Path::new("bottle/recipe.toml")).unwrap();
        assert_eq!(read.model.as_ref().unwrap().precision, Precision::F16);
        assert!(on_gpu.to_toml().contains("precision = \"f16\""));
        let why = read.mismatch(&model, MethodKind::Alfa).unwrap();
        assert!(why.contains("f16") && why.contains("--precision f16 runs in the recipe's number format"), "{why}");
        assert_eq!(Recipe::new("bottle").mismatch(&other, MethodKind::Alfa), None, "no thresholds, nothing to transfer");
    }

    #[test]
    fn a_run_refuses_thresholds_of_another_model_unless_told() {
        let recipe = full("bottle");
        let path = Path::new("r/bottle/recipe.toml");
        let model = recipe.model.clone().unwrap();
        let settings = DetectSettings::default();
        let same = thresholds_for_run(Some(&recipe), path, &model, MethodKind::Alfa, &settings, None, OtherRecipe::RefuseUnlessForced).unwrap();
        assert_eq!((same.image, same.region, same.warning), (Some(0.734), Some(0.412), None));
        let other = ModelStamp { weights_blake3: "cd".repeat(32), ..model };
        let err = thresholds_for_run(Some(&recipe), path, &other, MethodKind::Alfa, &settings, None, OtherRecipe::RefuseUnlessForced).unwrap_err().to_string();
        assert!(err.contains("may not transfer") && err.contains("--threshold") && err.contains("--force") && err.contains("r/bottle/recipe.toml"), "{err}");
        let forced = thresholds_for_run(Some(&recipe), path, &other, MethodKind::Alfa, &settings, None, OtherRecipe::Apply).unwrap();
        assert_eq!(forced.image, Some(0.734));
        assert!(forced.warning.unwrap().contains("--force"));
        // A command without --force does not suggest it.
        let err = thresholds_for_run(Some(&recipe), path, &other, MethodKind::Alfa, &settings, None, OtherRecipe::Refuse).unwrap_err().to_string();
        assert!(err.contains("may not transfer") && err.contains("--threshold VALUE") && !err.contains("--force"), "{err}");
        let by_hand = thresholds_for_run(Some(&recipe), path, &other, MethodKind::Alfa, &settings, Some(0.6), OtherRecipe::RefuseUnlessForced).unwrap();
        assert_eq!((by_hand.image, by_hand.region), (Some(0.6), None), "the other model's region threshold is not applied");
        assert!(by_hand.warning.is_some());
        // Another method is another score: refused the same way.
        let same_model = recipe.model.clone().unwrap();
        assert!(thresholds_for_run(Some(&recipe), path, &same_model, MethodKind::Clip, &settings, None, OtherRecipe::RefuseUnlessForced).is_err());
        // Other window scales are other scores too.
        let scales = DetectSettings { scales: vec![2], ..settings.clone() };
        let err = thresholds_for_run(Some(&recipe), path, &same_model, MethodKind::Alfa, &scales, None, OtherRecipe::RefuseUnlessForced).unwrap_err().to_string();
        assert!(err.contains("--scales 2,3") && err.contains("not these (--scales 2 "), "{err}");
        assert_eq!(thresholds_for_run(None, path, &other, MethodKind::Alfa, &settings, None, OtherRecipe::RefuseUnlessForced).unwrap().image, None);
    }

    #[test]
    fn an_unwritable_folder_is_named_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        // A recipes "folder" that is a file cannot hold recipes, whoever runs the test.
        let recipes = Recipes::new(&file);
        let err = recipes.write(&Recipe::new("bottle")).unwrap_err().to_string();
        assert!(err.contains(&file.display().to_string()) && err.contains("--recipes"), "{err}");
        let err = recipes.ensure_writable("bottle").unwrap_err().to_string();
        assert!(err.contains("--recipes"), "{err}");
        assert!(Recipes::new(dir.path()).write(&Recipe::new("../x")).is_err());
    }
}
