//! The image viewer: zoom and pan shared by both panes (original and overlay side by
//! side stay in sync), the heatmap drawn by the shader, and the colour legend.

use eframe::egui;

use egui::{Color32, Pos2, Rect, Sense, Vec2};

use crate::detect::colormap::Colormap;
use super::heatmap::{HeatmapCallback, HeatmapContent, PaneParams};

/// Zoom factor of one `+`/`-` press.
const ZOOM_STEP: f32 = 1.25;

/// Zoom and pan, in image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewTransform {
    /// Screen points per image pixel.
    pub zoom: f32,
    /// Image point at the centre of each pane.
    pub center: Vec2,
    /// Re-fit on every frame until the user zooms or pans.
    pub fit: bool,
}

impl Default for ViewTransform {
    fn default() -> Self {
        Self { zoom: 1.0, center: Vec2::ZERO, fit: true }
    }
}

impl ViewTransform {
    pub fn fit(&mut self) {
        self.fit = true;
    }

    /// One image pixel per screen pixel.
    pub fn actual_size(&mut self, pixels_per_point: f32) {
        self.fit = false;
        self.zoom = 1.0 / pixels_per_point;
    }

    /// Zooms by `factor` keeping the image point under `anchor` (pane coordinates
    /// relative to the pane centre) where it is.
    pub fn zoom_by(&mut self, factor: f32, anchor: Vec2) {
        let before = self.center + anchor / self.zoom;
        self.zoom = (self.zoom * factor).clamp(0.01, 64.0);
        self.center = before - anchor / self.zoom;
        self.fit = false;
    }

    pub fn zoom_in(&mut self) {
        self.zoom_by(ZOOM_STEP, Vec2::ZERO);
    }

    pub fn zoom_out(&mut self) {
        self.zoom_by(1.0 / ZOOM_STEP, Vec2::ZERO);
    }

    pub fn pan(&mut self, delta_points: Vec2) {
        self.center -= delta_points / self.zoom;
        self.fit = false;
    }

    fn update_fit(&mut self, pane: Vec2, image: Vec2) {
        if self.fit && image.x > 0.0 && image.y > 0.0 {
            self.zoom = (pane.x / image.x).min(pane.y / image.y);
            self.center = image / 2.0;
        }
    }

    /// Where the image lies on screen in a pane.
    pub fn image_rect(&self, pane: Rect, image: Vec2) -> Rect {
        Rect::from_min_size(pane.center() - self.center * self.zoom, image * self.zoom)
    }
}

/// One pane: what it shows, with or without the heatmap, and its caption.
pub struct PaneView<'a> {
    pub content: &'a HeatmapContent,
    pub overlay: bool,
    pub caption: String,
    /// Map values at the ends of the colour map (two methods' maps differ in range).
    pub levels: (f32, f32),
    /// The region threshold is the scoring method's: another method's map is not outlined.
    pub outline: bool,
}

/// What the panes draw, from the settings and the selected image: one pane, the
/// original beside the overlay, or two methods' overlays side by side.
pub struct ViewerFrame<'a> {
    /// One or two (at most `PANES`); none shows the placeholder.
    pub panes: Vec<PaneView<'a>>,
    /// Shown when there is no content.
    pub placeholder: &'a str,
    pub params: PaneParams,
    pub gpu: bool,
}

