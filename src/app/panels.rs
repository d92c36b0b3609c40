//! The window's layout and its panels: toolbar, image list, viewer controls and
//! thresholds, references, the side pages' tabs (the pages are `why`,
//! `prompts_page` and `settings_page`), status bar and the help window. They read and
//! change `AppState` and send jobs; nothing here blocks.

use eframe::egui;
use egui::{RichText, Ui};

use crate::detect::colormap::Colormap;
use super::heatmap::PaneParams;
use super::path_choice::Purpose;
use super::state::{Filter, ModelStatus, Normalisation, SortKey, Threshold, Thresholds, Verdict, score_text};
use super::viewer::{self, PaneView, ViewerFrame};
use super::widgets::{METHODS, NG_COLOR, WARN_COLOR, method_label, verdict_badge};
use super::{AlfaApp, SideTab};
use crate::detect::MethodKind;
use crate::clip::Precision;

/// The keyboard shortcuts, shown in the help window.
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("Ctrl+O", "open images or a folder (type a path or browse)"),
    ("Up / Down, Left / Right", "previous / next image in the list"),
    ("Page Up / Page Down", "ten images back / forward"),
    ("Home / End", "first / last image"),
    ("Space", "heatmap overlay on / off"),
    ("+ / -", "zoom in / out"),
    ("F", "fit the image to the view"),
    ("1", "1:1 (one image pixel per screen pixel)"),
    ("Mouse wheel / drag", "zoom at the cursor / pan"),
    ("Ctrl+E", "export this image's overlay, map and mask, and the list's scores"),
    ("Ctrl+Shift+E", "export the run: every analysed image, scores, summary and report.html, as alfa detect --report"),
    ("Ctrl+Z", "undo the last prompt edit (outside text boxes)"),
    ("G", "mark the image on screen as a good reference (few-shot)"),
    ("Shift+drop", "dropped files become references (or drop them on References)"),
    ("F1 or ?", "this help"),
    ("Esc", "close this help"),
];

impl AlfaApp {
    pub(super) fn panels(&mut self, ui: &mut Ui) {
        egui::Panel::top("toolbar").show(ui, |ui| self.toolbar(ui));
        if !self.state.legacy.is_empty() {
            egui::Panel::top("legacy").show(ui, |ui| self.legacy_offer(ui));
        }
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        egui::Panel::left("images").default_size(250.0).show(ui, |ui| {
            let section = egui::Panel::bottom("references").resizable(true).default_size(190.0).show(ui, |ui| self.references(ui));
            self.references_rect = Some(section.response.rect);
            self.image_list(ui);
        });
        egui::Panel::right("side").default_size(420.0).show(ui, |ui| self.side(ui));
        egui::CentralPanel::default().show(ui, |ui| {
            self.model_problem(ui);
            self.viewer_controls(ui);
            ui.separator();
            let content = self.current_content();
            self.viewer_header(ui, content.as_ref());
            let (low, high) = self.state.selected.map_or((0.0, 1.0), |i| self.state.levels(i));
            let s = &self.state.settings;
            let params = PaneParams {
                image_rect_px: egui::Rect::NOTHING,
                low,
                high,
                threshold: self.state.region_threshold(),
                opacity: s.opacity,
                colormap: s.colormap,
                overlay: s.overlay,
                outline: s.outline,
                mask_outline: true,
            };
            let placeholder = if self.state.entries.is_empty() {
                "Open images or a folder (Ctrl+O, or drop them here)."
            } else if self.state.selected.is_some() {
                "Decoding the picture…"
            } else {
                "Select an image in the list."
            };
            let compare = self.compare_content(content.as_ref());
            let panes = match (&content, &compare) {
                (None, _) => Vec::new(),
                (Some(main), Some((other, caption, levels))) => {
                    let score = self.state.selected_analysis().map(|a| format!(" {:.3}", a.image_score)).unwrap_or_default();
                    vec![
                        PaneView { content: main, overlay: true, caption: format!("{}{score}", method_label(s.method)), levels: (low, high), outline: true },
                        PaneView { content: other, overlay: true, caption: caption.clone(), levels: *levels, outline: false },
                    ]
                }
                (Some(main), None) if s.side_by_side => vec![
                    PaneView { content: main, overlay: false, caption: "Original".into(), levels: (low, high), outline: false },
                    PaneView { content: main, overlay: true, caption: "Overlay".into(), levels: (low, high), outline: true },
                ],
                (Some(main), None) => vec![PaneView { content: main, overlay: s.overlay, caption: String::new(), levels: (low, high), outline: true }],
            };
            let frame = ViewerFrame { panes, placeholder, params, gpu: self.gpu };
            self.hover_pixel = viewer::show(ui, &mut self.view, frame);
        });
        let ctx = ui.ctx().clone();
        egui::Window::new("Keyboard shortcuts").open(&mut self.show_help).collapsible(false).show(&ctx, |ui| {
            egui::Grid::new("shortcuts").striped(true).show(ui, |ui| {
                for (keys, action) in SHORTCUTS {
                    ui.label(RichText::new(*keys).monospace());
                    ui.label(*action);
                    ui.end_row();
                }
            });
        });
    }

