//! Dataset layouts: discovery, samples, labels, masks and errors, on tiny layouts each
//! test writes into a temporary directory.

use std::fs;
use std::path::{Path, PathBuf};

use alfa::eval::{Dataset, DatasetKind, EvalError, Mask};
use image::{GrayImage, Luma, RgbImage};

fn write_rgb(path: &Path) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(4, 3, image::Rgb([10, 20, 30]))
        .save(path)
        .unwrap();
}

/// A 4x3 0/255 mask with defect pixels at the given (x, y).
fn write_mask(path: &Path, defects: &[(u32, u32)]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut mask = GrayImage::new(4, 3);
    for &(x, y) in defects {
        mask.put_pixel(x, y, Luma([255]));
    }
    mask.save(path).unwrap();
}

/// MVTec AD: two classes (plus a stray file and a folder without `test/`).
fn mvtec(root: &Path) {
    for class in ["screw", "bottle"] {
        let c = root.join(class);
        write_rgb(&c.join("train/good/000.png"));
        write_rgb(&c.join("train/good/001.png"));
        write_rgb(&c.join("test/good/000.png"));
        write_rgb(&c.join("test/good/001.png"));
        write_rgb(&c.join("test/crack/000.png"));
        write_mask(&c.join("ground_truth/crack/000_mask.png"), &[(1, 1)]);
        write_rgb(&c.join("test/scratch/000.png"));
        write_mask(
            &c.join("ground_truth/scratch/000_mask.png"),
            &[(0, 0), (3, 2)],
        );
    }
    fs::write(root.join("license.txt"), "x").unwrap();
    fs::create_dir_all(root.join("docs")).unwrap();
}

fn names(paths: &[PathBuf], root: &Path) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn mvtec_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mvtec(root);
    assert_eq!(DatasetKind::detect(root).unwrap(), DatasetKind::Mvtec);
    let ds = Dataset::open(root).unwrap();
    assert_eq!(ds.classes(), ["bottle", "screw"]);

    let samples = ds.test_samples("screw").unwrap();
    let images: Vec<PathBuf> = samples.iter().map(|s| s.image.clone()).collect();
    assert_eq!(
        names(&images, root),
        [
            "screw/test/crack/000.png",
            "screw/test/good/000.png",
            "screw/test/good/001.png",
            "screw/test/scratch/000.png"
        ]
    );
    let labels: Vec<(bool, &str)> = samples
        .iter()
        .map(|s| (s.label, s.defect.as_str()))
        .collect();
    assert_eq!(
        labels,
        [
            (true, "crack"),
            (false, "good"),
            (false, "good"),
            (true, "scratch")
        ]
    );
    assert_eq!(
        samples[0].mask,
        Some(root.join("screw/ground_truth/crack/000_mask.png"))
    );
    assert_eq!(samples[1].mask, None);

    let mask = Mask::load(samples[3].mask.as_ref().unwrap()).unwrap();
    assert_eq!((mask.width, mask.height), (4, 3));
    let defects: Vec<usize> = (0..12).filter(|&i| mask.pixels[i]).collect();
    assert_eq!(defects, [0, 11]);

    assert_eq!(
        names(&ds.train_good("bottle").unwrap(), root),
        ["bottle/train/good/000.png", "bottle/train/good/001.png"]
    );
}

#[test]
fn mvtec_missing_mask_names_image_and_expected_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mvtec(root);
    fs::remove_file(root.join("screw/ground_truth/scratch/000_mask.png")).unwrap();
    let err = Dataset::open(root)
        .unwrap()
        .test_samples("screw")
        .unwrap_err();
    assert!(matches!(err, EvalError::MissingMask { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("screw/test/scratch/000.png"), "{message}");
    assert!(
        message.contains("screw/ground_truth/scratch/000_mask.png"),
        "{message}"
    );
}

/// A class without `ground_truth/` at all (photos sorted by defect, no masks drawn) has
/// image-level labels only; a class with some masks still needs all of them (above).
#[test]
fn mvtec_class_without_ground_truth_has_image_labels_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    mvtec(root);
    fs::remove_dir_all(root.join("screw/ground_truth")).unwrap();
    let ds = Dataset::open(root).unwrap();
    let samples = ds.test_samples("screw").unwrap();
    assert_eq!(
        samples.iter().map(|s| s.label).collect::<Vec<_>>(),
        [true, false, false, true]
    );
    assert!(samples.iter().all(|s| s.mask.is_none()));
    // The other class keeps its masks.
    let bottle = ds.test_samples("bottle").unwrap();
    assert_eq!(bottle[0].mask, Some(root.join("bottle/ground_truth/crack/000_mask.png")));
}

