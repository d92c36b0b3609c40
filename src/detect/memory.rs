//! Few-shot memory banks: dense features of normal reference images, searched for
//! each query feature's nearest neighbour by cosine (METHOD section 5). The search
//! is one matrix product per chunk of queries, so 16 references cost little.

use candle_core::Tensor;

use crate::clip::l2_normalize;

/// Where a bank row came from: which reference image and which patch or window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    pub reference: usize,
    pub index: usize,
}

/// A query's nearest bank row.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Nearest {
    pub similarity: f32,
    pub origin: Origin,
}

pub struct MemoryBank {
    /// Unit rows, transposed [D, M]: the right-hand side of every search, transposed once.
    features_t: Tensor,
    origins: Vec<Origin>,
}

/// Queries per matrix product: bounds the [chunk, M] similarity block in memory.
const QUERY_CHUNK: usize = 1024;

impl MemoryBank {
    /// A bank from one [m_i, D] feature block per reference image (rows are normalised here).
    pub fn new(per_reference: &[Tensor]) -> candle_core::Result<Self> {
        let mut origins = Vec::new();
        for (reference, block) in per_reference.iter().enumerate() {
            origins.extend((0..block.dim(0)?).map(|index| Origin { reference, index }));
        }
        Ok(Self {
            features_t: l2_normalize(&Tensor::cat(per_reference, 0)?)?.t()?.contiguous()?,
            origins,
        })
    }

    pub fn len(&self) -> usize {
        self.origins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// This bank without the rows of reference `reference`; later references move down
    /// by one, as if it had never been added. `None` when nothing is left.
    pub fn without_reference(&self, reference: usize) -> candle_core::Result<Option<Self>> {
        let keep: Vec<u32> = (0..self.origins.len() as u32).filter(|&i| self.origins[i as usize].reference != reference).collect();
        if keep.is_empty() {
            return Ok(None);
        }
        let origins = keep
            .iter()
            .map(|&i| {
                let o = self.origins[i as usize];
                Origin { reference: if o.reference > reference { o.reference - 1 } else { o.reference }, index: o.index }
            })
            .collect();
        let index = Tensor::from_vec(keep.clone(), keep.len(), self.features_t.device())?;
        Ok(Some(Self { features_t: self.features_t.index_select(&index, 1)?.contiguous()?, origins }))
    }

    /// The nearest bank row of every query row [N, D] (normalised here).
    pub fn nearest(&self, queries: &Tensor) -> candle_core::Result<Vec<Nearest>> {
        let queries = l2_normalize(queries)?;
        let n = queries.dim(0)?;
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(QUERY_CHUNK) {
            let chunk = queries.narrow(0, start, QUERY_CHUNK.min(n - start))?;
            let sims = chunk.matmul(&self.features_t)?; // [chunk, M]
            let (best, at) = crate::clip::kernels::row_max(&sims)?;
            out.extend(best.into_iter().zip(at).map(|(similarity, i)| Nearest {
                similarity,
                origin: self.origins[i as usize],
            }));
        }
        Ok(out)
    }
}

/// METHOD section 5: `(1 - max_m <p, m>) / 2`, 0 for a feature found in the bank.
pub fn few_shot_score(similarity: f32) -> f32 {
    (1.0 - similarity) / 2.0
}

/// AnomalyDINO's patch score: the cosine distance to the nearest reference patch.
pub fn cosine_distance(similarity: f32) -> f32 {
    1.0 - similarity
}

/// AnomalyDINO's image score: the mean of the top 1% of the patch scores (at least
/// one: the maximum of fewer than 100 patches; 13 of DINOv2's 1369).
pub fn mean_of_top_percent(scores: &[f32]) -> f32 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let count = (scores.len() / 100).max(1).min(sorted.len());
    if count == 0 {
        return 0.0;
    }
    sorted[..count].iter().sum::<f32>() / count as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn nearest_row_and_origin_by_cosine() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.0, 0.0], [0.0, 2.0, 0.0]], &dev).unwrap();
        let b = Tensor::new(&[[0f32, 0.0, 3.0]], &dev).unwrap();
        let bank = MemoryBank::new(&[a, b]).unwrap();
        assert_eq!(bank.len(), 3);
        let q = Tensor::new(&[[0f32, 0.0, 5.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]], &dev).unwrap();
        let found = bank.nearest(&q).unwrap();
        assert_eq!(found[0].origin, Origin { reference: 1, index: 0 });
        assert!((found[0].similarity - 1.0).abs() < 1e-6);
        assert!((found[1].similarity - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert_eq!(found[2].origin, Origin { reference: 0, index: 1 });
        assert!(few_shot_score(found[2].similarity).abs() < 1e-6);
        assert!((few_shot_score(-1.0) - 1.0).abs() < 1e-6);

        // Leaving reference 0 out: its rows are gone, reference 1 becomes 0.
        let rest = bank.without_reference(0).unwrap().unwrap();
        assert_eq!(rest.len(), 1);
        let found = rest.nearest(&q).unwrap();
        assert!(found.iter().all(|n| n.origin == Origin { reference: 0, index: 0 }));
        assert!(found[2].similarity.abs() < 1e-6, "the [0, 1, 0] row left with reference 0");
        assert!(rest.without_reference(0).unwrap().is_none());
    }
}
