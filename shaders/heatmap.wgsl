// The anomaly heatmap over the image, drawn in an egui paint callback.
//
// One triangle covers the callback's viewport; each fragment finds its place in the
// image from its framebuffer position, so zoom, pan and clipping need no geometry.
// The map is an R32Float texture read with textureLoad (f32 textures are not
// filterable everywhere); the map has the image's resolution, so nearest is exact.

struct Params {
    // Where the image lies, in framebuffer pixels: min x, min y, width, height.
    image_rect: vec4<f32>,
    // Normalisation low, high, threshold (raw map units), overlay opacity.
    levels: vec4<f32>,
    // Colour map (0 turbo, 1 viridis), overlay on, threshold outline on, sRGB target.
    flags: vec4<f32>,
    // Ground-truth outline on; the rest is padding.
    mask_flags: vec4<f32>,
};

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var image_tex: texture_2d<f32>;
@group(0) @binding(2) var image_sampler: sampler;
@group(0) @binding(3) var map_tex: texture_2d<f32>;
@group(0) @binding(4) var mask_tex: texture_2d<f32>;

@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> @builtin(position) vec4<f32> {
    let x = f32((index << 1u) & 2u) * 2.0 - 1.0;
    let y = f32(index & 2u) * 2.0 - 1.0;
    return vec4<f32>(x, y, 0.0, 1.0);
}

// Polynomial fit of Google's Turbo (Mikhailov 2019); the same numbers are in colormap.rs.
fn turbo(t: f32) -> vec3<f32> {
    let x = clamp(t, 0.0, 1.0);
    let v4 = vec4<f32>(1.0, x, x * x, x * x * x);
    let v2 = v4.zw * v4.z;
    return clamp(vec3<f32>(
        dot(v4, vec4<f32>(0.13572138, 4.61539260, -42.66032258, 132.13108234)) + dot(v2, vec2<f32>(-152.94239396, 59.28637943)),
        dot(v4, vec4<f32>(0.09140261, 2.19418839, 4.84296658, -14.18503333)) + dot(v2, vec2<f32>(4.27729857, 2.82956604)),
        dot(v4, vec4<f32>(0.10667330, 12.64194608, -60.58204836, 110.36276771)) + dot(v2, vec2<f32>(-89.90310912, 27.34824973)),
    ), vec3<f32>(0.0), vec3<f32>(1.0));
}

// Polynomial fit of matplotlib's viridis (colour-blind safe, perceptually uniform).
fn viridis(t: f32) -> vec3<f32> {
    let x = clamp(t, 0.0, 1.0);
    let c0 = vec3<f32>(0.2777273272234177, 0.005407344544966578, 0.3340998053353061);
    let c1 = vec3<f32>(0.1050930431085774, 1.404613529898575, 1.384590162594685);
    let c2 = vec3<f32>(-0.3308618287255563, 0.214847559468213, 0.09509516302823659);
    let c3 = vec3<f32>(-4.634230498983486, -5.799100973351585, -19.33244095627987);
    let c4 = vec3<f32>(6.228269936347081, 14.17993336680509, 56.69055260068105);
    let c5 = vec3<f32>(4.776384997670288, -13.74514537774601, -65.35303263337234);
    let c6 = vec3<f32>(-5.435455855934631, 4.645852612178535, 26.3124352495832);
    return clamp(c0 + x * (c1 + x * (c2 + x * (c3 + x * (c4 + x * (c5 + x * c6))))), vec3<f32>(0.0), vec3<f32>(1.0));
}

fn texel(tex: texture_2d<f32>, uv: vec2<f32>) -> f32 {
    let size = vec2<i32>(textureDimensions(tex));
    let p = clamp(vec2<i32>(floor(uv * vec2<f32>(size))), vec2<i32>(0), size - vec2<i32>(1));
    return textureLoad(tex, p, 0).r;
}

// True where `uv` is on the border of the region `tex >= level`, about 1.5 screen pixels wide.
fn on_edge(tex: texture_2d<f32>, uv: vec2<f32>, level: f32) -> bool {
    let step = 1.5 / params.image_rect.zw;
    let inside = texel(tex, uv) >= level;
    let right = texel(tex, uv + vec2<f32>(step.x, 0.0)) >= level;
    let left = texel(tex, uv - vec2<f32>(step.x, 0.0)) >= level;
    let down = texel(tex, uv + vec2<f32>(0.0, step.y)) >= level;
    let up = texel(tex, uv - vec2<f32>(0.0, step.y)) >= level;
    return inside != right || inside != left || inside != down || inside != up;
}

fn srgb_to_linear(c: vec3<f32>) -> vec3<f32> {
    let low = c / 12.92;
    let high = pow((c + 0.055) / 1.055, vec3<f32>(2.4));
    return select(high, low, c <= vec3<f32>(0.04045));
}

@fragment
fn fs_main(@builtin(position) position: vec4<f32>) -> @location(0) vec4<f32> {
    let uv = (position.xy - params.image_rect.xy) / params.image_rect.zw;
    // Sampled before any branch: implicit derivatives need uniform control flow.
    var color = textureSample(image_tex, image_sampler, uv).rgb;
    if (any(uv < vec2<f32>(0.0)) || any(uv > vec2<f32>(1.0))) {
        discard;
    }
    let value = texel(map_tex, uv);
    if (params.flags.y > 0.5) {
        let t = clamp((value - params.levels.x) / max(params.levels.y - params.levels.x, 1e-6), 0.0, 1.0);
        var heat = turbo(t);
        if (params.flags.x > 0.5) {
            heat = viridis(t);
        }
        color = mix(color, heat, params.levels.w);
    }
    if (params.flags.z > 0.5 && on_edge(map_tex, uv, params.levels.z)) {
        color = vec3<f32>(1.0, 1.0, 1.0);
    }
    if (params.mask_flags.x > 0.5 && on_edge(mask_tex, uv, 0.5)) {
        color = vec3<f32>(0.0, 1.0, 0.3);
    }
    if (params.flags.w > 0.5) {
        color = srgb_to_linear(color);
    }
    return vec4<f32>(color, 1.0);
}
