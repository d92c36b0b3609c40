//! Dataset layouts for evaluation: MVTec AD (and the MVTec-like layout VisA conversion
//! tools write), VisA in its original layout with `split_csv/1cls.csv`, and a generic
//! folder layout. Every listing is sorted, so runs are reproducible.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::imageops::FilterType;

use super::EvalError;
use super::csv::Table;

/// File extensions (any case) listed as images.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"];

/// The defect name of normal test images in every layout (MVTec's folder name).
pub const GOOD: &str = "good";

/// Which on-disk layout a dataset uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    /// `<root>/<class>/test/<defect>/*`, masks `<root>/<class>/ground_truth/<defect>/<stem>_mask.png`
    /// (or `<stem>.png`, as VisA-to-MVTec conversions write), references `<root>/<class>/train/good/*`.
    /// A class without `ground_truth/` has image-level labels only.
    Mvtec,
    /// VisA's original layout: `<root>/split_csv/1cls.csv` with columns
    /// `object,split,label,image,mask`, paths relative to the root, labels `normal`/`anomaly`.
    Visa,
    /// One class: `<root>/normal/*`, `<root>/abnormal/*`, optional `<root>/masks/` (masks named
    /// like the image stem, with or without `_mask`), optional `<root>/train/*` references.
    Folder,
}

impl DatasetKind {
    /// Every kind, in the order [`DatasetKind::detect`] tries them.
    pub const ALL: [DatasetKind; 3] = [DatasetKind::Visa, DatasetKind::Folder, DatasetKind::Mvtec];

    /// The layout `root` holds, trying VisA's CSV, then the folder layout, then MVTec.
    pub fn detect(root: &Path) -> Result<Self, EvalError> {
        if !root.is_dir() {
            return Err(EvalError::Io {
                path: root.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
            });
        }
        let mut tried = String::new();
        for kind in Self::ALL {
            match kind.check(root) {
                Ok(()) => return Ok(kind),
                Err(reason) => tried.push_str(&format!("  {kind}: {reason}\n")),
            }
        }
        Err(EvalError::NoLayout {
            root: root.to_owned(),
            tried: tried.trim_end().to_owned(),
        })
    }

    /// `Ok` if `root` has what this layout needs, else what it lacks.
    fn check(self, root: &Path) -> Result<(), String> {
        match self {
            DatasetKind::Visa => {
                let csv = visa_csv(root);
                if csv.is_file() {
                    Ok(())
                } else {
                    Err(format!("needs {}", csv.display()))
                }
            }
            DatasetKind::Folder => {
                let missing: Vec<String> = [FOLDER_NORMAL, FOLDER_ABNORMAL]
                    .iter()
                    .filter(|d| !root.join(d).is_dir())
                    .map(|d| format!("{d}/"))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "needs the folders normal/ and abnormal/ (optional masks/, train/); missing {}",
                        missing.join(", ")
                    ))
                }
            }
            DatasetKind::Mvtec => {
                if mvtec_classes(root).is_ok_and(|c| !c.is_empty()) {
                    Ok(())
                } else {
                    Err("needs <class>/test/<defect>/ image folders (masks in <class>/ground_truth/<defect>/)".into())
                }
            }
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DatasetKind::Mvtec => "mvtec",
            DatasetKind::Visa => "visa",
            DatasetKind::Folder => "folder",
        })
    }
}

impl FromStr for DatasetKind {
    type Err = String;

    /// `mvtec`, `visa` or `folder` (as [`fmt::Display`] writes them).
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown dataset layout `{s}`; expected mvtec, visa or folder"))
    }
}

/// One test image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub image: PathBuf,
    /// Ground-truth mask. `None` for normal images, and for anomalous ones only in a
    /// class without masks (an MVTec class without `ground_truth/`, a folder dataset
    /// without `masks/`): then the class has image-level labels only.
    pub mask: Option<PathBuf>,
    /// `true` = anomalous.
    pub label: bool,
    /// Defect type: the MVTec folder name, [`GOOD`] for normal images, `anomaly` for VisA's
    /// anomalous images and `abnormal` for the folder layout's.
    pub defect: String,
}

