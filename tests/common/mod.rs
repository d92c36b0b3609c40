//! Paths shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

pub mod llm_server;

use std::cell::Cell;
use std::path::PathBuf;

use alfa::clip::Kernels;

thread_local! {
    static KERNELS: Cell<Kernels> = const { Cell::new(Kernels::Native) };
}

/// The kernels the models of this test (thread) run on: set by `both_kernels!`.
pub fn kernels() -> Kernels {
    KERNELS.with(Cell::get)
}

/// Runs `test` with its models on `kernels`.
pub fn with_kernels(kernels: Kernels, test: impl FnOnce()) {
    KERNELS.with(|k| k.set(kernels));
    test();
}

/// Defines a test twice, as `NAME::native` and `NAME::generic`: the models its body
/// builds through `common` (`detector`, `kernels()`) run on this crate's CPU kernels,
/// then on candle's own operations (the path CUDA and Metal run). Same assertions,
/// same tolerances. Attributes (`#[ignore]`, ...) apply to both.
#[allow(unused_macros)]
macro_rules! both_kernels {
    ($(#[$attr:meta])* fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$attr])*
            #[test]
            fn native() {
                crate::common::with_kernels(alfa::clip::Kernels::Native, || $body)
            }
            $(#[$attr])*
            #[test]
            fn generic() {
                crate::common::with_kernels(alfa::clip::Kernels::Generic, || $body)
            }
        }
    };
}

/// `tests/fixtures/` (committed, made by `tests/fixtures/generate_clip_fixtures.py`).
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// CLIP's `tokenizer.json` from `../shared/clip/` (beside the clone, in CI too).
pub fn shared_tokenizer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/clip/tokenizer.json")
}

/// A detector on a tiny fixture model (`tiny-gelu`, `tiny-quickgelu`) on the CPU,
/// with this test's `kernels()`; `identity` replaces the model's own cache key,
/// `cache` is the cache folder.
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
    let clip = alfa::clip::Clip::load(&files, &candle_core::Device::Cpu, precision, kernels()).unwrap();
    assert_eq!(clip.model.kernels, kernels());
    alfa::detect::Detector::new(clip, identity.unwrap_or(&files.identity()), cache)
}
