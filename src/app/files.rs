//! MVTec-layout ground truth beside the images the user opens (finding the images
//! is `detect::inputs::scan`, shared with `alfa refs add`).

use std::path::{Path, PathBuf};

pub use crate::detect::inputs::{IMAGE_EXTENSIONS, scan};

/// MVTec AD's mask of a test image: `<class>/test/<defect>/<stem>.png` has
/// `<class>/ground_truth/<defect>/<stem>_mask.png`, if it exists.
pub fn ground_truth_mask(image: &Path) -> Option<PathBuf> {
    let defect_dir = image.parent()?;
    let test_dir = defect_dir.parent()?;
    if test_dir.file_name()? != "test" {
        return None;
    }
    let stem = image.file_stem()?.to_str()?;
    let mask = test_dir
        .parent()?
        .join("ground_truth")
        .join(defect_dir.file_name()?)
        .join(format!("{stem}_mask.png"));
    mask.is_file().then_some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_scanned_recursively_without_masks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bottle");
        for sub in ["test/good", "test/broken", "ground_truth/broken"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        for file in ["test/good/000.png", "test/good/001.JPG", "test/broken/000.png", "test/broken/notes.txt"] {
            std::fs::write(root.join(file), b"x").unwrap();
        }
        std::fs::write(root.join("ground_truth/broken/000_mask.png"), b"x").unwrap();
        let found = scan(&[root.clone()]);
        let names: Vec<_> = found.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["test/broken/000.png", "test/good/000.png", "test/good/001.JPG"]);
        assert_eq!(
            ground_truth_mask(&root.join("test/broken/000.png")),
            Some(root.join("ground_truth/broken/000_mask.png"))
        );
        assert_eq!(ground_truth_mask(&root.join("test/good/000.png")), None);
    }

    #[test]
    fn named_files_are_kept_whatever_their_extension() {
        let found = scan(&[PathBuf::from("/nowhere/report.txt")]);
        assert_eq!(found[0].name, "nowhere/report.txt");
    }
}