/// An evaluation dataset on disk.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    kind: DatasetKind,
    classes: Vec<String>,
    /// VisA's parsed `1cls.csv`; empty for the other layouts.
    visa_rows: Vec<VisaRow>,
}

impl Dataset {
    /// Opens `root`, detecting its layout ([`DatasetKind::detect`]).
    pub fn open(root: &Path) -> Result<Self, EvalError> {
        Self::open_as(root, DatasetKind::detect(root)?)
    }

    /// Opens `root` as the given layout; an error says what the layout needs and lacks.
    pub fn open_as(root: &Path, kind: DatasetKind) -> Result<Self, EvalError> {
        kind.check(root).map_err(|reason| EvalError::WrongLayout {
            root: root.to_owned(),
            kind: kind.to_string(),
            reason,
        })?;
        let mut visa_rows = Vec::new();
        let classes = match kind {
            DatasetKind::Mvtec => mvtec_classes(root)?,
            DatasetKind::Visa => {
                visa_rows = read_visa_csv(root)?;
                let objects: BTreeSet<&str> = visa_rows.iter().map(|r| r.object.as_str()).collect();
                objects.into_iter().map(str::to_owned).collect()
            }
            DatasetKind::Folder => vec![folder_class(root)],
        };
        Ok(Self {
            root: root.to_owned(),
            kind,
            classes,
            visa_rows,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn kind(&self) -> DatasetKind {
        self.kind
    }

    /// Class names, sorted. A folder dataset has one class, named after its root folder
    /// unless [`Dataset::name_folder_class`] named it.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Names the folder layout's one class. The class name picks the prompt set, and a
    /// folder's own name (`folder_ds`) rarely is a class; the other layouts name their
    /// classes themselves, so for them this is an error.
    pub fn name_folder_class(&mut self, class: &str) -> Result<(), EvalError> {
        if self.kind != DatasetKind::Folder {
            return Err(EvalError::WrongLayout {
                root: self.root.clone(),
                kind: DatasetKind::Folder.to_string(),
                reason: format!("only the folder layout's class can be named; this is a {} dataset", self.kind),
            });
        }
        self.classes = vec![class.to_owned()];
        Ok(())
    }

    /// The test images of `class`, sorted (by defect folder then file name for MVTec and
    /// folder layouts, by CSV image path for VisA). Anomalous images must have a mask,
    /// except in a class that has no masks at all (an MVTec class without `ground_truth/`,
    /// a folder dataset without `masks/`), which is evaluated on image labels only.
    pub fn test_samples(&self, class: &str) -> Result<Vec<Sample>, EvalError> {
        self.check_class(class)?;
        let samples = match self.kind {
            DatasetKind::Mvtec => {
                let class_dir = self.root.join(class);
                let has_masks = class_dir.join("ground_truth").is_dir();
                let mut samples = Vec::new();
                for defect_dir in subdirectories(&class_dir.join("test"))? {
                    let defect = file_name(&defect_dir);
                    let label = defect != GOOD;
                    let mask_dir = class_dir.join("ground_truth").join(&defect);
                    for image in image_files(&defect_dir)? {
                        let mask = (label && has_masks)
                            .then(|| find_mask(&mask_dir, &image))
                            .transpose()?;
                        samples.push(Sample {
                            image,
                            mask,
                            label,
                            defect: defect.clone(),
                        });
                    }
                }
                samples
            }
            DatasetKind::Visa => {
                let mut samples = self
                    .visa_rows(class, "test")
                    .map(|row| self.visa_sample(row))
                    .collect::<Result<Vec<_>, _>>()?;
                samples.sort_by(|a, b| a.image.cmp(&b.image));
                samples
            }
            DatasetKind::Folder => {
                let mask_dir = self.root.join(FOLDER_MASKS);
                let has_masks = mask_dir.is_dir();
                let mut samples = Vec::new();
                for (dir, label) in [(FOLDER_NORMAL, false), (FOLDER_ABNORMAL, true)] {
                    for image in image_files(&self.root.join(dir))? {
                        let mask = (label && has_masks)
                            .then(|| find_mask(&mask_dir, &image))
                            .transpose()?;
                        let defect = if label { FOLDER_ABNORMAL } else { GOOD };
                        samples.push(Sample {
                            image,
                            mask,
                            label,
                            defect: defect.to_owned(),
                        });
                    }
                }
                samples
            }
        };
        if samples.is_empty() {
            return Err(EvalError::NoTestImages {
                class: class.to_owned(),
            });
        }
        Ok(samples)
    }

    /// Normal training images of `class` (few-shot references), sorted; may be empty.
    /// MVTec: `<class>/train/good/`; VisA: `split=train` rows labelled `normal`;
    /// folder: `<root>/train/` if present.
    pub fn train_good(&self, class: &str) -> Result<Vec<PathBuf>, EvalError> {
        self.check_class(class)?;
        let optional_images = |dir: PathBuf| {
            if dir.is_dir() {
                image_files(&dir)
            } else {
                Ok(Vec::new())
            }
        };
        match self.kind {
            DatasetKind::Mvtec => optional_images(self.root.join(class).join("train").join(GOOD)),
            DatasetKind::Folder => optional_images(self.root.join(FOLDER_TRAIN)),
            DatasetKind::Visa => {
                let mut images: Vec<PathBuf> = self
                    .visa_rows(class, "train")
                    .filter(|row| !row.anomalous)
                    .map(|row| self.root.join(&row.image))
                    .collect();
                images.sort();
                Ok(images)
            }
        }
    }

    fn check_class(&self, class: &str) -> Result<(), EvalError> {
        if self.classes.iter().any(|c| c == class) {
            Ok(())
        } else {
            Err(EvalError::UnknownClass {
                class: class.to_owned(),
                available: self.classes.clone(),
            })
        }
    }

    fn visa_rows<'a>(
        &'a self,
        class: &'a str,
        split: &'a str,
    ) -> impl Iterator<Item = &'a VisaRow> {
        self.visa_rows
            .iter()
            .filter(move |r| r.object == class && r.split == split)
    }

    fn visa_sample(&self, row: &VisaRow) -> Result<Sample, EvalError> {
        let image = self.root.join(&row.image);
        let mask = if row.anomalous {
            let expected = self.root.join(&row.mask);
            if row.mask.is_empty() || !expected.is_file() {
                return Err(EvalError::MissingMask {
                    image,
                    expected: if row.mask.is_empty() {
                        format!(
                            "a path in the mask column of {}",
                            visa_csv(&self.root).display()
                        )
                    } else {
                        expected.display().to_string()
                    },
                });
            }
            Some(expected)
        } else {
            None
        };
        Ok(Sample {
            image,
            mask,
            label: row.anomalous,
            defect: if row.anomalous { "anomaly" } else { GOOD }.to_owned(),
        })
    }
}

const FOLDER_NORMAL: &str = "normal";
const FOLDER_ABNORMAL: &str = "abnormal";
const FOLDER_MASKS: &str = "masks";
const FOLDER_TRAIN: &str = "train";

fn folder_class(root: &Path) -> String {
    root.canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "folder".to_owned())
}

