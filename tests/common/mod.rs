//! Paths shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

/// `tests/fixtures/` (committed, made by `tests/fixtures/generate_clip_fixtures.py`).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// CLIP's `tokenizer.json` from `../shared/clip/` (beside the clone, in CI too).
pub fn shared_tokenizer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/clip/tokenizer.json")
}