/// The folder layout's one class can be named (its prompt set follows the name); the
/// other layouts name their classes themselves.
#[test]
fn only_the_folder_layouts_class_can_be_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folder_ds");
    write_rgb(&root.join("normal/a.png"));
    write_rgb(&root.join("abnormal/b.png"));
    let mut ds = Dataset::open(&root).unwrap();
    assert_eq!(ds.classes(), ["folder_ds"]);
    ds.name_folder_class("bottle").unwrap();
    assert_eq!(ds.classes(), ["bottle"]);
    assert_eq!(ds.test_samples("bottle").unwrap().len(), 2);
    assert!(ds.test_samples("folder_ds").is_err());

    let mvtec_root = dir.path().join("mvtec");
    mvtec(&mvtec_root);
    let mut ds = Dataset::open(&mvtec_root).unwrap();
    assert!(matches!(ds.name_folder_class("bottle"), Err(EvalError::WrongLayout { .. })));
    assert_eq!(ds.classes(), ["bottle", "screw"]);
}

#[test]
fn unknown_class_lists_the_available_ones() {
    let dir = tempfile::tempdir().unwrap();
    mvtec(dir.path());
    let ds = Dataset::open(dir.path()).unwrap();
    let err = ds.test_samples("cable").unwrap_err();
    assert!(matches!(err, EvalError::UnknownClass { .. }));
    assert!(err.to_string().contains("`cable`"));
    assert!(err.to_string().contains("bottle, screw"), "{err}");
    assert!(ds.train_good("cable").is_err());
}

/// VisA as released, plus MVTec-like converted VisA masks named without `_mask`.
#[test]
fn visa_csv_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (object, n) in [("candle", "000"), ("candle", "001"), ("pcb1", "000")] {
        write_rgb(&root.join(format!("{object}/Data/Images/Normal/{n}.JPG")));
        write_rgb(&root.join(format!("{object}/Data/Images/Anomaly/{n}.JPG")));
        write_mask(
            &root.join(format!("{object}/Data/Masks/Anomaly/{n}.png")),
            &[(2, 1)],
        );
    }
    fs::create_dir_all(root.join("split_csv")).unwrap();
    // Windows line ends and a column order other than the documented one.
    let csv = "object,split,label,image,mask\r\n\
        pcb1,test,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png\r\n\
        candle,train,normal,candle/Data/Images/Normal/001.JPG,\r\n\
        candle,test,normal,candle/Data/Images/Normal/000.JPG,\r\n\
        candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,candle/Data/Masks/Anomaly/001.png\r\n\
        candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\r\n\
        pcb1,test,normal,pcb1/Data/Images/Normal/000.JPG,\r\n";
    fs::write(root.join("split_csv/1cls.csv"), csv).unwrap();

    assert_eq!(DatasetKind::detect(root).unwrap(), DatasetKind::Visa);
    let ds = Dataset::open(root).unwrap();
    assert_eq!(ds.classes(), ["candle", "pcb1"]);
    let samples = ds.test_samples("candle").unwrap();
    let found: Vec<(String, bool, &str, Option<PathBuf>)> = samples
        .iter()
        .map(|s| {
            let image = s
                .image
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (image, s.label, s.defect.as_str(), s.mask.clone())
        })
        .collect();
    assert_eq!(
        found,
        [
            (
                "candle/Data/Images/Anomaly/000.JPG".to_owned(),
                true,
                "anomaly",
                Some(root.join("candle/Data/Masks/Anomaly/000.png"))
            ),
            (
                "candle/Data/Images/Anomaly/001.JPG".to_owned(),
                true,
                "anomaly",
                Some(root.join("candle/Data/Masks/Anomaly/001.png"))
            ),
            (
                "candle/Data/Images/Normal/000.JPG".to_owned(),
                false,
                "good",
                None
            ),
        ]
    );
    assert_eq!(
        names(&ds.train_good("candle").unwrap(), root),
        ["candle/Data/Images/Normal/001.JPG"]
    );

    // A mask listed in the CSV but absent.
    fs::remove_file(root.join("pcb1/Data/Masks/Anomaly/000.png")).unwrap();
    let err = ds.test_samples("pcb1").unwrap_err();
    assert!(matches!(err, EvalError::MissingMask { .. }), "{err:?}");
    assert!(
        err.to_string().contains("pcb1/Data/Images/Anomaly/000.JPG"),
        "{err}"
    );
    assert!(
        err.to_string().contains("pcb1/Data/Masks/Anomaly/000.png"),
        "{err}"
    );

    // A label that is neither normal nor anomaly: the error names the file and line.
    fs::write(
        root.join("split_csv/1cls.csv"),
        "object,split,label,image,mask\ncandle,test,bad,x.JPG,\n",
    )
    .unwrap();
    let err = Dataset::open(root).unwrap_err();
    assert!(matches!(err, EvalError::Csv { line: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("1cls.csv"), "{err}");
}

#[test]
fn visa_converted_to_mvtec_layout_accepts_masks_without_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_rgb(&root.join("candle/train/good/0001.JPG"));
    write_rgb(&root.join("candle/test/good/0002.JPG"));
    write_rgb(&root.join("candle/test/bad/0003.JPG"));
    write_mask(&root.join("candle/ground_truth/bad/0003.png"), &[(0, 0)]);
    let ds = Dataset::open(root).unwrap();
    assert_eq!(ds.kind(), DatasetKind::Mvtec);
    let samples = ds.test_samples("candle").unwrap();
    assert_eq!(
        samples[0].mask,
        Some(root.join("candle/ground_truth/bad/0003.png"))
    );
    assert_eq!(
        names(&ds.train_good("candle").unwrap(), root),
        ["candle/train/good/0001.JPG"]
    );
}

