//! Few-shot references (the class's `refs/` folder) and thresholds fitted from good
//! images, started from the window and run on the engine thread.

use super::*;

impl AlfaApp {
    /// The class's reference folder, `<recipes>/<class>/refs/`: the one `alfa refs`
    /// edits and `alfa detect` reads, so references made here serve the CLI too.
    pub fn references_dir(&self) -> PathBuf {
        self.recipes.refs_dir(&self.state.settings.class)
    }

    /// Copies images (files or folders) into the class's references (on the loader
    /// thread); the analysis restarts when they are there.
    pub fn add_references(&mut self, paths: &[PathBuf]) {
        let found: Vec<PathBuf> = files::scan(paths).into_iter().map(|image| image.path).collect();
        if found.is_empty() {
            self.state.notice = Some("no images there".into());
            return;
        }
        self.workers.copy_references(self.references_dir(), found);
    }

    /// Deletes a reference's copy from the class's folder (the original stays).
    pub fn remove_reference(&mut self, path: &std::path::Path) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Err(e) = references::remove_references(&self.references_dir(), &[name]) {
            self.state.notice = Some(e.to_string());
        }
        self.refresh_reference_views();
        self.analyse_all();
    }

    /// "Mark as good reference": the image on screen becomes a reference.
    pub fn mark_selected_as_reference(&mut self) {
        if let Some(path) = self.state.selected.and_then(|i| self.state.entries.get(i)).map(|e| e.path.clone()) {
            self.add_references(&[path]);
        }
    }

    /// Reads the class's reference folder and makes the References section match it;
    /// new ones get thumbnails.
    pub(super) fn refresh_reference_views(&mut self) {
        self.state.reference_files = references::list_references(&self.references_dir()).unwrap_or_else(|e| {
            self.state.notice = Some(e.to_string());
            Vec::new()
        });
        let mut old = std::mem::take(&mut self.state.reference_views);
        let mut wanted = Vec::new();
        for path in self.state.references().to_vec() {
            match old.iter().position(|v| v.path == path) {
                Some(i) => self.state.reference_views.push(old.swap_remove(i)),
                None => {
                    self.next_id += 1;
                    wanted.push((self.next_id, path.clone()));
                    self.state.reference_views.push(state::ReferenceView { id: self.next_id, path, thumbnail: None, error: None });
                }
            }
        }
        if !wanted.is_empty() {
            self.workers.thumbnails(wanted);
        }
    }

    /// Sets the threshold from the references' scores, each scored against the others.
    pub fn threshold_from_references(&mut self) {
        let references = self.state.references().to_vec();
        if references.is_empty() {
            self.state.notice = Some("add good reference images first".into());
            return;
        }
        self.start_threshold(references, "the references".into(), vec![crate::recipe::REFS_DIR.into()]);
    }

    /// Sets the threshold from the good images in `folder`.
    pub fn threshold_from_folder(&mut self, folder: &std::path::Path) {
        let good: Vec<PathBuf> = files::scan(&[folder.to_owned()]).into_iter().map(|f| f.path).collect();
        if good.is_empty() {
            self.state.notice = Some(format!("no images in {}", folder.display()));
            return;
        }
        let name = folder.file_name().map_or_else(|| folder.display().to_string(), |n| n.to_string_lossy().into_owned());
        let recorded = std::path::absolute(folder).unwrap_or_else(|_| folder.to_owned()).display().to_string();
        self.start_threshold(good, format!("folder {name}"), vec![recorded]);
    }

    /// `recorded`: where the good images came from, as the recipe records it.
    pub(super) fn start_threshold(&mut self, good: Vec<PathBuf>, source: String, recorded: Vec<String>) {
        let Some(editor) = &self.editor else { return };
        if self.state.settings.method != crate::detect::MethodKind::Alfa {
            self.state.notice = Some("thresholds are fitted from good images for ALFA; set a baseline's by hand".into());
            return;
        }
        let total = good.len();
        let id = self.workers.threshold(worker::ThresholdJob {
            id: 0,
            prompts: editor.applied.clone(),
            settings: self.state.settings.detect.clone(),
            references: self.state.references().to_vec(),
            good,
            fpr: self.state.settings.target_fpr,
            source,
        });
        self.state.threshold_task = Some(state::ThresholdTask { id, done: 0, total, references: None, good: recorded });
    }

    pub fn cancel_threshold(&mut self) {
        self.workers.cancel_threshold();
        self.state.threshold_task = None;
    }
}