fn visa_csv(root: &Path) -> PathBuf {
    root.join("split_csv").join("1cls.csv")
}

#[derive(Debug, Clone)]
struct VisaRow {
    object: String,
    split: String,
    anomalous: bool,
    image: String,
    mask: String,
}

fn read_visa_csv(root: &Path) -> Result<Vec<VisaRow>, EvalError> {
    let path = visa_csv(root);
    let csv_error = |line: usize, reason: String| EvalError::Csv {
        path: path.clone(),
        line,
        reason,
    };
    let table = Table::read(&path)?;
    let column = |name: &str| {
        table.column(name).ok_or_else(|| {
            csv_error(
                1,
                format!("no `{name}` column (need object,split,label,image,mask)"),
            )
        })
    };
    let [object, split, label, image, mask] =
        ["object", "split", "label", "image", "mask"].map(column);
    let (object, split, label, image, mask) = (object?, split?, label?, image?, mask?);
    let mut rows = Vec::new();
    for (line, record) in &table.rows {
        let line = *line;
        let field = |i: usize| record.get(i).cloned().unwrap_or_default();
        let anomalous = match field(label).as_str() {
            "anomaly" => true,
            "normal" => false,
            other => {
                return Err(csv_error(
                    line,
                    format!("label `{other}` is neither `normal` nor `anomaly`"),
                ));
            }
        };
        rows.push(VisaRow {
            object: field(object),
            split: field(split),
            anomalous,
            image: field(image),
            mask: field(mask),
        });
    }
    Ok(rows)
}

