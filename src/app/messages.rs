//! What the worker threads report, applied to the state: results, progress, the
//! model, file dialogs' choices.

use super::*;

impl AlfaApp {
    pub(super) fn handle_messages(&mut self, ctx: &egui::Context) {
        while let Ok(message) = self.workers.messages.try_recv() {
            self.handle(ctx, message);
        }
    }

    pub(super) fn handle(&mut self, ctx: &egui::Context, message: Message) {
        let state = &mut self.state;
        match message {
            Message::ModelLoading { model } => {
                state.model = Some(ModelStatus::Loading { model, file: String::new(), done: 0, total: 0 });
            }
            Message::Download { file: f, done: d, total: t } => {
                if let Some(ModelStatus::Loading { file, done, total, .. }) = &mut state.model {
                    (*file, *done, *total) = (f, d, t);
                }
            }
            Message::ModelReady { name, precision, grid, stamp } => {
                state.model = Some(ModelStatus::Ready { model: name, precision, grid });
                if let Some(recipe) = state.model_loaded(stamp) {
                    self.recipe_to_write = Some(recipe);
                }
                // Scales typed or remembered for another model may not fit this one.
                if let Err(e) = state.settings.detect.validate(grid) {
                    let mut scales: Vec<usize> = DetectSettings::default().scales.into_iter().filter(|&s| s <= grid).collect();
                    if scales.is_empty() {
                        scales = vec![1];
                    }
                    state.notice = Some(format!("{e}: window scales set to {} for this model", scales_text(&scales)));
                    state.settings.detect.scales = scales;
                    self.scales_input = scales_text(&self.state.settings.detect.scales);
                    self.scales_error = None;
                    self.analyse_all();
                }
            }
            Message::ModelFailed { model, error } => state.model = Some(ModelStatus::Failed { model, error }),
            Message::PromptsEncoded { generation, encoded, seconds } => {
                if generation == state.progress.generation {
                    state.last_encoding = Some((encoded, seconds));
                }
            }
            Message::Partial { generation, id, partial } => {
                if generation != state.progress.generation {
                    return;
                }
                let Some(index) = state.index_of(id) else { return };
                let entry = &mut state.entries[index];
                let refines_map = matches!(partial, crate::detect::Partial::Scale { .. });
                entry.partial = Some(state::PartialAnalysis::with(entry.partial.take(), partial));
                if refines_map && state.selected == Some(index) {
                    self.content = None;
                }
            }
            Message::Analysed { generation, id, outcome } => {
                if generation != state.progress.generation {
                    return;
                }
                state.progress.done += 1;
                let Some(index) = state.index_of(id) else { return };
                let entry = &mut state.entries[index];
                entry.stale = false;
                entry.partial = None;
                match outcome {
                    Ok(analysis) => {
                        entry.analysis = Some(analysis);
                        entry.error = None;
                    }
                    Err(e) => {
                        entry.analysis = None;
                        entry.error = Some(e);
                    }
                }
                if state.selected == Some(index) {
                    self.content = None;
                }
            }
            Message::Compared { id, item, outcome } => {
                if self.compare_asked.is_none_or(|(asked, _)| asked != id) {
                    return;
                }
                let Some(index) = state.index_of(item) else { return };
                match outcome {
                    Ok(analysis) => state.entries[index].compare = Some(analysis),
                    Err(e) => {
                        state.notice = Some(format!("compare: {e}"));
                        // Asked once: a failure is not asked again for this image.
                        return;
                    }
                }
                self.compare_asked = None;
            }
            Message::AnalysisDone { generation, error } => {
                if generation == state.progress.generation {
                    state.progress.running = false;
                    state.progress.error = error;
                }
            }
            Message::References { task, done, total } => match task {
                worker::Task::Analysis(generation) if generation == state.progress.generation => {
                    state.progress.references = Some((done, total));
                }
                worker::Task::Threshold(id) => {
                    if let Some(t) = state.threshold_task.as_mut().filter(|t| t.id == id) {
                        t.references = Some((done, total));
                    }
                }
                worker::Task::Analysis(_) | worker::Task::Compare(_) => {}
            },
            Message::ReferencesReady { task, used, skipped } => {
                match task {
                    worker::Task::Analysis(generation) if generation == state.progress.generation => {
                        state.progress.references = None;
                    }
                    worker::Task::Threshold(id) => {
                        if let Some(t) = state.threshold_task.as_mut().filter(|t| t.id == id) {
                            t.references = None;
                        }
                    }
                    worker::Task::Analysis(_) | worker::Task::Compare(_) => {}
                }
                for (path, reason) in &skipped {
                    if let Some(view) = state.reference_views.iter_mut().find(|v| &v.path == path) {
                        view.error = Some(reason.clone());
                    }
                }
                if !skipped.is_empty() {
                    state.notice = Some(format!("{} reference image(s) could not be read; {used} used", skipped.len()));
                }
            }
            Message::ThresholdScored { id, done, total } => {
                if let Some(t) = state.threshold_task.as_mut().filter(|t| t.id == id) {
                    (t.done, t.total) = (done, total);
                }
            }
            Message::ThresholdDone { id, outcome } => {
                let Some(task) = state.threshold_task.take_if(|t| t.id == id) else { return };
                match outcome {
                    Ok(fit) => {
                        let n = fit.scores.len();
                        let record = |value| crate::recipe::ThresholdRecord::from_good_images(value, fit.fpr, task.good.clone(), n);
                        let thresholds = state::Thresholds {
                            image: state::Threshold::of(record(fit.image)),
                            region: state::Threshold::of(record(fit.region)),
                        };
                        let left_out = fit.skipped.first().map(|(_, reason)| {
                            format!("; {} unreadable image(s) left out: {reason}", fit.skipped.len())
                        });
                        let warnings: String = fit.warnings.iter().map(|w| format!("; warning: {w}")).collect();
                        state.threshold_fit = Some(fit);
                        self.set_thresholds(thresholds);
                        let state = &mut self.state;
                        let saved = match &self.recipe_to_write {
                            Some(_) => format!(" (in {})", self.recipes.recipe_file(&state.settings.class).display()),
                            None => String::new(),
                        };
                        state.notice = Some(state.threshold_origin() + &saved + &left_out.unwrap_or_default() + &warnings);
                    }
                    Err(e) => state.notice = Some(format!("no threshold from good images: {e}")),
                }
            }
            Message::LlmAnswered { id, done: d, total: t } => {
                if let Some(state::LlmStatus::Asking { id: asking, done, total, .. }) = &mut state.llm
                    && *asking == id
                {
                    (*done, *total) = (d, t);
                }
            }
            Message::Generated { id, outcome } => {
                if !matches!(state.llm, Some(state::LlmStatus::Asking { id: asking, .. }) if asking == id) {
                    return;
                }
                match (outcome, &mut self.editor) {
                    (Ok((generated, source)), Some(editor)) => {
                        let (_, [normal, abnormal, descriptors]) = editor.add_generated(&generated, &source);
                        self.state.llm = Some(state::LlmStatus::Added { normal, abnormal, descriptors });
                        self.analyse_all();
                    }
                    (Ok(_), None) => self.state.llm = None,
                    (Err(e), _) => self.state.llm = Some(state::LlmStatus::Failed(e)),
                }
            }
            Message::ReferencesCopied { outcome } => match outcome {
                Ok(copied) => {
                    let refused = copied.refused.first().map(|(path, reason)| {
                        let more = copied.refused.len() - 1;
                        let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
                        format!("not added, cannot be read: {} ({reason}){more}", path.display())
                    });
                    state.notice = match (copied.added.len(), refused) {
                        (0, None) => Some("no new reference images there".into()),
                        (_, refused) => refused,
                    };
                    if !copied.added.is_empty() {
                        self.refresh_reference_views();
                        self.analyse_all();
                    }
                }
                Err(e) => state.notice = Some(e),
            },
            Message::Crop { key, outcome } => {
                if let Some((shown_key, texture)) = self.nearest_crop.as_mut().filter(|(k, _)| *k == key) {
                    match outcome {
                        Ok(image) => *texture = Some(ctx.load_texture(shown_key.clone(), image, egui::TextureOptions::LINEAR)),
                        Err(e) => state.notice = Some(format!("cannot show the reference window: {e}")),
                    }
                }
            }
            Message::Thumbnail { id, outcome } => {
                if let Some(view) = state.reference_views.iter_mut().find(|v| v.id == id) {
                    match outcome {
                        Ok(thumbnail) => {
                            let texture = ctx.load_texture(format!("reference-{id}"), thumbnail.color, egui::TextureOptions::LINEAR);
                            view.thumbnail = Some(texture);
                        }
                        Err(e) => view.error = Some(e),
                    }
                    return;
                }
                let Some(index) = state.index_of(id) else { return };
                match outcome {
                    Ok(thumbnail) => {
                        let texture = ctx.load_texture(format!("thumbnail-{id}"), thumbnail.color, egui::TextureOptions::LINEAR);
                        let entry = &mut state.entries[index];
                        entry.thumbnail = Some(texture);
                        entry.preview = Some((thumbnail.pixels, thumbnail.size));
                        if state.selected == Some(index) && state.shown.as_ref().is_none_or(|s| s.id != id) {
                            self.content = None;
                        }
                    }
                    Err(e) => state.entries[index].error = Some(e),
                }
            }
            Message::Picture { id, outcome } => {
                let Some(index) = state.index_of(id) else { return };
                match outcome {
                    Ok(picture) => {
                        let shown = Shown { id, picture };
                        if state.selected == Some(index) {
                            state.shown = Some(shown.clone());
                            self.content = None;
                        }
                        state.keep_decoded(shown);
                    }
                    Err(e) => state.entries[index].error = Some(e),
                }
            }
            Message::Picked(pick) => {
                self.path_prompt = None;
                self.picked(pick);
            }
            Message::DialogFailed(purpose) => {
                self.browse.dialog_failed();
                if self.path_prompt.is_none() {
                    self.path_prompt = Some(PathPrompt::new(purpose));
                }
                self.state.notice = Some("the system file dialog did not open: type the path instead".into());
            }
            Message::Notice(text) => state.notice = Some(text),
        }
    }

    pub(super) fn picked(&mut self, pick: worker::Pick) {
        match pick {
            worker::Pick::Images(paths) => self.open(&paths),
            worker::Pick::ModelFolder(folder) => {
                self.state.settings.model = folder.display().to_string();
                self.load_model();
            }
            worker::Pick::References(paths) => self.add_references(&paths),
            worker::Pick::GoodFolder(folder) => self.threshold_from_folder(&folder),
            worker::Pick::ExportFolder(dir) => self.export_to(dir),
            worker::Pick::ExportRun(dir) => self.export_run_to(dir),
        }
    }
}
