//! TIFF bytes -> `alfa::detect::export::read_map_tiff` (the reader of `alfa eval --maps`),
//! then the map scored as `score_class_maps` does: `evaluate_class` with a normal sample
//! (no mask) and an anomalous one whose mask is resized to the map.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use alfa::detect::export::read_map_tiff;
use alfa::eval::dataset::Sample;
use alfa::eval::maps::evaluate_class;
use libfuzzer_sys::fuzz_target;

struct Files {
    _dir: tempfile::TempDir,
    map: PathBuf,
    samples: Vec<Sample>,
}

fn files() -> &'static Files {
    static FILES: OnceLock<Files> = OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let mask = dir.path().join("mask.png");
        image::GrayImage::from_fn(3, 2, |x, y| image::Luma([if (x, y) == (1, 0) { 255 } else { 0 }]))
            .save(&mask)
            .expect("writes the mask");
        let sample = |label: bool, mask: Option<PathBuf>| Sample {
            image: dir.path().join("image.png"),
            mask,
            label,
            defect: if label { "crack" } else { "good" }.into(),
        };
        let samples = vec![sample(false, None), sample(true, Some(mask))];
        Files {
            map: dir.path().join("map.tiff"),
            samples,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let files = files();
    std::fs::write(&files.map, data).expect("writes the map");
    let Ok(map) = read_map_tiff(&files.map) else {
        return;
    };
    assert_eq!(map.values.len(), map.width * map.height);
    // Any outcome but a panic: non-finite values and degenerate maps are errors.
    let _ = evaluate_class("fuzz", &files.samples, |_| Ok((map.max(), map.clone())));
});
