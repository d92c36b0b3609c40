//! The inspection window. The full inspector (worker thread, heatmap shader, prompt
//! editing) is being built; this window already starts from the command line.

use anyhow::Result;

use crate::cli::GuiArgs;

pub fn run(args: GuiArgs) -> Result<()> {
    let options = eframe::NativeOptions {
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("alfa")
            .with_inner_size([1280.0, 800.0]),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "alfa",
        options,
        Box::new(move |_cc| Ok(Box::new(AlfaApp { args }))),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}

struct AlfaApp {
    args: GuiArgs,
}

impl eframe::App for AlfaApp {
    fn ui(&mut self, ui: &mut eframe::egui::Ui, _frame: &mut eframe::Frame) {
        eframe::egui::CentralPanel::default().show(ui, |ui| {
            ui.heading("alfa");
            ui.label(format!(
                "Model: {}",
                self.args.model.model.as_deref().unwrap_or(crate::clip::DEFAULT_MODEL)
            ));
            if let Some(class) = &self.args.class {
                ui.label(format!("Class: {class}"));
            }
            for path in &self.args.paths {
                ui.label(path.display().to_string());
            }
        });
    }
}
