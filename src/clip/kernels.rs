//! The CPU hot spots of the towers, where candle's generic kernels are slow.
//!
//! - `matmul`: with the `openblas` feature, f32 matmuls on the CPU go to OpenBLAS's
//!   `sgemm` (about twice the throughput of the pure-Rust `gemm` crate on the
//!   machines we measured; see the README's performance table). Elsewhere, candle.
//! - `gelu_erf` / `quick_gelu`: candle's CPU activations run on one thread; these
//!   run on all cores. The exact GELU uses Abramowitz & Stegun 7.1.26 for erf
//!   (|error| < 1.5e-7, the approximation PyTorch's vectorised CPU erf uses).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

/// `a @ b` for `a` [M, K] and `b` [K, N].
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "openblas")]
    if matches!(a.device(), Device::Cpu) && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return a.apply_op2_no_bwd(b, &blas::Sgemm);
    }
    a.matmul(b)
}

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

#[cfg(feature = "openblas")]
mod blas {
    use candle_core::{CpuStorage, CustomOp2, Layout, Shape};

    // The system OpenBLAS (`libopenblas-dev`) provides `cblas_sgemm`.
    #[link(name = "openblas")]
    unsafe extern "C" {}

    pub struct Sgemm;

    impl CustomOp2 for Sgemm {
        fn name(&self) -> &'static str {
            "alfa-sgemm"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
                candle_core::bail!("sgemm expects f32");
            };
            let (m, k) = l1.shape().dims2()?;
            let (k2, n) = l2.shape().dims2()?;
            if k != k2 {
                candle_core::bail!("sgemm: [{m}, {k}] @ [{k2}, {n}]");
            }
            let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
                candle_core::bail!("sgemm expects contiguous operands");
            };
            let (a, b) = (&a[a0..a1], &b[b0..b1]);
            let mut c = vec![0f32; m * n];
            if m > 0 && n > 0 && k > 0 {
                let int = |v: usize| i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("sgemm: {v} too large")));
                let (mi, ni, ki) = (int(m)?, int(n)?, int(k)?);
                // SAFETY: row-major a [m, k], b [k, n], c [m, n] with exactly those lengths.
                unsafe {
                    cblas_sys::cblas_sgemm(
                        cblas_sys::CBLAS_LAYOUT::CblasRowMajor,
                        cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
                        cblas_sys::CBLAS_TRANSPOSE::CblasNoTrans,
                        mi,
                        ni,
                        ki,
                        1.0,
                        a.as_ptr(),
                        ki,
                        b.as_ptr(),
                        ni,
                        0.0,
                        c.as_mut_ptr(),
                        ni,
                    );
                }
            }
            Ok((CpuStorage::F32(c), Shape::from((m, n))))
        }
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

    #[test]
    fn matmul_matches_candle() {
        let a = Tensor::randn(0f32, 1.0, (37, 19), &Device::Cpu).unwrap();
        let b = Tensor::randn(0f32, 1.0, (19, 23), &Device::Cpu).unwrap();
        let d = (matmul(&a, &b).unwrap() - a.matmul(&b).unwrap()).unwrap();
        assert!(d.abs().unwrap().max(0).unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() < 1e-4);
    }
}
