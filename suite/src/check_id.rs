//! Check ids: `<family>.<subject>[.<check>[.<more>...]]`, e.g. `guest.tsc.matches-host`.
//!
//! The family is one of a closed set ([`Family`]); every segment after it is lowercase letters,
//! digits and '-', never empty (so never holding a '.'). Code builds ids through typed
//! constructors ([`CheckId::fixed`] for a literal, [`CheckId::new`] and [`CheckId::then`] segment
//! by segment), where an invalid segment is a bug and panics (at compile time for `fixed` in a
//! `const`); text (deviation records, the coverage fixture) goes through [`FromStr`], where it is
//! an [`InvalidCheckId`] that says what is wrong. Display gives the id exactly as test names, KTAP
//! lines, JSON reports and deviation records spell it. A few ids are a family and one segment
//! (`filter.limits`, `cpuid.same-table-accepted-after-run`): family-wide checks with no subject.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// The first segment of a check id: which family of checks (README "Filtering").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    Harness,
    Lists,
    Ioctl,
    Feature,
    Host,
    Guest,
    /// A `guest` check run again through KVM's instruction emulator ([`CheckId::forced_emulation_twin`]).
    GuestFep,
    SaveRestore,
    OneReg,
    Catalogue,
    Cpuid,
    Tsc,
    Mce,
    Pv,
    Exits,
    Filter,
    Regression,
    /// The report's own verdict on the kernel log (`runner::run_watched`).
    KernelLog,
}

impl Family {
    pub const ALL: [Family; 18] = [
        Family::Harness,
        Family::Lists,
        Family::Ioctl,
        Family::Feature,
        Family::Host,
        Family::Guest,
        Family::GuestFep,
        Family::SaveRestore,
        Family::OneReg,
        Family::Catalogue,
        Family::Cpuid,
        Family::Tsc,
        Family::Mce,
        Family::Pv,
        Family::Exits,
        Family::Filter,
        Family::Regression,
        Family::KernelLog,
    ];

    /// The family as the id spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Family::Harness => "harness",
            Family::Lists => "lists",
            Family::Ioctl => "ioctl",
            Family::Feature => "feature",
            Family::Host => "host",
            Family::Guest => "guest",
            Family::GuestFep => "guest-fep",
            Family::SaveRestore => "save-restore",
            Family::OneReg => "one-reg",
            Family::Catalogue => "catalogue",
            Family::Cpuid => "cpuid",
            Family::Tsc => "tsc",
            Family::Mce => "mce",
            Family::Pv => "pv",
            Family::Exits => "exits",
            Family::Filter => "filter",
            Family::Regression => "regression",
            Family::KernelLog => "kernel-log",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = InvalidCheckId;
    fn from_str(s: &str) -> Result<Family, InvalidCheckId> {
        Family::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| InvalidCheckId::new(s, Problem::UnknownFamily(s.to_string())))
    }
}

/// What is wrong with a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegmentProblem {
    Empty,
    BadChar,
}

/// The characters of a segment: lowercase letters, digits and '-'.
const fn segment_byte(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'
}

/// Whether `s` is one segment: lowercase letters, digits and '-', at least one of them.
const fn segment_problem(s: &str) -> Option<SegmentProblem> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Some(SegmentProblem::Empty);
    }
    let mut i = 0;
    while i < b.len() {
        if !segment_byte(b[i]) {
            return Some(SegmentProblem::BadChar);
        }
        i += 1;
    }
    None
}

/// Whether `s` can be a segment of a check id (lowercase letters, digits and '-', not empty):
/// the catalogue's MSR ids and write names become segments.
pub const fn is_segment(s: &str) -> bool {
    segment_problem(s).is_none()
}

/// The first problem of a dotted path of segments, if any (const: `fixed` runs it at compile time).
const fn path_problem(p: &str) -> Option<SegmentProblem> {
    let b = p.as_bytes();
    if b.is_empty() || b[0] == b'.' || b[b.len() - 1] == b'.' {
        return Some(SegmentProblem::Empty);
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'.' {
            if b[i + 1] == b'.' {
                return Some(SegmentProblem::Empty);
            }
        } else if !segment_byte(c) {
            return Some(SegmentProblem::BadChar);
        }
        i += 1;
    }
    None
}

/// A check id. Two ids are equal when their text is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckId {
    family: Family,
    /// The segments after the family, joined by '.'; never empty, every segment valid.
    path: Cow<'static, str>,
}

