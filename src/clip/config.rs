//! OpenCLIP's `open_clip_config.json`, as the Hugging Face hub ships it.
//!
//! Every field OpenCLIP's ViT configs use is listed, so that a field we do not know
//! is an error rather than silently ignored: a config that asks for an architecture
//! we do not implement (a timm trunk, attentional pooling, a Hugging Face text
//! tower, ...) must fail loudly instead of producing wrong features.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ClipError;

/// The architecture ALFA and WinCLIP use (`ViT-B-16-plus-240`).
pub const DEFAULT_ARCH: &str = "ViT-B-16-plus-240";

/// OpenAI's normalisation, OpenCLIP's default for every ViT.
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenClipConfig {
    pub model_cfg: ModelConfig,
    #[serde(default)]
    pub preprocess_cfg: PreprocessConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub embed_dim: usize,
    #[serde(default)]
    pub quick_gelu: bool,
    pub vision_cfg: VisionConfig,
    pub text_cfg: TextConfig,
    // Fields that do not change inference for the towers we implement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_text: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cast_dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_logit_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_logit_bias: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    pub image_size: ImageSize,
    pub layers: usize,
    pub width: usize,
    #[serde(default = "default_head_width")]
    pub head_width: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    pub patch_size: usize,
    // Accepted only with the values that leave the plain ViT unchanged (see `validate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ls_init_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attentional_pool: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_ln_pre: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_ln_after_pool: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timm_model_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timm_model_pretrained: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ls_init_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_model_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_tokenizer_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_kwargs: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_causal_mask: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed_cls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_ln_after_pool: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proj_bias: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<bool>,
}

/// `image_size` is an int in every OpenCLIP ViT config, but may be `[h, w]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    #[serde(default = "default_interpolation")]
    pub interpolation: String,
    #[serde(default = "default_resize_mode")]
    pub resize_mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_color: Option<u8>,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
            interpolation: default_interpolation(),
            resize_mode: default_resize_mode(),
            fill_color: None,
        }
    }
}