    /// The compare view's second pane: the other method's map over the same picture,
    /// its caption and its colour range (its own min and max: methods' maps differ).
    fn compare_content(
        &self,
        main: Option<&super::heatmap::HeatmapContent>,
    ) -> Option<(super::heatmap::HeatmapContent, String, (f32, f32))> {
        let kind = self.state.settings.compare.filter(|&k| k != self.state.settings.method)?;
        let main = main?;
        let entry = self.state.entries.get(self.state.selected?)?;
        let compared = entry.compare.as_ref().filter(|c| c.method == kind);
        let caption = match compared {
            Some(c) => format!("{} {:.3}", method_label(kind), c.image_score),
            None => format!("{}: computing…", method_label(kind)),
        };
        let map = compared.map(|c| c.map.clone()).filter(|m| [m.width as u32, m.height as u32] == main.size);
        let levels = compared.map_or((0.0, 1.0), |c| if c.map_range.1 > c.map_range.0 { c.map_range } else { (0.0, 1.0) });
        Some((super::heatmap::HeatmapContent { map, ..main.clone() }, caption, levels))
    }

    /// The image's name over the picture, the zoom, and the map value under the pointer.
    fn viewer_header(&self, ui: &mut Ui, content: Option<&super::heatmap::HeatmapContent>) {
        let Some(entry) = self.state.selected.and_then(|i| self.state.entries.get(i)) else { return };
        ui.horizontal(|ui| {
            ui.strong(&entry.name).on_hover_text(entry.path.display().to_string());
            let Some(content) = content else { return };
            if self.state.shown.as_ref().is_none_or(|s| s.id != entry.id) {
                ui.weak("(thumbnail, decoding the picture…)");
            }
            ui.separator();
            let percent = self.view.zoom * ui.ctx().pixels_per_point() * 100.0;
            ui.label(format!("zoom {percent:.0}%"));
            if let Some([x, y]) = self.hover_pixel.filter(|[x, y]| *x < content.size[0] && *y < content.size[1]) {
                ui.separator();
                let value = content.map.as_ref().map(|m| m.at(x as usize, y as usize));
                match value {
                    Some(v) => ui.label(format!("x {x}, y {y}: map {v:.3}")),
                    None => ui.label(format!("x {x}, y {y}")),
                };
            }
        });
    }