impl CheckId {
    /// A literal id: `family` and the rest of it, e.g. `CheckId::fixed(Family::Ioctl,
    /// "get-msrs.failed-entry-zeroed")`. Panics (a compile error in a `const`) when a segment of
    /// `path` is empty or holds anything but lowercase letters, digits and '-'.
    ///
    /// ```
    /// use kvm_msr_suite::check_id::{CheckId, Family};
    /// const ID: CheckId = CheckId::fixed(Family::Host, "tsc.reset");
    /// assert_eq!(ID.to_string(), "host.tsc.reset");
    /// ```
    ///
    /// ```compile_fail
    /// use kvm_msr_suite::check_id::{CheckId, Family};
    /// const ID: CheckId = CheckId::fixed(Family::Host, "tsc.Reset");
    /// assert_eq!(ID.to_string(), "host.tsc.Reset");
    /// ```
    pub const fn fixed(family: Family, path: &'static str) -> CheckId {
        match path_problem(path) {
            None => CheckId {
                family,
                path: Cow::Borrowed(path),
            },
            Some(SegmentProblem::Empty) => panic!("CheckId::fixed: an empty segment"),
            Some(SegmentProblem::BadChar) => {
                panic!("CheckId::fixed: a segment holds something other than a-z, 0-9, '-'")
            }
        }
    }

    /// `<family>.<subject>`: panics when `subject` is not one valid segment (a bug in the caller).
    pub fn new(family: Family, subject: impl AsRef<str>) -> CheckId {
        let subject = subject.as_ref();
        Self::assert_segment(family, subject);
        CheckId {
            family,
            path: Cow::Owned(subject.to_string()),
        }
    }

    /// The same id with one more segment: panics when `segment` is not one valid segment.
    pub fn then(self, segment: impl AsRef<str>) -> CheckId {
        let segment = segment.as_ref();
        Self::assert_segment(&self, segment);
        let mut path = self.path.into_owned();
        path.push('.');
        path.push_str(segment);
        CheckId {
            family: self.family,
            path: Cow::Owned(path),
        }
    }

    /// `<family>.<msr>.<check>`: a check about the MSR whose id segment is `msr` (the catalogue's
    /// id for it, `Catalogue::slug`).
    pub fn msr(family: Family, msr: impl AsRef<str>, check: impl AsRef<str>) -> CheckId {
        CheckId::new(family, msr).then(check)
    }

    /// Panics, naming the id so far, when `segment` is not one valid segment.
    fn assert_segment(before: impl fmt::Display, segment: &str) {
        if let Some(p) = segment_problem(segment) {
            panic!(
                "check id {before}.{segment}: {}",
                Problem::Segment(segment.to_string(), p)
            );
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// The segments after the family, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('.')
    }

    /// The `guest-fep` twin of a `guest` check (the same check through KVM's instruction
    /// emulator, `checks::all`); `None` for any other family.
    pub fn forced_emulation_twin(&self) -> Option<CheckId> {
        (self.family == Family::Guest).then(|| CheckId {
            family: Family::GuestFep,
            path: self.path.clone(),
        })
    }
}

impl fmt::Display for CheckId {
    /// The id's text; width, fill and alignment apply as to a `str` (the report's table pads ids).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_none() && f.precision().is_none() {
            write!(f, "{}.{}", self.family.as_str(), self.path)
        } else {
            f.pad(&format!("{}.{}", self.family.as_str(), self.path))
        }
    }
}

impl FromStr for CheckId {
    type Err = InvalidCheckId;
    fn from_str(s: &str) -> Result<CheckId, InvalidCheckId> {
        let Some((family, path)) = s.split_once('.') else {
            return Err(InvalidCheckId::new(s, Problem::NoSegment));
        };
        let family = family
            .parse::<Family>()
            .map_err(|e| InvalidCheckId::new(s, e.problem))?;
        if let Some(bad) = path.split('.').find(|seg| !is_segment(seg)) {
            let p = segment_problem(bad).unwrap_or(SegmentProblem::Empty);
            return Err(InvalidCheckId::new(s, Problem::Segment(bad.to_string(), p)));
        }
        Ok(CheckId {
            family,
            path: Cow::Owned(path.to_string()),
        })
    }
}

impl serde::Serialize for CheckId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CheckId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CheckId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Problem {
    NoSegment,
    UnknownFamily(String),
    Segment(String, SegmentProblem),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoSegment => f.write_str("no '.': an id is <family>.<subject>[.<check>...]"),
            Problem::UnknownFamily(s) => {
                let all: Vec<&str> = Family::ALL.iter().map(|f| f.as_str()).collect();
                write!(f, "unknown family {s:?} (one of {})", all.join(", "))
            }
            Problem::Segment(_, SegmentProblem::Empty) => f.write_str("an empty segment"),
            Problem::Segment(s, SegmentProblem::BadChar) => write!(
                f,
                "segment {s:?} holds something other than lowercase letters, digits and '-'"
            ),
        }
    }
}

/// Text that is not a check id, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidCheckId {
    text: String,
    problem: Problem,
}

impl InvalidCheckId {
    fn new(text: &str, problem: Problem) -> InvalidCheckId {
        InvalidCheckId {
            text: text.to_string(),
            problem,
        }
    }
}

impl fmt::Display for InvalidCheckId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid check id {:?}: {}", self.text, self.problem)
    }
}

impl std::error::Error for InvalidCheckId {}

#[cfg(test)]
mod tests;
