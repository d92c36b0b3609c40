//! The Prompts page: the live editor of the class's prompt set, save, undo, and
//! "Generate more" through the LLM.

use egui::Ui;

use super::*;
use super::widgets::{NG_COLOR, WARN_COLOR};
use super::prompt_editor::Field;

impl AlfaApp {
    /// Saves the applied prompt set in the class's recipe (prompts.toml); from then on
    /// the class resolves to that file, also when the folder did not exist when the
    /// app started.
    pub fn save_prompts(&mut self) {
        let Some(editor) = &mut self.editor else { return };
        let file = self.recipes.prompts_file(&editor.applied.class.id);
        self.state.notice = Some(match editor.save(&file) {
            Ok(path) => format!("saved {}", path.display()),
            Err(e) => format!(
                "cannot save the prompts: {e} (is the recipes folder {} writable? Settings can choose another)",
                self.recipes.root.display()
            ),
        });
    }

    /// The prompt set the analysis uses now (with unsaved edits).
    pub fn prompts(&self) -> Option<&crate::prompts::PromptSet> {
        self.editor.as_ref().map(|e| &e.applied)
    }

    pub fn undo_prompts(&mut self) {
        if self.editor.as_mut().and_then(PromptEditor::undo).is_some() {
            self.analyse_all();
        }
    }

    /// Applies a prompt edit after the typing pause.
    pub(super) fn poll_editor(&mut self, ctx: &egui::Context) {
        let now = Instant::now();
        let Some(editor) = &mut self.editor else { return };
        if editor.poll(now).is_some() {
            self.analyse_all();
        } else if let Some(wait) = editor.pending(now) {
            ctx.request_repaint_after(wait);
        }
    }

    /// "Generate more…": asks the LLM for more prompts of the class on a helper thread;
    /// the answer becomes an undoable edit of the editor (not saved).
    pub fn generate_more(&mut self) {
        let Some(editor) = &self.editor else { return };
        let client = match LlmClient::new(self.state.settings.llm.clone()) {
            Ok(client) => client,
            Err(e) => return self.state.llm = Some(state::LlmStatus::Failed(e.to_string())),
        };
        self.next_llm_id += 1;
        let id = self.next_llm_id;
        let samples = self.state.settings.llm_samples.max(1);
        let class_name = editor.applied.class.name.clone();
        let model = self.model_args();
        let request = model.request(None);
        self.state.llm = Some(state::LlmStatus::Asking {
            id,
            endpoint: client.endpoint().to_owned(),
            done: 0,
            total: QueryKind::ALL.len() * samples,
        });
        let outbox = self.workers.outbox();
        std::thread::spawn(move || {
            // A panic (a bug) must still end the spinner with a message.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(Generated, String), String> {
                let tokenizer = ClipTokenizer::load(&request.resolve_tokenizer(), CLIP_CONTEXT).map_err(|e| e.to_string())?;
                let generated = generate::generate(&client, &tokenizer, &class_name, samples, &mut |event| {
                    if let GenerateEvent::Answered { done, total, .. } = event {
                        outbox.send(Message::LlmAnswered { id, done, total });
                    }
                })
                .map_err(|e| e.to_string())?;
                Ok((generated, generate::provenance(&client, samples, std::time::SystemTime::now())))
            }))
            .unwrap_or_else(|payload| Err(format!("the LLM request failed ({})", worker::panic_text(payload.as_ref()))));
            outbox.send(Message::Generated { id, outcome });
        });
    }

    /// Forgets the running request: its answer, when it comes, is dropped.
    pub fn cancel_generate(&mut self) {
        self.state.llm = None;
    }

    pub(super) fn prompt_editor(&mut self, ui: &mut Ui) {
        let Some(editor) = &mut self.editor else {
            ui.label("Name the object class in the toolbar.");
            return;
        };
        ui.heading(format!("Prompts of `{}`", editor.applied.class.id));
        match &editor.source {
            Some(path) => ui.label(format!("from {}", path.display())),
            None => ui.label("built in"),
        };
        if editor.generic_fallback {
            ui.colored_label(WARN_COLOR, "No set for this class: the generic set is used. Edit and save to make one.");
        }
        ui.label("One entry per line. `{c}` is the class name; bases need `{domain}` and `{state}`. Changes re-score after a short pause.");
        let (mut generate, mut cancel_generate, mut save) = (false, false, false);
        ui.horizontal(|ui| {
            if ui.add_enabled(editor.can_undo(), egui::Button::new("Undo")).clicked() {
                self.undo_requested = true;
            }
            save = ui
                .add_enabled(editor.unsaved, egui::Button::new("Save"))
                .on_hover_text("Writes prompts/<class>.toml (used from now on), keeping its comments")
                .clicked();
            let asking = matches!(self.state.llm, Some(LlmStatus::Asking { .. }));
            generate = ui
                .add_enabled(!asking, egui::Button::new("Generate more…"))
                .on_hover_text("Asks the LLM of the Settings page for more prompts of this class; added here, not saved")
                .clicked();
        });
        match &self.state.llm {
            Some(LlmStatus::Asking { endpoint, done, total, .. }) => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label(format!("asking {endpoint}… {done} of {total} answers"));
                    cancel_generate = ui.button("Cancel request").clicked();
                });
            }
            Some(LlmStatus::Added { normal, abnormal, descriptors }) => {
                ui.label(format!("LLM added {normal} normal, {abnormal} abnormal prompts and {descriptors} descriptors (not saved; Undo removes them)"));
            }
            Some(LlmStatus::Failed(error)) => {
                ui.colored_label(NG_COLOR, format!("LLM failed: {error}"));
            }
            None => {}
        }
        if let Some(error) = &editor.error {
            ui.colored_label(NG_COLOR, error);
        }
        let now = Instant::now();
        let mut edited = false;
        for (field, text) in Field::ALL.iter().zip(editor.texts.iter_mut()) {
            let lines = text.lines().filter(|l| !l.trim().is_empty()).count();
            let label = ui.strong(format!("{} ({lines})", field.label()));
            let rows = if matches!(field, Field::LlmNormal | Field::LlmAbnormal | Field::Descriptors) { 8 } else { 3 };
            let response = ui.add(
                egui::TextEdit::multiline(text)
                    .id_salt(field.label())
                    .desired_rows(rows)
                    .desired_width(f32::INFINITY),
            );
            let response = response.labelled_by(label.id);
            edited |= response.changed();
        }
        if edited {
            editor.edited(now);
        }
        if std::mem::take(&mut self.undo_requested) {
            self.undo_prompts();
        }
        if save {
            self.save_prompts();
        }
        if generate {
            self.generate_more();
        }
        if cancel_generate {
            self.cancel_generate();
        }
    }
}
