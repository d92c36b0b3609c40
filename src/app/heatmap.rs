//! The heatmap overlay on the GPU: `shaders/heatmap.wgsl` run in an egui paint
//! callback, with the image, the f32 map and the ground-truth mask as textures.

use eframe::egui;

use std::sync::Arc;

use eframe::egui_wgpu::{self, wgpu};
use image::{GrayImage, RgbaImage};
use wgpu::util::DeviceExt;

use crate::detect::colormap::Colormap;
use crate::detect::maps::Grid;

/// The WGSL source, validated by the tests.
pub const SHADER_SOURCE: &str = include_str!("../../shaders/heatmap.wgsl");

/// What the viewer shows for one image. Shared with the paint callback; textures are
/// uploaded again only when one of the three `Arc`s changes.
#[derive(Clone)]
pub struct HeatmapContent {
    /// The picture, or its thumbnail until the picture is decoded (the map and the
    /// mask are sampled by position, so they fit either).
    pub image: Arc<RgbaImage>,
    /// The full picture's size in pixels: zoom and pan are in these units.
    pub size: [u32; 2],
    pub map: Option<Arc<Grid>>,
    pub mask: Option<Arc<GrayImage>>,
}

impl HeatmapContent {
    fn key(&self) -> [usize; 3] {
        [
            Arc::as_ptr(&self.image) as usize,
            self.map.as_ref().map_or(0, |m| Arc::as_ptr(m) as usize),
            self.mask.as_ref().map_or(0, |m| Arc::as_ptr(m) as usize),
        ]
    }
}

/// How one pane draws the content (the shader's uniform block).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaneParams {
    /// The image's rectangle in framebuffer pixels.
    pub image_rect_px: egui::Rect,
    /// Map values drawn as the ends of the colour map.
    pub low: f32,
    pub high: f32,
    pub threshold: f32,
    pub opacity: f32,
    pub colormap: Colormap,
    pub overlay: bool,
    pub outline: bool,
    pub mask_outline: bool,
}

impl PaneParams {
    fn to_bytes(self, srgb_target: bool) -> Vec<u8> {
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        let r = self.image_rect_px;
        let values: [f32; 16] = [
            r.min.x,
            r.min.y,
            r.width().max(1.0),
            r.height().max(1.0),
            self.low,
            self.high,
            self.threshold,
            self.opacity,
            self.colormap.shader_index(),
            flag(self.overlay),
            flag(self.outline),
            flag(srgb_target),
            flag(self.mask_outline),
            0.0,
            0.0,
            0.0,
        ];
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }
}

/// Number of panes that can be on screen at once (original and overlay side by side).
pub const PANES: usize = 2;

/// Pipeline and buffers, created once and kept in egui_wgpu's callback resources.
pub struct HeatmapResources {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    uniforms: [wgpu::Buffer; PANES],
    srgb_target: bool,
    /// Per pane: the two panes may show different content (two methods' maps).
    uploaded: [Option<Uploaded>; PANES],
}

struct Uploaded {
    key: [usize; 3],
    bind_group: wgpu::BindGroup,
}

/// Registers the pipeline with the renderer; call once at start-up.
pub fn install(render_state: &egui_wgpu::RenderState) {
    let resources = HeatmapResources::new(&render_state.device, render_state.target_format);
    render_state.renderer.write().callback_resources.insert(resources);
}

impl HeatmapResources {
    fn new(device: &wgpu::Device, target_format: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("alfa heatmap"),
            source: wgpu::ShaderSource::Wgsl(SHADER_SOURCE.into()),
        });
        let texture_entry = |binding, filterable| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable },
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("alfa heatmap"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                texture_entry(1, true),
                wgpu::BindGroupLayoutEntry {
                    binding: 2,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
                texture_entry(3, false),
                texture_entry(4, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("alfa heatmap"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("alfa heatmap"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format: target_format,
                    blend: None,
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("alfa image"),
            mag_filter: wgpu::FilterMode::Nearest,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });
        let uniforms = std::array::from_fn(|_| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("alfa heatmap params"),
                size: 64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        Self {
            pipeline,
            layout,
            sampler,
            uniforms,
            srgb_target: target_format.is_srgb(),
            uploaded: [None, None],
        }
    }

    fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, pane: usize, content: &HeatmapContent) {
        let key = content.key();
        if self.uploaded[pane].as_ref().is_some_and(|u| u.key == key) {
            return;
        }
        let max = device.limits().max_texture_dimension_2d;
        let image = fit_image(&content.image, max);
        let image_view = texture(
            device,
            queue,
            (image.width(), image.height()),
            wgpu::TextureFormat::Rgba8Unorm,
            image.as_raw(),
        );
        let map_view = match content.map.as_deref() {
            Some(map) => {
                let map = fit_grid(map, max);
                let bytes: Vec<u8> = map.values.iter().flat_map(|v| v.to_ne_bytes()).collect();
                texture(device, queue, (map.width as u32, map.height as u32), wgpu::TextureFormat::R32Float, &bytes)
            }
            None => texture(device, queue, (1, 1), wgpu::TextureFormat::R32Float, &0f32.to_ne_bytes()),
        };
        let mask_view = match content.mask.as_deref() {
            Some(mask) => {
                let mask = fit_mask(mask, max);
                texture(device, queue, (mask.width(), mask.height()), wgpu::TextureFormat::R8Unorm, mask.as_raw())
            }
            None => texture(device, queue, (1, 1), wgpu::TextureFormat::R8Unorm, &[0]),
        };
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("alfa heatmap"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: self.uniforms[pane].as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(&image_view) },
                wgpu::BindGroupEntry { binding: 2, resource: wgpu::BindingResource::Sampler(&self.sampler) },
                wgpu::BindGroupEntry { binding: 3, resource: wgpu::BindingResource::TextureView(&map_view) },
                wgpu::BindGroupEntry { binding: 4, resource: wgpu::BindingResource::TextureView(&mask_view) },
            ],
        });
        self.uploaded[pane] = Some(Uploaded { key, bind_group });
    }
}

