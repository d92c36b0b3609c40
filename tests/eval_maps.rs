//! Scoring float32 TIFF maps in the MVTec AD evaluation layout, on a case computed by hand.

use std::fs;
use std::path::Path;

use alfa::eval::{Dataset, EvalError, score_class_maps};
use image::{GrayImage, Luma, RgbImage};

fn write_rgb(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::new(2, 2).save(path).unwrap();
}

fn write_map(path: &Path, values: [f32; 4]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = fs::File::create(path).unwrap();
    tiff::encoder::TiffEncoder::new(file)
        .unwrap()
        .write_image::<tiff::encoder::colortype::Gray32Float>(2, 2, &values)
        .unwrap();
}

/// One class, 2x2 maps. good/000 [.1 .2 .3 .4], good/001 [.5 .1 .1 .1],
/// crack/000 [.9 .2 .1 .45] whose defect is the diagonal (0,0)-(1,1): one 8-connected
/// region of two pixels. Its mask is 4x4 (2x2 blocks), resized by nearest to 2x2.
fn layout(data: &Path, maps: &Path) {
    write_rgb(&data.join("pill/test/good/000.png"));
    write_rgb(&data.join("pill/test/good/001.png"));
    write_rgb(&data.join("pill/test/crack/000.png"));
    let mut mask = GrayImage::new(4, 4);
    for (x, y) in [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (2, 2),
        (3, 2),
        (2, 3),
        (3, 3),
    ] {
        mask.put_pixel(x, y, Luma([255]));
    }
    fs::create_dir_all(data.join("pill/ground_truth/crack")).unwrap();
    mask.save(data.join("pill/ground_truth/crack/000_mask.png"))
        .unwrap();
    write_map(&maps.join("pill/test/good/000.tiff"), [0.1, 0.2, 0.3, 0.4]);
    write_map(&maps.join("pill/test/good/001.tiff"), [0.5, 0.1, 0.1, 0.1]);
    write_map(
        &maps.join("pill/test/crack/000.tiff"),
        [0.9, 0.2, 0.1, 0.45],
    );
}

#[test]
fn tiff_maps_give_hand_computed_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (data, maps) = (dir.path().join("data"), dir.path().join("maps"));
    layout(&data, &maps);
    let dataset = Dataset::open(&data).unwrap();
    let m = score_class_maps(&dataset, "pill", &maps).unwrap();
    assert_eq!((m.class.as_str(), m.images), ("pill", 3));

    // Image scores = map maxima: good .4, .5; crack .9 ranks first.
    assert_eq!(
        (m.image.auroc, m.image.aupr, m.image.f1_max),
        (1.0, 1.0, 1.0)
    );
    assert_eq!(m.image.f1_threshold, 0.9);

    let pixel = m.pixel.expect("every anomalous image has a mask");
    // Defect scores .9 and .45 against 10 normal ones: .9 beats all, .45 all but .5.
    assert!((pixel.auroc - 19.0 / 20.0).abs() < 1e-12, "{pixel:?}");
    // Threshold .45: TP 2, FP 1 (the .5), FN 0 -> F1 = 4 / 5.
    assert!((pixel.f1_max - 0.8).abs() < 1e-12, "{pixel:?}");
    assert_eq!(pixel.f1_threshold, 0.45);
    // PRO points (fpr, pro): (0, .5) (.1, .5) (.1, 1) (.2, 1) (.3, 1):
    // area .05 + .1 + .1 = .25, over 0.3.
    assert!((pixel.pro - 0.25 / 0.3).abs() < 1e-12, "{pixel:?}");
}

#[test]
fn scores_csv_overrides_the_map_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let (data, maps) = (dir.path().join("data"), dir.path().join("maps"));
    layout(&data, &maps);
    // Crack drops to .45, between the good images' .5 and .4 (path without extension).
    fs::write(
        maps.join("pill/scores.csv"),
        "path,score\ntest/crack/000,0.45\n",
    )
    .unwrap();
    let dataset = Dataset::open(&data).unwrap();
    let m = score_class_maps(&dataset, "pill", &maps).unwrap();
    assert_eq!(m.image.auroc, 0.5);
    assert_eq!(m.image.aupr, 0.5);
    assert!((m.image.f1_max - 2.0 / 3.0).abs() < 1e-12, "{:?}", m.image);

    // A root-level CSV, paths with the class and extension.
    fs::remove_file(maps.join("pill/scores.csv")).unwrap();
    fs::write(
        maps.join("scores.csv"),
        "path,score\npill/test/good/001.tiff,0.95\n",
    )
    .unwrap();
    let m = score_class_maps(&dataset, "pill", &maps).unwrap();
    assert_eq!(m.image.auroc, 0.5);

    fs::write(
        maps.join("scores.csv"),
        "path,score\npill/test/good/001.tiff,high\n",
    )
    .unwrap();
    let err = score_class_maps(&dataset, "pill", &maps).unwrap_err();
    assert!(matches!(err, EvalError::Csv { line: 2, .. }), "{err:?}");
}

#[test]
fn a_missing_map_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (data, maps) = (dir.path().join("data"), dir.path().join("maps"));
    layout(&data, &maps);
    fs::remove_file(maps.join("pill/test/good/001.tiff")).unwrap();
    let dataset = Dataset::open(&data).unwrap();
    let err = score_class_maps(&dataset, "pill", &maps).unwrap_err();
    assert!(err.to_string().contains("pill/test/good/001.tiff"), "{err}");
}
