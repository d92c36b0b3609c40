//! CPU activations: candle's run on one thread; these run on all cores. The exact
//! GELU uses Abramowitz & Stegun 7.1.26 for erf (|error| < 1.5e-7, the approximation
//! PyTorch's vectorised CPU erf uses). Other devices use candle's kernels.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy)]
enum Act {
    GeluErf,
    QuickGelu,
}

impl Act {
    #[inline]
    fn apply(self, x: f32) -> f32 {
        match self {
            Self::GeluErf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            Self::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        }
    }
}

/// Abramowitz & Stegun 7.1.26.
#[inline]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let sign = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + P * x);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    sign * (1.0 - poly * (-x * x).exp())
}

impl CustomOp1 for Act {
    fn name(&self) -> &'static str {
        match self {
            Self::GeluErf => "alfa-gelu-erf",
            Self::QuickGelu => "alfa-quick-gelu",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{} expects f32", self.name());
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{} expects a contiguous tensor", self.name());
        };
        let mut out = data[start..end].to_vec();
        let act = *self;
        out.par_chunks_mut(16 * 1024)
            .for_each(|chunk| chunk.iter_mut().for_each(|v| *v = act.apply(*v)));
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

fn on_cpu_f32(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// Exact GELU (`nn.GELU()`).
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if on_cpu_f32(x) {
        x.contiguous()?.apply_op1_no_bwd(&Act::GeluErf)
    } else {
        x.gelu_erf()
    }
}

/// `x * sigmoid(1.702 x)`.
pub fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if on_cpu_f32(x) {
        x.contiguous()?.apply_op1_no_bwd(&Act::QuickGelu)
    } else {
        x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_candle_reference() {
        let x = Tensor::arange(-800i64, 800, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let x = (x / 100.0).unwrap();
        let diff = |a: Tensor, b: Tensor| {
            (a - b).unwrap().abs().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(diff(gelu_erf(&x).unwrap(), x.gelu_erf().unwrap()) < 1e-6);
        let quick = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        assert!(diff(quick_gelu(&x).unwrap(), quick) < 1e-6);
    }
}