/// Draws the panes into the remaining space and handles wheel zoom and drag pan;
/// returns the image pixel under the pointer.
pub fn show(ui: &mut egui::Ui, view: &mut ViewTransform, frame: ViewerFrame<'_>) -> Option<[u32; 2]> {
    let area = ui.available_rect_before_wrap();
    ui.allocate_rect(area, Sense::hover());
    let Some(first) = frame.panes.first() else {
        ui.put(area, egui::Label::new(frame.placeholder));
        return None;
    };
    if !frame.gpu {
        ui.put(area, egui::Label::new("The heatmap needs the wgpu renderer, which is not available."));
        return None;
    }
    let size = first.content.size;
    let image_size = Vec2::new(size[0] as f32, size[1] as f32);
    let rects: Vec<Rect> = if frame.panes.len() > 1 {
        let (left, right) = area.split_left_right_at_fraction(0.5);
        vec![left.shrink(2.0), right.shrink(2.0)]
    } else {
        vec![area]
    };
    let panes: Vec<(Rect, &PaneView<'_>)> = rects.into_iter().zip(&frame.panes).take(super::heatmap::PANES).collect();
    let mut hovered = None;
    view.update_fit(panes[0].0.size(), image_size);
    let pixels_per_point = ui.ctx().pixels_per_point();
    for (index, (pane, shown)) in panes.into_iter().enumerate() {
        let (content, overlay, caption) = (shown.content, shown.overlay, shown.caption.as_str());
        let response = ui.interact(pane, ui.scope_id().with(("pane", index)), Sense::click_and_drag());
        if response.dragged() {
            view.pan(response.drag_delta());
        }
        if response.hovered() {
            let scroll = ui.input(|i| i.smooth_scroll_delta.y);
            if scroll != 0.0 {
                let anchor = response.hover_pos().map_or(Vec2::ZERO, |p| p - pane.center());
                view.zoom_by((scroll / 200.0).exp(), anchor);
            }
        }
        let rect = view.image_rect(pane, image_size);
        if let Some(pointer) = response.hover_pos().filter(|p| rect.contains(*p)) {
            let at = (pointer - rect.min) / view.zoom;
            hovered = Some([(at.x as u32).min(size[0] - 1), (at.y as u32).min(size[1] - 1)]);
        }
        let params = PaneParams {
            image_rect_px: Rect::from_min_max(
                Pos2::new(rect.min.x * pixels_per_point, rect.min.y * pixels_per_point),
                Pos2::new(rect.max.x * pixels_per_point, rect.max.y * pixels_per_point),
            ),
            overlay,
            low: shown.levels.0,
            high: shown.levels.1,
            // The threshold outline belongs to the overlay; the original stays clean.
            outline: frame.params.outline && overlay && shown.outline,
            ..frame.params
        };
        let painter = ui.painter_at(pane);
        painter.add(eframe::egui_wgpu::Callback::new_paint_callback(
            pane,
            HeatmapCallback { pane: index, params, content: content.clone() },
        ));
        if !caption.is_empty() {
            painter.text(
                pane.left_top() + Vec2::splat(6.0),
                egui::Align2::LEFT_TOP,
                caption,
                egui::FontId::proportional(13.0),
                Color32::WHITE,
            );
        }
    }
    hovered
}

/// The colour bar with its numbers and the threshold mark.
pub fn legend(ui: &mut egui::Ui, colormap: Colormap, low: f32, high: f32, threshold: f32) {
    let (rect, _) = ui.allocate_exact_size(Vec2::new(260.0, 34.0), Sense::hover());
    let bar = Rect::from_min_size(rect.min, Vec2::new(rect.width(), 14.0));
    let mut mesh = egui::Mesh::default();
    const STEPS: usize = 64;
    for i in 0..=STEPS {
        let t = i as f32 / STEPS as f32;
        let x = bar.left() + t * bar.width();
        let [r, g, b] = colormap.rgb8(t);
        let color = egui::Color32::from_rgb(r, g, b);
        mesh.colored_vertex(Pos2::new(x, bar.top()), color);
        mesh.colored_vertex(Pos2::new(x, bar.bottom()), color);
        if i > 0 {
            let k = (2 * i) as u32;
            mesh.add_triangle(k - 2, k - 1, k);
            mesh.add_triangle(k - 1, k, k + 1);
        }
    }
    let painter = ui.painter();
    painter.add(mesh);
    let text_color = ui.visuals().text_color();
    let font = egui::FontId::proportional(11.0);
    for (t, align) in [(0.0, egui::Align2::LEFT_TOP), (0.5, egui::Align2::CENTER_TOP), (1.0, egui::Align2::RIGHT_TOP)] {
        let value = low + t * (high - low);
        painter.text(
            Pos2::new(bar.left() + t * bar.width(), bar.bottom() + 3.0),
            align,
            format!("{value:.3}"),
            font.clone(),
            text_color,
        );
    }
    if high > low && (low..=high).contains(&threshold) {
        let x = bar.left() + (threshold - low) / (high - low) * bar.width();
        painter.line_segment(
            [Pos2::new(x, bar.top() - 2.0), Pos2::new(x, bar.bottom() + 2.0)],
            egui::Stroke::new(2.0, Color32::WHITE),
        );
    }
    ui.label(egui::RichText::new("map value (white mark: threshold)").small())
        .on_hover_text("The colours' ends follow the normalisation; the outline on the image marks map >= threshold.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zooming_keeps_the_point_under_the_cursor() {
        let mut view = ViewTransform { zoom: 1.0, center: Vec2::new(50.0, 50.0), fit: false };
        let anchor = Vec2::new(20.0, -10.0);
        let under = view.center + anchor / view.zoom;
        view.zoom_by(2.0, anchor);
        assert_eq!(view.center + anchor / view.zoom, under);
        assert_eq!(view.zoom, 2.0);
    }

    #[test]
    fn fit_shows_the_whole_image_centred() {
        let mut view = ViewTransform::default();
        view.update_fit(Vec2::new(400.0, 200.0), Vec2::new(100.0, 100.0));
        let pane = Rect::from_min_size(Pos2::ZERO, Vec2::new(400.0, 200.0));
        let rect = view.image_rect(pane, Vec2::new(100.0, 100.0));
        assert_eq!(rect, Rect::from_min_max(Pos2::new(100.0, 0.0), Pos2::new(300.0, 200.0)));
    }
}
