//! Paths shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

pub mod llm_server;

use std::path::PathBuf;

/// `tests/fixtures/` (committed, made by `tests/fixtures/generate_clip_fixtures.py`).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// CLIP's `tokenizer.json` from `../shared/clip/` (beside the clone, in CI too).
pub fn shared_tokenizer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/clip/tokenizer.json")
}

/// A detector on a tiny fixture model (`tiny-gelu`, `tiny-quickgelu`) on the CPU;
/// `identity` replaces the model's own cache key, `cache` is the cache folder.
pub fn detector(model: &str, identity: Option<&str>, cache: Option<&std::path::Path>) -> alfa::detect::Detector {
    detector_in(alfa::clip::Precision::F32, model, identity, cache)
}

/// `detector` with the image tower in `precision`.
pub fn detector_in(
    precision: alfa::clip::Precision,
    model: &str,
    identity: Option<&str>,
    cache: Option<&std::path::Path>,
) -> alfa::detect::Detector {
    let files = alfa::clip::ModelRequest {
        model: Some(fixtures().join(model).display().to_string()),
        tokenizer: Some(shared_tokenizer()),
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let clip = alfa::clip::Clip::load(&files, &candle_core::Device::Cpu, precision).unwrap();
    alfa::detect::Detector::new(clip, identity.unwrap_or(&files.identity()), cache)
}
