//! `--shard I/N`: one of N disjoint parts of a run's images, so that N machines of a
//! scheduler (a Slurm job array, a Kubernetes Indexed Job) share a dataset.

use std::fmt;
use std::str::FromStr;

/// Part `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = s.split_once('/').and_then(|(i, n)| Some((i.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
        match parsed {
            Some((index, count)) if count >= 1 && (1..=count).contains(&index) => Ok(Self { index, count }),
            Some((index, count)) => Err(format!(
                "shard {index}/{count} does not exist: I/N needs 1 <= I <= N (the shards of N machines are 1/N, 2/N, ..., N/N)"
            )),
            None => Err(format!("`{s}` is not I/N (e.g. 2/8: the second of eight parts)")),
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// This shard's items: every N-th of `items` in the order of `key` (an image's
    /// output path), so the parts do not depend on the order the file system lists files
    /// in or the inputs were given in, are disjoint, cover every item and differ in size
    /// by at most one.
    pub fn select<T, K: Ord>(&self, mut items: Vec<T>, key: impl FnMut(&T) -> K) -> Vec<T> {
        items.sort_by_cached_key(key);
        items.into_iter().enumerate().filter(|(i, _)| i % self.count == self.index - 1).map(|(_, item)| item).collect()
    }
}

/// A per-run file's name: `scores.csv`, or `scores-shard-2-of-8.csv` for a shard, so
/// that shards writing into one folder do not overwrite each other's.
pub fn run_file_name(shard: Option<Shard>, name: &str, extension: &str) -> String {
    match shard {
        Some(shard) => format!("{name}-shard-{}-of-{}.{extension}", shard.index, shard.count),
        None => format!("{name}.{extension}"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::detect::inputs::InputImage;

    fn images(names: &[&str]) -> Vec<InputImage> {
        names
            .iter()
            .map(|n| InputImage { path: PathBuf::from(format!("in/{n}.png")), output_stem: PathBuf::from(n), class: None })
            .collect()
    }

    #[test]
    fn shards_are_disjoint_cover_everything_and_ignore_listing_order() {
        let names: Vec<String> = (0..10).map(|i| format!("img{i:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut reversed = names.clone();
        reversed.reverse();
        let mut seen = Vec::new();
        for index in 1..=3 {
            let shard = Shard { index, count: 3 };
            let by_output = |image: &InputImage| image.output_stem.clone();
            let part = shard.select(images(&names), by_output);
            assert_eq!(part, shard.select(images(&reversed), by_output), "shard {shard} depends on the listing order");
            assert!((3..=4).contains(&part.len()), "{} images in {shard}", part.len());
            seen.extend(part.into_iter().map(|i| i.output_stem));
        }
        seen.sort();
        assert_eq!(seen, names.iter().map(PathBuf::from).collect::<Vec<_>>());
    }

    #[test]
    fn shards_that_do_not_exist_are_refused() {
        assert_eq!("2/8".parse::<Shard>(), Ok(Shard { index: 2, count: 8 }));
        for bad in ["3/2", "0/2", "1/0", "2", "a/b", "-1/2", ""] {
            let error = bad.parse::<Shard>().unwrap_err();
            assert!(error.contains("I/N"), "{bad}: {error}");
        }
    }
}
