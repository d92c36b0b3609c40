//! Paths shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

pub mod llm_server;

use std::cell::Cell;
use std::path::{Path, PathBuf};

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

/// A textured `side` x `side` part; `defect` puts a bright `defect_side` square with its
/// top-left corner there; `phase` shifts the texture so that images differ.
pub fn textured_part(side: u32, defect_side: u32, defect: Option<(u32, u32)>, phase: u32) -> image::RgbImage {
    image::RgbImage::from_fn(side, side, |x, y| {
        if let Some((dx, dy)) = defect
            && (dx..dx + defect_side).contains(&x)
            && (dy..dy + defect_side).contains(&y)
        {
            return image::Rgb([250, 240, 30]);
        }
        let v = if ((x + phase) / 4 + y / 4) % 2 == 0 { 70 } else { 150 };
        image::Rgb([v, v / 2 + 40, 200 - v / 2])
    })
}

/// Saves `image` at `path`, making its folders.
pub fn save_png(image: &image::RgbImage, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image.save(path).unwrap();
}

/// Every file under `dir`, relative, with its bytes.
pub fn file_tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.strip_prefix(dir).unwrap().to_owned(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}
