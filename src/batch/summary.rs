//! What a batch did, for the terminal, `summary.json` and the report, and the exit
//! status a script reads.

use serde::Serialize;

/// Counts of a run (resumed images included).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Images of this run (of this shard, with `--shard`).
    pub images: usize,
    /// Analysed now.
    pub analysed: usize,
    /// Finished by an earlier run (`--resume`).
    pub resumed: usize,
    /// With a threshold: images below it / at or above it.
    pub ok: usize,
    pub ng: usize,
    pub failed: usize,
    /// Stopped (Ctrl-C) before every image was done.
    pub interrupted: bool,
}

/// How a run ended, as a script tells it from the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Every image analysed; none NG (or no threshold).
    AllOk,
    /// Every image analysed; some NG.
    SomeNg,
    /// Some images could not be read or analysed; none of the others NG.
    SomeFailed,
    /// Some images failed, and some of the others are NG.
    SomeNgSomeFailed,
    /// Stopped before the end (what was done is written).
    Interrupted,
}

impl RunStatus {
    /// The exit codes `alfa detect` and `alfa watch` document: 0 all OK, 1 the run
    /// could not start or broke off (an error message says why), 2 a usage error,
    /// 3 some NG, 4 some files failed, 5 both, 130 interrupted.
    pub fn exit_code(self) -> u8 {
        match self {
            RunStatus::AllOk => 0,
            RunStatus::SomeNg => 3,
            RunStatus::SomeFailed => 4,
            RunStatus::SomeNgSomeFailed => 5,
            RunStatus::Interrupted => 130,
        }
    }
}

impl Summary {
    pub fn status(&self) -> RunStatus {
        match (self.interrupted, self.ng > 0, self.failed > 0) {
            (true, _, _) => RunStatus::Interrupted,
            (false, false, false) => RunStatus::AllOk,
            (false, true, false) => RunStatus::SomeNg,
            (false, false, true) => RunStatus::SomeFailed,
            (false, true, true) => RunStatus::SomeNgSomeFailed,
        }
    }

    /// One line for the terminal: `120 images: 117 OK, 2 NG, 1 failed (40 from an earlier run)`.
    pub fn line(&self, with_verdicts: bool) -> String {
        let mut parts = Vec::new();
        if with_verdicts {
            parts.push(format!("{} OK", self.ok));
            parts.push(format!("{} NG", self.ng));
        } else {
            parts.push(format!("{} analysed", self.analysed + self.resumed));
        }
        parts.push(format!("{} failed", self.failed));
        let mut line = format!("{} image(s): {}", self.images, parts.join(", "));
        if self.resumed > 0 {
            line.push_str(&format!(" ({} from an earlier run)", self.resumed));
        }
        if self.interrupted {
            let left = self.images - self.analysed - self.resumed - self.failed;
            line.push_str(&format!("; interrupted, {left} not analysed (run again with --resume)"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_ok_ng_failed_and_interrupted_apart() {
        let base = Summary { images: 4, analysed: 4, ..Default::default() };
        let cases = [
            (Summary { ok: 4, ..base.clone() }, 0),
            (Summary { ok: 3, ng: 1, ..base.clone() }, 3),
            (Summary { ok: 3, failed: 1, ..base.clone() }, 4),
            (Summary { ok: 2, ng: 1, failed: 1, ..base.clone() }, 5),
            (Summary { ng: 1, interrupted: true, ..base.clone() }, 130),
        ];
        let codes: Vec<u8> = cases.iter().map(|(s, _)| s.status().exit_code()).collect();
        assert_eq!(codes, cases.iter().map(|(_, c)| *c).collect::<Vec<_>>());
    }

    #[test]
    fn the_summary_line_counts_what_was_left() {
        let s = Summary { images: 10, analysed: 3, resumed: 4, ok: 6, ng: 1, failed: 0, interrupted: true };
        assert_eq!(s.line(true), "10 image(s): 6 OK, 1 NG, 0 failed (4 from an earlier run); interrupted, 3 not analysed (run again with --resume)");
    }
}
