//! The heatmap's colour maps on the CPU, for legends and exported overlays.
//! The same polynomials are in `shaders/heatmap.wgsl`, so the app's screen, its
//! exports and `alfa detect`'s overlays agree.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum Colormap {
    /// High contrast, the usual choice for anomaly maps.
    #[default]
    Turbo,
    /// Colour-blind safe and perceptually uniform.
    Viridis,
}

impl Colormap {
    pub const ALL: [Colormap; 2] = [Colormap::Turbo, Colormap::Viridis];

    pub fn label(self) -> &'static str {
        match self {
            Colormap::Turbo => "Turbo",
            Colormap::Viridis => "Viridis (colour-blind safe)",
        }
    }

    /// The index the shader switches on.
    pub fn shader_index(self) -> f32 {
        match self {
            Colormap::Turbo => 0.0,
            Colormap::Viridis => 1.0,
        }
    }

    /// sRGB colour in [0, 1] for `t` in [0, 1] (clamped).
    pub fn rgb(self, t: f32) -> [f32; 3] {
        let x = t.clamp(0.0, 1.0);
        let c = match self {
            Colormap::Turbo => turbo(x),
            Colormap::Viridis => viridis(x),
        };
        c.map(|v| v.clamp(0.0, 1.0))
    }

    /// 8-bit sRGB colour of `t` in [0, 1].
    pub fn rgb8(self, t: f32) -> [u8; 3] {
        self.rgb(t).map(|v| (v * 255.0).round() as u8)
    }
}

fn turbo(x: f32) -> [f32; 3] {
    let v4 = [1.0, x, x * x, x * x * x];
    let v2 = [v4[2] * v4[2], v4[3] * v4[2]];
    let dot4 = |k: [f32; 4]| v4.iter().zip(k).map(|(a, b)| a * b).sum::<f32>();
    let dot2 = |k: [f32; 2]| v2[0] * k[0] + v2[1] * k[1];
    [
        dot4([0.135_721_38, 4.615_392_6, -42.660_322_58, 132.131_082_34]) + dot2([-152.942_393_96, 59.286_379_43]),
        dot4([0.091_402_61, 2.194_188_39, 4.842_966_58, -14.185_033_33]) + dot2([4.277_298_57, 2.829_566_04]),
        dot4([0.106_673_3, 12.641_946_08, -60.582_048_36, 110.362_767_71]) + dot2([-89.903_109_12, 27.348_249_73]),
    ]
}

fn viridis(x: f32) -> [f32; 3] {
    const C: [[f32; 3]; 7] = [
        [0.277_727_33, 0.005_407_345, 0.334_099_8],
        [0.105_093_04, 1.404_613_5, 1.384_590_2],
        [-0.330_861_83, 0.214_847_56, 0.095_095_16],
        [-4.634_230_5, -5.799_101, -19.332_441],
        [6.228_27, 14.179_933, 56.690_553],
        [4.776_385, -13.745_145, -65.353_03],
        [-5.435_456, 4.645_852_6, 26.312_435],
    ];
    std::array::from_fn(|channel| C.iter().rev().fold(0.0, |acc, c| acc * x + c[channel]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f32; 3], b: [f32; 3]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.06)
    }

    #[test]
    fn ends_match_the_published_maps() {
        // matplotlib's viridis(0) and viridis(1); Turbo starts dark and ends dark red.
        assert!(close(Colormap::Viridis.rgb(0.0), [0.267, 0.005, 0.329]));
        assert!(close(Colormap::Viridis.rgb(1.0), [0.993, 0.906, 0.144]));
        let start = Colormap::Turbo.rgb(0.0);
        assert!(start.iter().all(|v| *v < 0.25), "{start:?}");
        let end = Colormap::Turbo.rgb(1.0);
        assert!(end[0] > 0.45 && end[1] < 0.1 && end[2] < 0.05, "{end:?}");
        // Turbo's middle is green.
        let mid = Colormap::Turbo.rgb(0.5);
        assert!(mid[1] > mid[0] && mid[1] > mid[2], "{mid:?}");
    }

    #[test]
    fn viridis_brightens_monotonically() {
        let luma = |c: [f32; 3]| 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
        let steps: Vec<f32> = (0..=20).map(|i| luma(Colormap::Viridis.rgb(i as f32 / 20.0))).collect();
        assert!(steps.windows(2).all(|w| w[1] > w[0]), "{steps:?}");
    }
}
