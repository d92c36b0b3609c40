//! What a path is chosen for (in the path window or the system file dialog), how a
//! typed path is checked for it, and the choice as it reaches the app. Apart from
//! `dialogs`, which asks, and `worker`, whose messages carry the choice, so that
//! each of the two imports it and neither imports the other for it.

use std::path::{Path, PathBuf};

/// A file dialog's choice.
pub enum Pick {
    Images(Vec<PathBuf>),
    ModelFolder(PathBuf),
    References(Vec<PathBuf>),
    GoodFolder(PathBuf),
    ExportFolder(PathBuf),
    ExportRun(PathBuf),
}

/// What the chosen path is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Images or folders of images to inspect.
    OpenImages,
    /// Good images (or folders) to copy into the class's references.
    AddReferences,
    /// A folder of good images to set the thresholds from.
    GoodFolder,
    /// A model folder (open_clip_config.json, weights, tokenizer.json).
    ModelFolder,
    /// The folder exports are written to (created if missing).
    ExportFolder,
    /// The folder "Export run" writes the list's run into (created if missing).
    ExportRun,
}

impl Purpose {
    pub fn title(self) -> &'static str {
        match self {
            Purpose::OpenImages => "Open images or a folder",
            Purpose::AddReferences => "Add good reference images",
            Purpose::GoodFolder => "Folder of good images",
            Purpose::ModelFolder => "Model folder",
            Purpose::ExportFolder => "Export to folder",
            Purpose::ExportRun => "Export the run to folder",
        }
    }

    pub(super) fn hint(self) -> &'static str {
        match self {
            Purpose::OpenImages | Purpose::AddReferences => "files or folders, one per line",
            Purpose::GoodFolder | Purpose::ModelFolder => "a folder",
            Purpose::ExportFolder | Purpose::ExportRun => "a folder (created if it does not exist)",
        }
    }

    pub(super) fn many(self) -> bool {
        matches!(self, Purpose::OpenImages | Purpose::AddReferences)
    }

    /// The typed text as the paths to use, or why not.
    pub fn parse(self, text: &str) -> Result<Vec<PathBuf>, String> {
        let paths: Vec<PathBuf> = text.lines().map(clean_path).filter(|p| !p.as_os_str().is_empty()).collect();
        if paths.is_empty() {
            return Err("type or paste a path".into());
        }
        if !self.many() && paths.len() > 1 {
            return Err("one folder only".into());
        }
        for path in &paths {
            match self {
                Purpose::ExportFolder | Purpose::ExportRun => {
                    if path.exists() && !path.is_dir() {
                        return Err(format!("{} is a file, not a folder", path.display()));
                    }
                }
                Purpose::GoodFolder | Purpose::ModelFolder if !path.is_dir() => {
                    return Err(format!("no folder {}", path.display()));
                }
                _ if !path.exists() => return Err(format!("no file or folder {}", path.display())),
                _ => {}
            }
        }
        Ok(paths)
    }

    /// The message that hands the chosen paths to the app.
    pub(super) fn pick(self, mut paths: Vec<PathBuf>) -> Option<Pick> {
        let first = paths.first()?.clone();
        Some(match self {
            Purpose::OpenImages => Pick::Images(std::mem::take(&mut paths)),
            Purpose::AddReferences => Pick::References(std::mem::take(&mut paths)),
            Purpose::GoodFolder => Pick::GoodFolder(first),
            Purpose::ModelFolder => Pick::ModelFolder(first),
            Purpose::ExportFolder => Pick::ExportFolder(first),
            Purpose::ExportRun => Pick::ExportRun(first),
        })
    }
}

/// A typed path as the file system wants it: no surrounding quotes or blanks (paths
/// pasted from a file manager often have them), `~` for the home folder.
fn clean_path(line: &str) -> PathBuf {
    let line = line.trim().trim_matches(['"', '\'']).trim();
    let line = line.strip_prefix("file://").unwrap_or(line);
    match (line.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_paths_are_cleaned_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.png");
        std::fs::write(&file, b"x").unwrap();
        let quoted = format!("  '{}'  \n\n\"{}\"", file.display(), dir.path().display());
        assert_eq!(Purpose::OpenImages.parse(&quoted).unwrap(), [file.clone(), dir.path().to_owned()]);
        assert_eq!(Purpose::OpenImages.parse(&format!("file://{}", file.display())).unwrap(), [file.clone()]);
        let missing = dir.path().join("missing");
        assert!(Purpose::OpenImages.parse(&missing.display().to_string()).unwrap_err().contains("no file or folder"));
        assert!(Purpose::GoodFolder.parse(&file.display().to_string()).unwrap_err().contains("no folder"));
        assert!(Purpose::ExportFolder.parse(&file.display().to_string()).unwrap_err().contains("is a file"));
        // An export folder that does not exist yet is made.
        assert_eq!(Purpose::ExportFolder.parse(&missing.display().to_string()).unwrap(), [missing]);
        assert!(Purpose::ModelFolder.parse("   ").unwrap_err().contains("type or paste"));
        let two = format!("{}\n{}", dir.path().display(), dir.path().display());
        assert!(Purpose::GoodFolder.parse(&two).unwrap_err().contains("one folder"));
    }
}
