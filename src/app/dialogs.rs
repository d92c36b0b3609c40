//! Choosing files and folders. Every choice opens a small window where a path can be
//! typed or pasted, with "Browse…" for the system file dialog: on a minimal Linux
//! desktop or over remote X there is often no xdg-desktop-portal (nor zenity), and
//! the system dialog then never appears, so typing a path must always work.

use eframe::egui;

use std::time::{Duration, Instant};

use super::files;
use super::path_choice::{Pick, Purpose};
use super::worker::{Message, Outbox};
use super::AlfaApp;

/// The open path window.
pub struct PathPrompt {
    pub purpose: Purpose,
    pub text: String,
    pub error: Option<String>,
    /// Focus the text box on the first frame.
    focus: bool,
}

impl PathPrompt {
    pub fn new(purpose: Purpose) -> Self {
        Self { purpose, text: String::new(), error: None, focus: true }
    }
}

/// What the path window asks of the app this frame.
pub enum PromptAction {
    None,
    Close,
    /// The typed paths, checked.
    Chosen(Pick),
    /// Open the system dialog (files or a folder).
    Browse { folder: bool },
}

/// Draws the path window; Enter chooses, Esc closes.
pub fn path_prompt(ctx: &egui::Context, prompt: &mut PathPrompt, browse: &BrowseState) -> PromptAction {
    let mut action = PromptAction::None;
    let mut open = true;
    egui::Window::new(prompt.purpose.title())
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .default_width(520.0)
        .anchor(egui::Align2::CENTER_TOP, egui::vec2(0.0, 80.0))
        .show(ctx, |ui| {
            let label = ui.label(format!("Path ({}):", prompt.purpose.hint()));
            let rows = if prompt.purpose.many() { 3 } else { 1 };
            let edit = ui.add(
                egui::TextEdit::multiline(&mut prompt.text)
                    .desired_rows(rows)
                    .desired_width(f32::INFINITY)
                    .hint_text("/path/to/…"),
            );
            let edit = edit.labelled_by(label.id);
            if std::mem::take(&mut prompt.focus) {
                edit.request_focus();
            }
            if edit.changed() {
                prompt.error = None;
            }
            // Enter chooses; Shift+Enter starts another line where several paths fit.
            let enter = edit.has_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter) && !i.modifiers.shift);
            if enter && prompt.text.ends_with('\n') {
                prompt.text.pop();
            }
            if let Some(error) = &prompt.error {
                ui.colored_label(egui::Color32::from_rgb(220, 60, 50), error);
            }
            if let Some(note) = browse.note() {
                ui.label(egui::RichText::new(note).small());
            }
            ui.horizontal(|ui| {
                let choose = ui.button("OK (Enter)").clicked();
                if choose || enter {
                    match prompt.purpose.parse(&prompt.text) {
                        Ok(paths) => {
                            if let Some(pick) = prompt.purpose.pick(paths) {
                                action = PromptAction::Chosen(pick);
                            }
                        }
                        Err(e) => prompt.error = Some(e),
                    }
                }
                if ui.button("Cancel (Esc)").clicked() || ui.input(|i| i.key_pressed(egui::Key::Escape)) {
                    action = PromptAction::Close;
                }
                ui.separator();
                let available = browse.available();
                let folders_only = !prompt.purpose.many();
                if !folders_only {
                    let files = ui
                        .add_enabled(available, egui::Button::new("Browse files…"))
                        .on_disabled_hover_text(NO_DIALOG);
                    if files.clicked() {
                        action = PromptAction::Browse { folder: false };
                    }
                }
                let folder = ui
                    .add_enabled(available, egui::Button::new("Browse folder…"))
                    .on_disabled_hover_text(NO_DIALOG);
                if folder.clicked() {
                    action = PromptAction::Browse { folder: true };
                }
            });
        });
    if !open {
        action = PromptAction::Close;
    }
    action
}

const NO_DIALOG: &str = "No system file dialog here (it needs xdg-desktop-portal or zenity): type the path";

/// A system dialog that returns nothing this soon did not open: the user had no
/// time to cancel it.
const DIALOG_FAILED_WITHIN: Duration = Duration::from_millis(400);

/// Whether the system file dialog can be offered, and what happened last time.
pub struct BrowseState {
    available: bool,
    failed: bool,
}

impl BrowseState {
    pub fn detect() -> Self {
        Self { available: system_dialog_possible(), failed: false }
    }

    pub fn available(&self) -> bool {
        self.available && !self.failed
    }

    fn note(&self) -> Option<&'static str> {
        (!self.available()).then_some(NO_DIALOG)
    }

    /// The system dialog came back empty at once: it does not work here.
    pub fn dialog_failed(&mut self) {
        self.failed = true;
    }
}

/// rfd's dialogs on Linux talk to xdg-desktop-portal over the session bus and fall
/// back to zenity; without either they return nothing, silently.
fn system_dialog_possible() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let on_path = |program: &str| {
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
    };
    std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some() || on_path("zenity")
}

/// Runs the system dialog on its own thread (the window keeps drawing); its choice
/// comes back as `Message::Picked`, or `Message::DialogFailed` when it returned
/// nothing before a person could have cancelled it.
pub fn browse(outbox: Outbox, purpose: Purpose, folder: bool) {
    std::thread::spawn(move || {
        let started = Instant::now();
        let dialog = rfd::FileDialog::new().set_title(purpose.title());
        let paths = if folder {
            dialog.pick_folder().map(|f| vec![f])
        } else {
            dialog.add_filter("images", files::IMAGE_EXTENSIONS).pick_files()
        };
        match paths.and_then(|paths| purpose.pick(paths)) {
            Some(pick) => outbox.send(Message::Picked(pick)),
            None if started.elapsed() < DIALOG_FAILED_WITHIN => outbox.send(Message::DialogFailed(purpose)),
            None => {}
        }
    });
}

impl AlfaApp {
    /// Opens the path window for `purpose` (typing a path, or the system dialog).
    pub fn ask_path(&mut self, purpose: Purpose) {
        self.path_prompt = Some(PathPrompt::new(purpose));
    }

    /// The path window, when open.
    pub(super) fn dialogs(&mut self, ctx: &egui::Context) {
        if let Some(prompt) = &mut self.path_prompt {
            match path_prompt(ctx, prompt, &self.browse) {
                PromptAction::None => {}
                PromptAction::Close => self.path_prompt = None,
                PromptAction::Chosen(pick) => {
                    self.path_prompt = None;
                    self.picked(pick);
                }
                PromptAction::Browse { folder } => browse(self.workers.outbox(), prompt.purpose, folder),
            }
        }
    }
}