    /// Fixed buttons first and the changing progress last, so nothing a user reaches
    /// for moves when an analysis starts or ends.
    fn toolbar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            if ui.button("Open… (Ctrl+O)").on_hover_text("Images or folders: type a path or browse").clicked() {
                self.ask_path(Purpose::OpenImages);
            }
            if ui.button("Export… (Ctrl+E)").on_hover_text("Overlay PNG, map TIFF and mask PNG of this image, and the scores of the list").clicked() {
                self.ask_path(Purpose::ExportFolder);
            }
            let run = "Every analysed image as `alfa detect --report` writes it: map TIFF, overlay PNG and record per image, \
                       scores.csv, summary.json and report.html";
            if ui.button("Export run… (Ctrl+Shift+E)").on_hover_text(run).clicked() {
                self.ask_path(Purpose::ExportRun);
            }
            if ui.button("Help (F1)").clicked() {
                self.show_help = true;
            }
            ui.separator();
            let label = ui.label("Class:");
            let class = ui.add(egui::TextEdit::singleline(&mut self.class_input).desired_width(120.0)).labelled_by(label.id);
            if class.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                self.set_class(self.class_input.clone());
            }
            if ui.button("Apply class").clicked() {
                self.set_class(self.class_input.clone());
            }
            ui.label(RichText::new(self.state.mode_label()).strong())
                .on_hover_text("Few-shot when the class has good reference images (References, bottom left).");
            ui.separator();
            // One button in one place: Cancel while running, Analyse again after.
            let running = self.state.progress.running;
            if running {
                if ui.button("Cancel").on_hover_text("Stops after the current image").clicked() {
                    self.cancel();
                }
            } else if ui.add_enabled(!self.state.entries.is_empty(), egui::Button::new("Analyse again")).clicked() {
                self.analyse_all();
            }
            let progress = &self.state.progress;
            if running {
                let (done, total, text) = match progress.references {
                    Some((done, total)) => (done, total, format!("reference features {done} of {total}")),
                    None => (progress.done, progress.total, format!("analysed {} of {}", progress.done, progress.total)),
                };
                let fraction = done as f32 / total.max(1) as f32;
                ui.add(egui::ProgressBar::new(fraction).desired_width(180.0).text(text));
            }
            if let Some(task) = self.state.threshold_task.clone() {
                ui.separator();
                let (done, total, what) = match task.references {
                    Some((done, total)) => (done, total, "reference features"),
                    None => (task.done, task.total, "good images scored"),
                };
                ui.spinner();
                ui.label(format!("threshold: {what} {done} of {total}"));
                if ui.button("Cancel threshold").clicked() {
                    self.cancel_threshold();
                }
            }
        });
    }

    fn status_bar(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            match &self.state.model {
                Some(ModelStatus::Loading { model, file, done, total }) => {
                    ui.spinner();
                    if *total > 0 {
                        ui.label(format!("downloading {file} ({} of {} MB) for {model}", done >> 20, total >> 20));
                    } else {
                        ui.label(format!("loading {model}…"));
                    }
                }
                Some(ModelStatus::Ready { model, precision, .. }) => {
                    // A folder's last part is enough to recognise it; the hover has the rest.
                    let short = std::path::Path::new(model).file_name().map_or(model.clone(), |n| n.to_string_lossy().into_owned());
                    let precision = if *precision == Precision::F32 { String::new() } else { format!(" ({})", precision.name()) };
                    ui.label(format!("model: {short}{precision}")).on_hover_text(model);
                }
                Some(ModelStatus::Failed { model, .. }) => {
                    ui.colored_label(NG_COLOR, format!("model {model} failed to load"));
                }
                None => {}
            }
            ui.separator();
            let analysed = self.state.analysed();
            let stale = self.state.entries.iter().filter(|e| e.stale && e.analysis.is_some()).count();
            let ng = (0..self.state.entries.len())
                .filter(|&i| !self.state.entries[i].stale && self.state.verdict(i) == Some(Verdict::Ng))
                .count();
            let mut counts = format!("{} images, {analysed} analysed, {ng} NG", self.state.entries.len());
            if stale > 0 {
                let why = if self.state.progress.running { "being re-scored" } else { "not re-scored: Analyse again" };
                counts += &format!(", {stale} with old scores ({why})");
            }
            ui.label(counts);
            if let Some((encoded, seconds)) = self.state.last_encoding {
                ui.separator();
                ui.label(format!("prompts: {encoded} newly encoded")).on_hover_text(format!("in {seconds:.2} s"));
            }
            if let Some(error) = &self.state.progress.error {
                ui.separator();
                ui.colored_label(NG_COLOR, error);
            }
            if let Some(notice) = &self.state.notice {
                ui.separator();
                ui.label(notice);
            }
        });
    }

    /// Class files of the old layout (`./prompts`) that the recipes lack, and the offer
    /// to copy them.
    fn legacy_offer(&mut self, ui: &mut Ui) {
        let found: Vec<String> = self.state.legacy.iter().map(|c| c.describe()).collect();
        let mut migrate = false;
        let mut dismiss = false;
        ui.horizontal_wrapped(|ui| {
            ui.colored_label(
                WARN_COLOR,
                format!("{}/ has class files the recipes lack: {}. They are not used any more.", crate::recipe::legacy::LEGACY_DIR, found.join(", ")),
            );
            migrate = ui
                .button("Migrate")
                .on_hover_text(format!("Copies them into {} (the originals stay)", self.recipes().root.display()))
                .clicked();
            dismiss = ui.button("Not now").clicked();
        });
        if migrate {
            self.migrate_legacy();
        }
        if dismiss {
            self.dismiss_legacy();
        }
    }

    /// The error and what to do when the model cannot be loaded.
    fn model_problem(&mut self, ui: &mut Ui) {
        let Some(ModelStatus::Failed { model, error }) = &self.state.model else { return };
        let (model, error) = (model.clone(), error.clone());
        egui::Frame::group(ui.style()).fill(ui.visuals().extreme_bg_color).show(ui, |ui| {
            ui.colored_label(NG_COLOR, RichText::new(format!("The model `{model}` could not be loaded")).strong());
            // What to do first, where it is seen; the whole chain of causes below it.
            let mut lines = error.lines();
            ui.label(RichText::new(lines.next().unwrap_or_default()).strong());
            ui.horizontal(|ui| {
                if ui.button("Choose model folder…").clicked() {
                    self.ask_path(Purpose::ModelFolder);
                }
                if ui.button("Retry").clicked() {
                    self.load_model();
                }
                ui.label("(the Settings page also takes a weights file and a tokenizer.json)");
            });
            let rest: Vec<&str> = lines.collect();
            if !rest.is_empty() {
                egui::CollapsingHeader::new("Details").default_open(true).show(ui, |ui| {
                    egui::ScrollArea::vertical().max_height(160.0).show(ui, |ui| {
                        ui.label(RichText::new(rest.join("\n")).monospace());
                    });
                });
            }
        });
    }

    fn image_list(&mut self, ui: &mut Ui) {
        ui.heading("Images");
        ui.horizontal(|ui| {
            ui.label("Sort:");
            ui.selectable_value(&mut self.state.settings.sort, SortKey::Name, "name");
            ui.selectable_value(&mut self.state.settings.sort, SortKey::Score, "score");
        });
        ui.horizontal(|ui| {
            ui.label("Show:");
            ui.selectable_value(&mut self.state.settings.filter, Filter::All, "all");
            ui.selectable_value(&mut self.state.settings.filter, Filter::OnlyNg, "only NG");
            ui.selectable_value(&mut self.state.settings.filter, Filter::Failed, "unreadable");
        });
        ui.separator();
        let visible = self.state.visible();
        let threshold = self.state.image_threshold();
        let mut clicked = None;
        let row_height = 56.0;
        let mut area = egui::ScrollArea::vertical().auto_shrink([false, false]);
        // Only rows on screen are drawn, so a row the keyboard moved to far away cannot
        // scroll itself into view: the list is scrolled to centre it instead.
        if self.scroll_to_selected
            && let Some(position) = self.state.selected.and_then(|s| visible.iter().position(|&v| v == s))
        {
            let pitch = row_height + ui.spacing().item_spacing.y;
            let offset = (position as f32 + 0.5) * pitch - ui.available_height() / 2.0;
            area = area.vertical_scroll_offset(offset.max(0.0));
        }
        area.show_rows(ui, row_height, visible.len(), |ui, rows| {
            for &index in &visible[rows] {
                let entry = &self.state.entries[index];
                let selected = self.state.selected == Some(index);
                let verdict = self.state.verdict(index);
                let response = ui
                    .horizontal(|ui| {
                        ui.set_min_height(row_height - 4.0);
                        match &entry.thumbnail {
                            Some(t) => {
                                ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(48.0, 48.0)));
                            }
                            None => {
                                ui.allocate_exact_size(egui::vec2(48.0, 48.0), egui::Sense::hover());
                            }
                        }
                        ui.vertical(|ui| {
                            let name = ui.selectable_label(selected, &entry.name);
                            ui.horizontal(|ui| match (entry.score(), verdict, &entry.error) {
                                (_, _, Some(error)) => {
                                    ui.colored_label(NG_COLOR, "unreadable").on_hover_text(error);
                                }
                                // The coming result, as far as it is known (no verdict yet).
                                _ if entry.partial.is_some() && (entry.analysis.is_none() || entry.stale) => {
                                    let label = entry.partial.as_ref().map(|p| p.label()).unwrap_or_default();
                                    ui.label(RichText::new(label).italics()).on_hover_text(
                                        "The global score S_G, then the map of the window scales done so far; the final score and verdict replace it",
                                    );
                                }
                                (Some(score), Some(verdict), None) => {
                                    let text = score_text(score, threshold);
                                    if entry.stale {
                                        // An old score must not pass for a verdict.
                                        ui.label(RichText::new(format!("old {text}")).italics().strikethrough().weak())
                                            .on_hover_text("From earlier prompts or settings; re-scored when the analysis reaches it (Analyse again if it was cancelled)");
                                    } else {
                                        verdict_badge(ui, verdict);
                                        ui.label(text);
                                    }
                                }
                                _ => {
                                    ui.weak("waiting");
                                }
                            });
                            name
                        })
                        .inner
                    })
                    .inner;
                if response.clicked() {
                    clicked = Some(index);
                }
            }
        });
        self.scroll_to_selected = false;
        if let Some(index) = clicked {
            self.select(index);
        }
    }

    fn viewer_controls(&mut self, ui: &mut Ui) {
        let (low, high) = self.state.selected.map_or((0.0, 1.0), |i| self.state.levels(i));
        let region_threshold = self.state.region_threshold();
        let mut thresholds = self.state.thresholds();
        let before = thresholds.clone();
        ui.horizontal_wrapped(|ui| {
            // No step: a threshold from good images sits just above a score and must not be
            // rounded, neither by the slider nor by its text (see `threshold_text`).
            ui.add(
                egui::Slider::new(&mut thresholds.image.value, Thresholds::IMAGE_RANGE)
                    .text("OK/NG threshold")
                    .custom_formatter(|v, _| threshold_text(v)),
            )
            .on_hover_text("An image scoring at or above it is NG. Image scores are up to 1 in zero-shot mode and up to 2 in few-shot mode.");
            ui.add(
                egui::Slider::new(&mut thresholds.region.value, Thresholds::REGION_RANGE)
                    .text("Region threshold")
                    .custom_formatter(|v, _| threshold_text(v)),
            )
                .on_hover_text("Map values at or above it are outlined and make the exported mask (map values are 0 to 1).");
        });
        if thresholds.image.value != before.image.value {
            thresholds.image = Threshold::by_hand(thresholds.image.value);
        }
        if thresholds.region.value != before.region.value {
            thresholds.region = Threshold::by_hand(thresholds.region.value);
        }
        if thresholds != before {
            self.set_thresholds(thresholds);
        }
        let s = &mut self.state.settings;
        ui.horizontal_wrapped(|ui| {
            ui.checkbox(&mut s.overlay, "Overlay");
            ui.add(egui::Slider::new(&mut s.opacity, 0.0..=1.0).text("Opacity"));
            ui.checkbox(&mut s.outline, "Outline regions");
            ui.checkbox(&mut s.side_by_side, "Side by side");
            let label = ui.label("Compare with:");
            egui::ComboBox::from_id_salt("compare")
                .selected_text(s.compare.map_or("none", method_label))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut s.compare, None, "none");
                    for kind in METHODS.into_iter().filter(|&k| k != s.method) {
                        ui.selectable_value(&mut s.compare, Some(kind), method_label(kind));
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text("Shows a second method's map beside this one, zoom and pan in sync");
        });
        self.threshold_row(ui);
        let s = &mut self.state.settings;
        ui.horizontal_wrapped(|ui| {
            egui::ComboBox::from_label("Colours")
                .selected_text(s.colormap.label())
                .show_ui(ui, |ui| {
                    for map in Colormap::ALL {
                        ui.selectable_value(&mut s.colormap, map, map.label());
                    }
                });
            ui.label("Normalise:");
            ui.selectable_value(&mut s.normalisation, Normalisation::PerSet, "per set")
                .on_hover_text("Colours span the min and max over every analysed image, so good parts stay cold.");
            ui.selectable_value(&mut s.normalisation, Normalisation::PerImage, "per image");
            ui.selectable_value(&mut s.normalisation, Normalisation::Absolute, "0 to 1");
            ui.separator();
            if ui.button("Fit (F)").clicked() {
                self.view.fit();
            }
            if ui.button("1:1").clicked() {
                self.view.actual_size(ui.ctx().pixels_per_point());
            }
            viewer::legend(ui, s.colormap, low, high, region_threshold);
        });
    }

    /// Threshold from good images at a target false-positive rate, and what set it.
    fn threshold_row(&mut self, ui: &mut Ui) {
        let has_references = !self.state.references().is_empty();
        // Fitting scores good images with ALFA's leave-one-out bank; a baseline's
        // thresholds are set by hand (they are kept apart from ALFA's).
        let alfa = self.state.settings.method == MethodKind::Alfa;
        let mut from_references = false;
        let mut from_folder = false;
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Target FPR:");
            ui.add(
                egui::DragValue::new(&mut self.state.settings.target_fpr)
                    .range(0.0..=0.5)
                    .speed(0.001)
                    .max_decimals(3),
            )
            .labelled_by(label.id)
            .on_hover_text("Share of good images allowed to be NG, or to have a region outlined (0.01 = 1%)");
            from_references = ui
                .add_enabled(alfa && has_references, egui::Button::new("Both from good references"))
                .on_hover_text("Scores every reference against the others (leave-one-out) and sets both thresholds at the target FPR")
                .on_disabled_hover_text(if alfa {
                    "Add good reference images first (References, bottom left)"
                } else {
                    "Thresholds are fitted from good images for ALFA; set a baseline's by hand"
                })
                .clicked();
            from_folder = ui
                .add_enabled(alfa, egui::Button::new("Both from a folder of good images…"))
                .on_disabled_hover_text("Thresholds are fitted from good images for ALFA; set a baseline's by hand")
                .on_hover_text("Scores the images of a folder of good parts and sets both thresholds at the target FPR")
                .clicked();
        });
        // On a line of its own: it is long and must not wrap the buttons around.
        let origin = self.state.threshold_origin();
        let recipe = if self.state.recipe_applies() {
            format!("Kept in the class's recipe, {}", self.recipes().recipe_file(&self.state.settings.class).display())
        } else {
            "Not in the class's recipe yet: set or fit them with the model loaded to write it".into()
        };
        ui.add(egui::Label::new(RichText::new(&origin).small()).truncate()).on_hover_text(format!("{origin}\n{recipe}"));
        if let Some(warning) = self.state.recipe_warning() {
            ui.add(egui::Label::new(RichText::new(format!("warning: {warning}")).small().color(WARN_COLOR)).truncate())
                .on_hover_text(warning);
        }
        if from_references {
            self.threshold_from_references();
        }
        if from_folder {
            self.ask_path(Purpose::GoodFolder);
        }
    }

    /// The class's good reference images: thumbnails, remove buttons, add and mark.
    fn references(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.heading("References");
            ui.label(self.state.mode_label());
        });
        ui.label(RichText::new(format!("in {}", self.references_dir().display())).small())
            .on_hover_text("Copies of the images, shared with `alfa refs` and `alfa detect`; removing one deletes the copy only.");
        let mut add = false;
        let mut mark = false;
        ui.horizontal_wrapped(|ui| {
            add = ui
                .button("Add references…")
                .on_hover_text("Good images of this class: few-shot mode. You can also drop files here, or anywhere with Shift held.")
                .clicked();
            mark = ui
                .add_enabled(self.state.selected.is_some(), egui::Button::new("Mark as good reference (G)"))
                .on_hover_text("The image on screen becomes a reference")
                .clicked();
        });
        let mut remove = None;
        egui::ScrollArea::vertical().id_salt("references-list").auto_shrink([false, false]).show(ui, |ui| {
            if self.state.reference_views.is_empty() {
                ui.weak("None: zero-shot. Drop good images here.");
            }
            // One row per reference: every name readable in full, however many there are.
            for view in &self.state.reference_views {
                let name = view.path.file_name().map_or_else(|| view.path.display().to_string(), |n| n.to_string_lossy().into_owned());
                ui.horizontal(|ui| {
                    match &view.thumbnail {
                        Some(t) => {
                            ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(40.0, 40.0)))
                                .on_hover_text(view.path.display().to_string());
                        }
                        None => {
                            ui.allocate_exact_size(egui::vec2(40.0, 40.0), egui::Sense::hover());
                        }
                    }
                    ui.vertical(|ui| {
                        ui.add(egui::Label::new(&name).truncate()).on_hover_text(view.path.display().to_string());
                        ui.horizontal(|ui| {
                            if ui.small_button(format!("Remove {name}")).on_hover_text("No longer a reference; your original stays").clicked() {
                                remove = Some(view.path.clone());
                            }
                            if let Some(error) = &view.error {
                                ui.colored_label(NG_COLOR, "unreadable").on_hover_text(error);
                            }
                        });
                    });
                });
            }
        });
        if add {
            self.ask_path(Purpose::AddReferences);
        }
        if mark {
            self.mark_selected_as_reference();
        }
        if let Some(path) = remove {
            self.remove_reference(&path);
        }
    }

    fn side(&mut self, ui: &mut Ui) {
        ui.horizontal(|ui| {
            ui.selectable_value(&mut self.tab, SideTab::Why, "Why");
            ui.selectable_value(&mut self.tab, SideTab::Prompts, "Prompts");
            ui.selectable_value(&mut self.tab, SideTab::Settings, "Settings");
        });
        ui.separator();
        egui::ScrollArea::vertical().auto_shrink([false, false]).show(ui, |ui| match self.tab {
            SideTab::Why => self.why(ui),
            SideTab::Prompts => self.prompt_editor(ui),
            SideTab::Settings => self.settings_page(ui),
        });
    }

}

/// A threshold's text in its slider: the shortest decimal that reads back as the same
/// `f32`. The slider's text is parsed back when its field loses focus, so a rounded text
/// (0.1366 for 0.13661297) would turn a threshold fitted from good images into a
/// different one set by hand just by clicking the field.
fn threshold_text(value: f64) -> String {
    format!("{}", value as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_reads_back_from_its_text_unchanged() {
        // Thresholds fitted from good images sit one f32 step above a score.
        for score in [0.13661296_f32, 0.5, 0.999_999, 1e-7, 1.7320508] {
            let threshold = score.next_up();
            let text = threshold_text(f64::from(threshold));
            let read: f64 = text.parse().unwrap();
            assert_eq!(read as f32, threshold, "{text}");
        }
    }
}