fn default_head_width() -> usize {
    64
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_context_length() -> usize {
    77
}
fn default_vocab_size() -> usize {
    49408
}
fn default_mean() -> [f32; 3] {
    OPENAI_MEAN
}
fn default_std() -> [f32; 3] {
    OPENAI_STD
}
fn default_interpolation() -> String {
    "bicubic".into()
}
fn default_resize_mode() -> String {
    "shortest".into()
}

impl VisionConfig {
    /// Side of the square input, in pixels.
    pub fn image_size(&self) -> usize {
        match self.image_size {
            ImageSize::Square(s) => s,
            ImageSize::HeightWidth([h, _]) => h,
        }
    }
    pub fn heads(&self) -> usize {
        self.width / self.head_width
    }
    /// Patches per side of the grid.
    pub fn grid(&self) -> usize {
        self.image_size() / self.patch_size
    }
    pub fn mlp_width(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
}

impl TextConfig {
    pub fn mlp_width(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }
}

impl OpenClipConfig {
    pub fn from_file(path: &Path) -> Result<Self, ClipError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClipError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text).map_err(|reason| ClipError::Config {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses and validates; the error is a sentence for the user.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let config: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// The built-in config of a named OpenCLIP architecture, for weight files that
    /// come without an `open_clip_config.json` (OpenCLIP's own `.pt` releases).
    pub fn builtin(arch: &str) -> Option<Self> {
        let (embed_dim, quick, image, patch, vwidth, vlayers, twidth, theads, tlayers) =
            match arch.trim_end_matches("-quickgelu") {
                "ViT-B-32" => (512, false, 224, 32, 768, 12, 512, 8, 12),
                "ViT-B-16" => (512, false, 224, 16, 768, 12, 512, 8, 12),
                "ViT-B-16-plus-240" => (640, false, 240, 16, 896, 12, 640, 10, 12),
                "ViT-L-14" => (768, false, 224, 14, 1024, 24, 768, 12, 12),
                "ViT-L-14-336" => (768, false, 336, 14, 1024, 24, 768, 12, 12),
                _ => return None,
            };
        Some(Self {
            model_cfg: ModelConfig {
                embed_dim,
                quick_gelu: quick || arch.ends_with("-quickgelu"),
                vision_cfg: VisionConfig {
                    image_size: ImageSize::Square(image),
                    layers: vlayers,
                    width: vwidth,
                    head_width: 64,
                    mlp_ratio: 4.0,
                    patch_size: patch,
                    ls_init_value: None,
                    patch_dropout: None,
                    attentional_pool: None,
                    no_ln_pre: None,
                    pool_type: None,
                    final_ln_after_pool: None,
                    output_tokens: None,
                    timm_model_name: None,
                    timm_model_pretrained: None,
                },
                text_cfg: TextConfig {
                    context_length: 77,
                    vocab_size: 49408,
                    width: twidth,
                    heads: theads,
                    layers: tlayers,
                    mlp_ratio: 4.0,
                    ls_init_value: None,
                    hf_model_name: None,
                    hf_tokenizer_name: None,
                    tokenizer_kwargs: None,
                    pool_type: None,
                    no_causal_mask: None,
                    embed_cls: None,
                    pad_id: None,
                    final_ln_after_pool: None,
                    proj_bias: None,
                    output_tokens: None,
                },
                custom_text: None,
                cast_dtype: None,
                init_logit_scale: None,
                init_logit_bias: None,
            },
            preprocess_cfg: PreprocessConfig::default(),
        })
    }

    /// The architectures `builtin` knows, for help texts.
    pub const BUILTIN_ARCHS: &'static [&'static str] = &[
        "ViT-B-32",
        "ViT-B-32-quickgelu",
        "ViT-B-16",
        "ViT-B-16-plus-240",
        "ViT-L-14",
        "ViT-L-14-quickgelu",
        "ViT-L-14-336",
    ];

    /// Rejects what this implementation would compute wrongly.
    pub fn validate(&self) -> Result<(), String> {
        let m = &self.model_cfg;
        let v = &m.vision_cfg;
        let t = &m.text_cfg;
        let unsupported = |field: &str, value: &dyn std::fmt::Debug| {
            Err(format!(
                "`{field}` = {value:?} is not supported: alfa implements OpenCLIP's plain ViT towers"
            ))
        };
        if let Some(name) = &v.timm_model_name {
            return unsupported("vision_cfg.timm_model_name", name);
        }
        if v.attentional_pool == Some(true) {
            return unsupported("vision_cfg.attentional_pool", &true);
        }
        if v.no_ln_pre == Some(true) {
            return unsupported("vision_cfg.no_ln_pre", &true);
        }
        if v.final_ln_after_pool == Some(true) {
            return unsupported("vision_cfg.final_ln_after_pool", &true);
        }
        if let Some(pool) = v.pool_type.as_deref().filter(|p| *p != "tok") {
            return unsupported("vision_cfg.pool_type", &pool);
        }
        if let Some(name) = &t.hf_model_name {
            return unsupported("text_cfg.hf_model_name", name);
        }
        if let Some(pool) = t.pool_type.as_deref().filter(|p| *p != "argmax") {
            return unsupported("text_cfg.pool_type", &pool);
        }
        if t.no_causal_mask == Some(true) {
            return unsupported("text_cfg.no_causal_mask", &true);
        }
        if t.embed_cls == Some(true) {
            return unsupported("text_cfg.embed_cls", &true);
        }
        if t.proj_bias == Some(true) {
            return unsupported("text_cfg.proj_bias", &true);
        }
        if t.final_ln_after_pool == Some(true) {
            return unsupported("text_cfg.final_ln_after_pool", &true);
        }
        // LayerScale adds weights (`ls_1.gamma`) the plain blocks do not have.
        if v.ls_init_value.is_some() || t.ls_init_value.is_some() {
            return unsupported("ls_init_value", &v.ls_init_value.or(t.ls_init_value));
        }
        if let ImageSize::HeightWidth([h, w]) = v.image_size
            && h != w
        {
            return unsupported("vision_cfg.image_size", &[h, w]);
        }
        let positive = [
            ("embed_dim", m.embed_dim),
            ("vision_cfg.layers", v.layers),
            ("vision_cfg.width", v.width),
            ("vision_cfg.head_width", v.head_width),
            ("vision_cfg.patch_size", v.patch_size),
            ("text_cfg.width", t.width),
            ("text_cfg.heads", t.heads),
            ("text_cfg.layers", t.layers),
            ("text_cfg.context_length", t.context_length),
            ("text_cfg.vocab_size", t.vocab_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("`{name}` must be positive"));
        }
        if v.width % v.head_width != 0 {
            return Err(format!(
                "vision width {} is not a multiple of head_width {}",
                v.width, v.head_width
            ));
        }
        if t.width % t.heads != 0 {
            return Err(format!(
                "text width {} is not a multiple of heads {}",
                t.width, t.heads
            ));
        }
        if v.image_size() % v.patch_size != 0 {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                v.image_size(),
                v.patch_size
            ));
        }
        if !(self.preprocess_cfg.std.iter().all(|s| *s > 0.0)) {
            return Err("preprocess_cfg.std must be positive".into());
        }
        match self.preprocess_cfg.interpolation.as_str() {
            "bicubic" | "bilinear" => {}
            other => return unsupported("preprocess_cfg.interpolation", &other),
        }
        match self.preprocess_cfg.resize_mode.as_str() {
            "shortest" | "longest" | "squash" => {}
            other => return unsupported("preprocess_cfg.resize_mode", &other),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_default_matches_method_spec() {
        let c = OpenClipConfig::builtin(DEFAULT_ARCH).unwrap();
        let v = &c.model_cfg.vision_cfg;
        assert_eq!((v.image_size(), v.patch_size, v.grid()), (240, 16, 15));
        assert_eq!((v.width, v.heads(), v.layers), (896, 14, 12));
        let t = &c.model_cfg.text_cfg;
        assert_eq!((t.width, t.heads, t.layers, t.context_length), (640, 10, 12, 77));
        assert!(!c.model_cfg.quick_gelu);
        assert!(c.validate().is_ok());
        assert!(OpenClipConfig::builtin("ViT-B-32-quickgelu").unwrap().model_cfg.quick_gelu);
        assert!(OpenClipConfig::builtin("RN50").is_none());
        for arch in OpenClipConfig::BUILTIN_ARCHS {
            assert!(OpenClipConfig::builtin(arch).is_some(), "{arch}");
        }
    }

    #[test]
    fn hub_config_parses_with_defaults() {
        let json = r#"{"model_cfg": {"embed_dim": 640, "vision_cfg": {"image_size": 240, "layers": 12,
            "width": 896, "patch_size": 16}, "text_cfg": {"context_length": 77, "vocab_size": 49408,
            "width": 640, "heads": 10, "layers": 12}},
            "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711]}}"#;
        let c = OpenClipConfig::from_json(json).unwrap();
        assert_eq!(c, OpenClipConfig::builtin(DEFAULT_ARCH).unwrap());
    }

    #[test]
    fn unknown_and_unsupported_fields_are_errors() {
        let base = |vision_extra: &str| {
            format!(
                r#"{{"model_cfg": {{"embed_dim": 8, "vision_cfg": {{"image_size": 16, "layers": 1,
                "width": 8, "head_width": 4, "patch_size": 8{vision_extra}}}, "text_cfg": {{"width": 8,
                "heads": 2, "layers": 1}}}}}}"#
            )
        };
        assert!(OpenClipConfig::from_json(&base("")).is_ok());
        let err = OpenClipConfig::from_json(&base(r#", "frobnicate": 3"#)).unwrap_err();
        assert!(err.contains("frobnicate"), "{err}");
        let err = OpenClipConfig::from_json(&base(r#", "attentional_pool": true"#)).unwrap_err();
        assert!(err.contains("attentional_pool"), "{err}");
        let err = OpenClipConfig::from_json(&base(r#", "timm_model_name": "vit_x""#)).unwrap_err();
        assert!(err.contains("timm_model_name"), "{err}");
        let err = OpenClipConfig::from_json(&base(r#", "patch_size": 5"#)).unwrap_err();
        assert!(err.contains("duplicate") || err.contains("patch_size"), "{err}");
    }
}
