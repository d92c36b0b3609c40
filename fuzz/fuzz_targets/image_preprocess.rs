//! Image bytes -> `alfa::clip::decode_image` (the decoder, size check and limits of
//! `open_image`) -> `Preprocessor::tensor` on the CPU, for the default model's 240 px
//! transform, the tiny test model's 32 px one and the other resize modes.
#![no_main]

use std::sync::OnceLock;

use alfa::clip::config::{DEFAULT_ARCH, PreprocessConfig};
use alfa::clip::{OpenClipConfig, Preprocessor, decode_image};
use candle_core::Device;
use libfuzzer_sys::fuzz_target;

fn preprocessors() -> &'static [Preprocessor] {
    static ALL: OnceLock<Vec<Preprocessor>> = OnceLock::new();
    ALL.get_or_init(|| {
        let default = OpenClipConfig::builtin(DEFAULT_ARCH).expect("the default architecture is built in");
        let tiny = OpenClipConfig::from_json(include_str!("../../tests/fixtures/tiny-gelu/open_clip_config.json"))
            .expect("the tiny fixture's config is valid");
        let mode = |resize_mode: &str, interpolation: &str, fill_color| PreprocessConfig {
            resize_mode: resize_mode.into(),
            interpolation: interpolation.into(),
            fill_color,
            ..PreprocessConfig::default()
        };
        vec![
            Preprocessor::new(&default.preprocess_cfg, default.model_cfg.vision_cfg.image_size()),
            Preprocessor::new(&tiny.preprocess_cfg, tiny.model_cfg.vision_cfg.image_size()),
            Preprocessor::new(&mode("longest", "bilinear", Some(128)), 32),
            Preprocessor::new(&mode("squash", "bicubic", None), 32),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(image) = decode_image(data) else {
        return;
    };
    for pre in preprocessors() {
        let s = pre.size as usize;
        let tensor = pre.tensor(&image, &Device::Cpu).expect("preprocessing a decoded image cannot fail");
        assert_eq!(tensor.dims(), &[3, s, s]);
    }
});