/// Classes of an MVTec-like root: its sub-folders that have a `test/` folder.
fn mvtec_classes(root: &Path) -> Result<Vec<String>, EvalError> {
    Ok(subdirectories(root)?
        .into_iter()
        .filter(|d| d.join("test").is_dir())
        .map(|d| file_name(&d))
        .collect())
}

/// The mask of `image` in `mask_dir`: `<stem>_mask.<ext>` or `<stem>.<ext>`, any image
/// extension; the error names the image and the MVTec-style path it expected.
fn find_mask(mask_dir: &Path, image: &Path) -> Result<PathBuf, EvalError> {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let candidates = [format!("{stem}_mask"), stem.clone()];
    candidates
        .iter()
        .flat_map(|base| {
            IMAGE_EXTENSIONS
                .iter()
                .map(move |ext| mask_dir.join(format!("{base}.{ext}")))
        })
        .find(|p| p.is_file())
        .ok_or_else(|| EvalError::MissingMask {
            image: image.to_owned(),
            expected: format!(
                "{} (or {stem}.png)",
                mask_dir.join(format!("{stem}_mask.png")).display()
            ),
        })
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let io_error = |source| EvalError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths = std::fs::read_dir(dir)
        .map_err(io_error)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_error)?;
    paths.sort();
    Ok(paths)
}

fn subdirectories(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect())
}

/// Image files directly in `dir`, sorted.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    Ok(read_dir_sorted(dir)?
        .into_iter()
        .filter(|p| p.is_file() && is_image(p))
        .collect())
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A ground-truth mask as a boolean grid (`true` = defect), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<bool>,
}

impl Mask {
    /// Reads a mask image: any pixel whose grey level is above 0 is defect (ground-truth
    /// masks are 0/255 PNGs; 16-bit and colour masks work too).
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let grey = open_image(path)?.into_luma16();
        Ok(Self {
            width: grey.width() as usize,
            height: grey.height() as usize,
            pixels: grey.pixels().map(|p| p.0[0] > 0).collect(),
        })
    }

    /// Reads a mask at the anomaly map's size: a mask of another size is resized with
    /// nearest-neighbour sampling (the labels stay 0/1; thin defects may thin out when
    /// shrinking, as in anomalib's mask resizing).
    pub fn load_resized(path: &Path, width: usize, height: usize) -> Result<Self, EvalError> {
        let mask = Self::load(path)?;
        if (mask.width, mask.height) == (width, height) {
            return Ok(mask);
        }
        let grey = image::GrayImage::from_vec(
            mask.width as u32,
            mask.height as u32,
            mask.pixels.iter().map(|&d| u8::from(d)).collect(),
        )
        .expect("the buffer holds width x height pixels by construction");
        let resized =
            image::imageops::resize(&grey, width as u32, height as u32, FilterType::Nearest);
        Ok(Self {
            width,
            height,
            pixels: resized.pixels().map(|p| p.0[0] > 0).collect(),
        })
    }

    /// An all-normal mask (for the normal images, which have no mask file).
    pub fn empty(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![false; width * height],
        }
    }
}

/// [`crate::clip::open_image`] with its error as an [`EvalError`].
pub(crate) fn open_image(path: &Path) -> Result<image::DynamicImage, EvalError> {
    crate::clip::open_image(path).map_err(|e| EvalError::Image {
        path: path.to_owned(),
        reason: match e {
            crate::clip::ClipError::Image { reason, .. } => reason,
            other => other.to_string(),
        },
    })
}