#[test]
fn folder_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("widgets");
    write_rgb(&root.join("normal/b.png"));
    write_rgb(&root.join("normal/a.jpg"));
    write_rgb(&root.join("abnormal/x.png"));
    write_rgb(&root.join("abnormal/y.bmp"));
    fs::write(root.join("normal/notes.txt"), "not an image").unwrap();

    // Without masks/: image-level labels only.
    assert_eq!(DatasetKind::detect(&root).unwrap(), DatasetKind::Folder);
    let ds = Dataset::open(&root).unwrap();
    assert_eq!(ds.classes(), ["widgets"]);
    let samples = ds.test_samples("widgets").unwrap();
    let images: Vec<PathBuf> = samples.iter().map(|s| s.image.clone()).collect();
    assert_eq!(
        names(&images, &root),
        [
            "normal/a.jpg",
            "normal/b.png",
            "abnormal/x.png",
            "abnormal/y.bmp"
        ]
    );
    assert_eq!(
        samples.iter().map(|s| s.label).collect::<Vec<_>>(),
        [false, false, true, true]
    );
    assert!(samples.iter().all(|s| s.mask.is_none()));
    assert!(ds.train_good("widgets").unwrap().is_empty());

    // With masks/, named with and without `_mask`.
    write_mask(&root.join("masks/x_mask.png"), &[(1, 2)]);
    write_mask(&root.join("masks/y.png"), &[(2, 2)]);
    write_rgb(&root.join("train/r.png"));
    let ds = Dataset::open(&root).unwrap();
    let samples = ds.test_samples("widgets").unwrap();
    assert_eq!(samples[2].mask, Some(root.join("masks/x_mask.png")));
    assert_eq!(samples[3].mask, Some(root.join("masks/y.png")));
    assert_eq!(samples[0].defect, "good");
    assert_eq!(samples[2].defect, "abnormal");
    assert_eq!(
        names(&ds.train_good("widgets").unwrap(), &root),
        ["train/r.png"]
    );

    fs::remove_file(root.join("masks/y.png")).unwrap();
    let err = ds.test_samples("widgets").unwrap_err();
    assert!(err.to_string().contains("abnormal/y.bmp"), "{err}");
    assert!(err.to_string().contains("masks/y_mask.png"), "{err}");
}

#[test]
fn a_root_matching_no_layout_says_what_each_needs() {
    let dir = tempfile::tempdir().unwrap();
    write_rgb(&dir.path().join("normal/a.png"));
    let err = Dataset::open(dir.path()).unwrap_err();
    assert!(matches!(err, EvalError::NoLayout { .. }), "{err:?}");
    let message = err.to_string();
    for needed in [
        "visa",
        "1cls.csv",
        "folder",
        "abnormal/",
        "mvtec",
        "<class>/test/<defect>/",
    ] {
        assert!(
            message.contains(needed),
            "`{needed}` missing from: {message}"
        );
    }

    // An explicit layout that does not fit says what it lacks.
    let err = Dataset::open_as(dir.path(), DatasetKind::Visa).unwrap_err();
    assert!(matches!(err, EvalError::WrongLayout { .. }), "{err:?}");
    assert!(err.to_string().contains("1cls.csv"), "{err}");
    assert!(
        "MVTec"
            .parse::<DatasetKind>()
            .is_ok_and(|k| k == DatasetKind::Mvtec)
    );
    assert!("coco".parse::<DatasetKind>().is_err());
}

#[test]
fn masks_resize_by_nearest_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.png");
    // 4x3 with the right half defect (x = 2, 3).
    write_mask(&path, &[(2, 0), (3, 0), (2, 1), (3, 1), (2, 2), (3, 2)]);
    let same = Mask::load_resized(&path, 4, 3).unwrap();
    assert_eq!(same, Mask::load(&path).unwrap());
    let big = Mask::load_resized(&path, 8, 6).unwrap();
    assert_eq!((big.width, big.height), (8, 6));
    for y in 0..6 {
        let row: Vec<bool> = big.pixels[y * 8..(y + 1) * 8].to_vec();
        assert_eq!(
            row,
            [false, false, false, false, true, true, true, true],
            "row {y}"
        );
    }
    assert!(matches!(
        Mask::load(&dir.path().join("absent.png")),
        Err(EvalError::Image { .. })
    ));
}
