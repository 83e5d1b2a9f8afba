//! Verdicts to text: a readable table, JSON (with the host fingerprint) and KTAP v1.

pub mod compare;
mod json;
mod ktap;
pub mod matrix;
mod table;

use crate::kvm::facts::HostFacts;
use crate::runner::{CheckResult, Verdict};
use serde::Serialize;

/// A finished run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub host: Option<HostFacts>,
    /// Why nothing ran, when KVM is unusable.
    pub unavailable: Option<String>,
    pub results: Vec<CheckResult>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub pass: usize,
    pub fail: usize,
    pub deviation: usize,
    pub skip: usize,
}

impl Counts {
    pub fn total(&self) -> usize {
        self.pass + self.fail + self.deviation + self.skip
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per check.
    Table,
    /// One block per MSR with every check about it (the MSR x check matrix).
    Matrix,
    Json,
    Ktap,
}

impl Report {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for r in &self.results {
            match r.verdict {
                Verdict::Pass => c.pass += 1,
                Verdict::Fail => c.fail += 1,
                Verdict::Deviation => c.deviation += 1,
                Verdict::Skip => c.skip += 1,
            }
        }
        c
    }

    /// 0: every check passed or is a recorded deviation; 1: a check failed; 4: nothing ran.
    pub fn exit_code(&self) -> i32 {
        let c = self.counts();
        if c.fail > 0 {
            1
        } else if c.pass + c.deviation == 0 {
            4
        } else {
            0
        }
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => table::render(self),
            Format::Matrix => matrix::render(self),
            Format::Json => json::render(self),
            Format::Ktap => ktap::render(self),
        }
    }

    /// The closing line: "N passed, N failed, N skipped, N deviations".
    pub fn summary_line(&self) -> String {
        let c = self.counts();
        format!(
            "{} passed, {} failed, {} skipped, {} deviations",
            c.pass, c.fail, c.skip, c.deviation
        )
    }
}
