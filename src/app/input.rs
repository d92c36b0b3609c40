//! Keyboard shortcuts and dropped files.

use super::*;

impl AlfaApp {
    pub(super) fn shortcuts(&mut self, ctx: &egui::Context) {
        let ctrl = |key| KeyboardShortcut::new(Modifiers::COMMAND, key);
        if ctx.input_mut(|i| i.consume_shortcut(&ctrl(Key::O))) {
            self.ask_path(Purpose::OpenImages);
        }
        // Ctrl+Shift+E first: Ctrl+E's check ignores Shift.
        if ctx.input_mut(|i| i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND | Modifiers::SHIFT, Key::E))) {
            self.ask_path(Purpose::ExportRun);
        }
        if ctx.input_mut(|i| i.consume_shortcut(&ctrl(Key::E))) {
            self.ask_path(Purpose::ExportFolder);
        }
        if ctx.input_mut(|i| i.consume_key(Modifiers::NONE, Key::F1)) {
            self.show_help = !self.show_help;
        }
        // Plain keys belong to a text box while one is focused.
        if ctx.memory(|m| m.focused().is_some()) {
            return;
        }
        if ctx.input_mut(|i| i.consume_shortcut(&ctrl(Key::Z))) {
            self.undo_prompts();
        }
        let pressed = |key| ctx.input_mut(|i| i.consume_key(Modifiers::NONE, key));
        // Every press counts, also several in one frame (a key held down, or typed
        // faster than frames are drawn).
        let count = |key| ctx.input_mut(|i| i.count_and_consume_key(Modifiers::NONE, key));
        let forward = count(Key::ArrowDown) + count(Key::ArrowRight) + PAGE * count(Key::PageDown);
        let back = count(Key::ArrowUp) + count(Key::ArrowLeft) + PAGE * count(Key::PageUp);
        let step = if pressed(Key::Home) {
            Some(SelectionStep::First)
        } else if pressed(Key::End) {
            Some(SelectionStep::Last)
        } else if forward > back {
            Some(SelectionStep::Next(forward - back))
        } else if back > forward {
            Some(SelectionStep::Previous(back - forward))
        } else {
            None
        };
        if let Some(step) = step
            && let Some(index) = self.state.step_selection(step)
        {
            self.select(index);
            self.scroll_to_selected = true;
        }
        if pressed(Key::Space) {
            self.state.settings.overlay = !self.state.settings.overlay;
        }
        if pressed(Key::Plus) || pressed(Key::Equals) {
            self.view.zoom_in();
        }
        if pressed(Key::Minus) {
            self.view.zoom_out();
        }
        if pressed(Key::F) {
            self.view.fit();
        }
        if pressed(Key::Num1) {
            self.view.actual_size(ctx.pixels_per_point());
        }
        if ctx.input(|i| i.events.iter().any(|e| matches!(e, egui::Event::Text(t) if t == "?"))) {
            self.show_help = !self.show_help;
        }
        // Esc closes the help; otherwise it is left for the window that is open (the
        // path window's Cancel).
        if self.show_help && pressed(Key::Escape) {
            self.show_help = false;
        }
        if pressed(Key::G) {
            self.mark_selected_as_reference();
        }
    }

    /// Files dropped on the References section, or with Shift held, become references;
    /// elsewhere they replace the image list.
    pub(super) fn dropped_files(&mut self, ctx: &egui::Context) {
        let (dropped, pointer, shift): (Vec<PathBuf>, _, _) = ctx.input(|i| {
            let paths = i.raw.dropped_files.iter().map(|f| f.path().to_owned()).collect();
            (paths, i.pointer.latest_pos(), i.modifiers.shift)
        });
        if dropped.is_empty() {
            return;
        }
        let on_references = pointer.zip(self.references_rect).is_some_and(|(p, r)| r.contains(p));
        if shift || on_references {
            self.add_references(&dropped);
        } else {
            self.open(&dropped);
        }
    }
}

/// Images PageUp / PageDown move.
pub(super) const PAGE: usize = 10;