fn texture(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    (width, height): (u32, u32),
    format: wgpu::TextureFormat,
    data: &[u8],
) -> wgpu::TextureView {
    device
        .create_texture_with_data(
            queue,
            &wgpu::TextureDescriptor {
                label: Some("alfa heatmap input"),
                size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format,
                usage: wgpu::TextureUsages::TEXTURE_BINDING,
                view_formats: &[],
            },
            wgpu::util::TextureDataOrder::LayerMajor,
            data,
        )
        .create_view(&wgpu::TextureViewDescriptor::default())
}

/// Images larger than the GPU's texture limit are shown downscaled.
fn fit_image(image: &RgbaImage, max: u32) -> std::borrow::Cow<'_, RgbaImage> {
    match fitted_size(image.width(), image.height(), max) {
        None => std::borrow::Cow::Borrowed(image),
        Some((w, h)) => std::borrow::Cow::Owned(image::imageops::resize(image, w, h, image::imageops::FilterType::Triangle)),
    }
}

fn fit_mask(mask: &GrayImage, max: u32) -> std::borrow::Cow<'_, GrayImage> {
    match fitted_size(mask.width(), mask.height(), max) {
        None => std::borrow::Cow::Borrowed(mask),
        Some((w, h)) => std::borrow::Cow::Owned(image::imageops::resize(mask, w, h, image::imageops::FilterType::Nearest)),
    }
}

fn fit_grid(map: &Grid, max: u32) -> std::borrow::Cow<'_, Grid> {
    match fitted_size(map.width as u32, map.height as u32, max) {
        None => std::borrow::Cow::Borrowed(map),
        Some((w, h)) => std::borrow::Cow::Owned(crate::detect::maps::resize_bilinear(map, w as usize, h as usize)),
    }
}

fn fitted_size(width: u32, height: u32, max: u32) -> Option<(u32, u32)> {
    let longest = width.max(height);
    (longest > max).then(|| {
        let scale = max as f64 / longest as f64;
        (((width as f64 * scale) as u32).max(1), ((height as f64 * scale) as u32).max(1))
    })
}

/// One pane's draw call.
pub struct HeatmapCallback {
    pub pane: usize,
    pub params: PaneParams,
    pub content: HeatmapContent,
}

impl egui_wgpu::CallbackTrait for HeatmapCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        if let Some(gpu) = resources.get_mut::<HeatmapResources>() {
            gpu.upload(device, queue, self.pane, &self.content);
            queue.write_buffer(&gpu.uniforms[self.pane], 0, &self.params.to_bytes(gpu.srgb_target));
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        render_pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(gpu) = resources.get::<HeatmapResources>() else { return };
        let Some(uploaded) = &gpu.uploaded[self.pane] else { return };
        render_pass.set_pipeline(&gpu.pipeline);
        render_pass.set_bind_group(0, &uploaded.bind_group, &[]);
        render_pass.draw(0..3, 0..1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shader_is_valid_wgsl() {
        let module = naga::front::wgsl::parse_str(SHADER_SOURCE).expect("the shader parses");
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default())
            .validate(&module)
            .expect("the shader validates");
        for entry in ["vs_main", "fs_main"] {
            assert!(module.entry_points.iter().any(|e| e.name == entry), "{entry} missing");
        }
    }

    #[test]
    fn oversized_textures_are_scaled_to_the_limit() {
        assert_eq!(fitted_size(100, 50, 8192), None);
        assert_eq!(fitted_size(10000, 5000, 8192), Some((8192, 4096)));
    }
}
