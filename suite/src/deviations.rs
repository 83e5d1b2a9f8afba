//! Known deviations of a backend from upstream KVM, recorded in `fixtures/deviations/*.toml`.
//!
//! A deviation names the check that measures it, the backend, the source that says what upstream
//! does, and why the backend differs. A failing check with a matching record is reported as a
//! deviation (apart from passes and failures); a check that passes while a record says it should
//! deviate is a failure, so a record never outlives the behaviour it describes.

use crate::check_id::CheckId;
use crate::error::{Error, Result};
use crate::kvm::cpuid::Vendor;
use crate::kvm::facts::Backend;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the vCPUs KVM runs on really are, where that matters for a record: KVM nested in QEMU's
/// TCG executes guest instructions that the backend does not intercept in QEMU's emulation of
/// the CPU, not in silicon.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// QEMU's TCG CPU model (its CPUID brand string starts "QEMU TCG CPU", target/i386/cpu.c).
    QemuTcg,
    /// Anything else (hardware, or a hypervisor that runs guest code on the CPU).
    Other,
}

impl Platform {
    /// From the host CPU's model name (/proc/cpuinfo, the CPUID brand string).
    pub fn from_model_name(model_name: &str) -> Platform {
        if model_name.starts_with("QEMU TCG CPU") {
            Platform::QemuTcg
        } else {
            Platform::Other
        }
    }
}

/// The host a record is matched against.
#[derive(Clone, Copy, Debug)]
pub struct HostKey {
    pub backend: Backend,
    pub vendor: Vendor,
    pub platform: Platform,
    pub ignore_msrs: bool,
}

impl HostKey {
    /// What deviation records are matched against on the host `facts` describe.
    pub fn of(facts: &crate::kvm::facts::HostFacts) -> HostKey {
        HostKey {
            backend: facts.backend,
            vendor: facts.cpu.vendor,
            platform: Platform::from_model_name(&facts.cpu.model_name),
            ignore_msrs: facts.ignore_msrs(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Deviation {
    /// The check id that measures it (a record naming no valid id is refused at load, file:line).
    pub check: CheckId,
    /// Backend name: vmx, svm, pvm.
    pub backend: String,
    /// What upstream KVM does, and where that is written (api.rst section or kernel function).
    pub upstream: String,
    /// Why this backend differs (its source, design, or limitation).
    pub reason: String,
    /// If set, the deviation matches only when the check reports exactly this `actual`.
    #[serde(default)]
    pub actual: Option<String>,
    /// If set, the deviation matches when every fact the check reports (its `actual`, split at
    /// "; ") is one of these. A record states which bits deviate and in which direction, so a CPU
    /// model that shows fewer of them still matches, while a fact not listed (another bit, the
    /// other direction) stays a failure, and a check that passes turns the record stale.
    #[serde(default)]
    pub facts: Option<Vec<String>>,
    /// If set, the record holds only on this platform: `qemu-tcg` for QEMU's TCG CPU, whose
    /// emulation artifacts are recorded like a backend's deviations (see `Platform`).
    #[serde(default)]
    pub platform: Option<Platform>,
    /// If set, the record holds only with kvm.ignore_msrs set so (true: Y): for deviations whose
    /// observation the parameter changes (it turns KVM_MSR_RET_UNSUPPORTED into success).
    #[serde(default)]
    pub ignore_msrs: Option<bool>,
    /// If set, the record holds only on hosts with this CPU vendor (the host's own CPUID): a
    /// backend whose deviation follows the host CPU (PVM passes host CPUID bits through) is
    /// recorded once per vendor it was measured on.
    #[serde(default)]
    pub host_vendor: Option<Vendor>,
    #[serde(skip)]
    pub source: Option<(PathBuf, usize)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    #[serde(default)]
    deviation: Vec<toml::Spanned<Deviation>>,
}

#[derive(Clone, Debug, Default)]
pub struct Deviations {
    pub all: Vec<Deviation>,
}

impl Deviations {
    pub fn parse(file: &Path, text: &str) -> Result<Vec<Deviation>> {
        let line_of = |off: usize| crate::fixtures::line_of(text, off);
        let raw: FileRaw = toml::from_str(text).map_err(|e| Error::Fixture {
            file: file.to_path_buf(),
            line: e.span().map(|s| line_of(s.start)),
            message: e.message().to_string(),
        })?;
        let mut out = Vec::new();
        for d in raw.deviation {
            let line = line_of(d.span().start);
            let mut d = d.into_inner();
            let bad = |m: &str| Error::Fixture {
                file: file.to_path_buf(),
                line: Some(line),
                message: format!("deviation {:?}: {m}", d.check.to_string()),
            };
            if !["vmx", "svm", "pvm"].contains(&d.backend.as_str()) {
                return Err(bad("backend must be vmx, svm or pvm"));
            }
            if d.actual.is_some() && d.facts.is_some() {
                return Err(bad(
                    "give `actual` (one exact observation) or `facts`, not both",
                ));
            }
            if d.facts
                .as_ref()
                .is_some_and(|f| f.is_empty() || f.iter().any(|x| x.contains("; ")))
            {
                return Err(bad(
                    "`facts` lists one or more facts, none containing \"; \"",
                ));
            }
            if d.upstream.trim().is_empty() || d.reason.trim().is_empty() {
                return Err(bad(
                    "`upstream` (the cited upstream behaviour) and `reason` are required",
                ));
            }
            d.source = Some((file.to_path_buf(), line));
            out.push(d);
        }
        Ok(out)
    }

    pub fn load_dir(dir: &Path) -> Result<Deviations> {
        Self::load_files(crate::fixtures::toml_files(dir, "deviations")?)
    }

    /// Load `(file, text)` pairs in order, refusing overlapping records.
    pub fn load_files(files: Vec<(PathBuf, String)>) -> Result<Deviations> {
        let mut all = Vec::new();
        for (f, text) in files {
            for d in Self::parse(&f, &text)? {
                Self::not_a_duplicate(&all, &d)?;
                all.push(d);
            }
        }
        Ok(Deviations { all })
    }

    /// One record per check, backend and host vendor: two that could both apply would make the
    /// verdict depend on their order.
    fn not_a_duplicate(all: &[Deviation], d: &Deviation) -> Result<()> {
        fn overlap<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            a.is_none() || b.is_none() || a == b
        }
        let clash = all.iter().find(|p| {
            p.check == d.check
                && p.backend == d.backend
                && overlap(&p.host_vendor, &d.host_vendor)
                && overlap(&p.platform, &d.platform)
                && overlap(&p.ignore_msrs, &d.ignore_msrs)
        });
        let Some(p) = clash else { return Ok(()) };
        let place = |s: &Option<(PathBuf, usize)>| {
            s.as_ref()
                .map_or("?".into(), |(f, l)| format!("{}:{l}", f.display()))
        };
        Err(Error::Fixture {
            file: d.source.as_ref().map(|s| s.0.clone()).unwrap_or_default(),
            line: d.source.as_ref().map(|s| s.1),
            message: format!(
                "deviation {:?}: backend {} already has a record for this check at {}; give each a different `host_vendor`, `platform` or `ignore_msrs`",
                d.check.to_string(),
                d.backend,
                place(&p.source)
            ),
        })
    }

    /// `fixtures/deviations` as embedded at build time, or the given tree's.
    pub fn load_default() -> Result<Deviations> {
        Self::load_files(crate::fixtures::files("deviations", "deviations")?)
    }

    /// The record for `check` on this host, if any.
    pub fn find(&self, check: &CheckId, host: HostKey) -> Option<&Deviation> {
        self.all.iter().find(|d| {
            &d.check == check
                && d.backend == host.backend.name()
                && d.host_vendor.is_none_or(|v| v == host.vendor)
                && d.platform.is_none_or(|p| p == host.platform)
                && d.ignore_msrs.is_none_or(|i| i == host.ignore_msrs)
        })
    }
}

impl Deviation {
    /// Whether a failure that reported `actual` is the deviation this record describes.
    pub fn covers(&self, actual: &str) -> bool {
        match (&self.actual, &self.facts) {
            (Some(a), _) => a == actual,
            (None, Some(facts)) => actual.split("; ").all(|f| facts.iter().any(|x| x == f)),
            (None, None) => true,
        }
    }

    /// What the record expects, for a failure that does not match it.
    pub fn expects(&self) -> String {
        match (&self.actual, &self.facts) {
            (Some(a), _) => format!("recorded actual {a:?}"),
            (None, Some(f)) => format!("recorded facts (any of) {f:?}"),
            (None, None) => "any failure".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
[[deviation]]
check = "host.c.reset"
backend = "pvm"
host_vendor = "amd"
upstream = "u"
reason = "r"
actual = "on amd"

[[deviation]]
check = "host.c.reset"
backend = "pvm"
host_vendor = "intel"
upstream = "u"
reason = "r"
actual = "on intel"
"#;

    fn load(text: &str) -> Result<Deviations> {
        let mut all = Vec::new();
        for d in Deviations::parse(Path::new("t.toml"), text)? {
            Deviations::not_a_duplicate(&all, &d)?;
            all.push(d);
        }
        Ok(Deviations { all })
    }

    /// The check the test records name.
    fn c() -> CheckId {
        CheckId::msr(crate::check_id::Family::Host, "c", "reset")
    }

    #[test]
    fn a_malformed_check_id_is_refused_with_its_line() {
        for (bad, why) in [
            ("hots.c.reset", "unknown family \"hots\""),
            ("host.C.reset", "segment \"C\""),
            ("host..reset", "an empty segment"),
        ] {
            let text = ONE.replacen("\"host.c.reset\"", &format!("{bad:?}"), 1);
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains("t.toml:3"), "{e}");
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn shipped_records_load() {
        let d = Deviations::load_default().expect("fixtures/deviations loads");
        assert!(!d.all.is_empty());
    }

    #[test]
    fn host_vendor_selects_the_record() {
        let d = load(ONE).unwrap();
        let key = |backend, vendor| HostKey {
            backend,
            vendor,
            platform: Platform::Other,
            ignore_msrs: false,
        };
        let on = |v| {
            d.find(&c(), key(Backend::Pvm, v))
                .and_then(|r| r.actual.clone())
        };
        assert_eq!(on(Vendor::Amd).as_deref(), Some("on amd"));
        assert_eq!(on(Vendor::Intel).as_deref(), Some("on intel"));
        assert_eq!(on(Vendor::Hygon), None);
        assert!(d.find(&c(), key(Backend::Vmx, Vendor::Amd)).is_none());
    }

    #[test]
    fn facts_match_any_subset_and_nothing_else() {
        let text = r#"
[[deviation]]
check = "host.c.reset"
backend = "pvm"
upstream = "u"
reason = "r"
facts = ["A=false: x true", "B=false: x true"]
"#;
        let d = load(text).unwrap();
        let r = &d.all[0];
        assert!(r.covers("A=false: x true"));
        assert!(r.covers("B=false: x true; A=false: x true"));
        assert!(!r.covers("A=true: x false"));
        assert!(!r.covers("A=false: x true; C=false: x true"));
        let both = text.replace("facts =", "actual = \"a\"\nfacts =");
        assert!(load(&both).is_err());
        let empty = text.replace(r#"["A=false: x true", "B=false: x true"]"#, "[]");
        assert!(load(&empty).is_err());
    }

    #[test]
    fn platform_selects_the_record() {
        let text = r#"
[[deviation]]
check = "host.c.reset"
backend = "svm"
platform = "qemu-tcg"
upstream = "u"
reason = "r"
"#;
        let d = load(text).unwrap();
        let on = |platform| {
            d.find(
                &c(),
                HostKey {
                    backend: Backend::Svm,
                    vendor: Vendor::Amd,
                    platform,
                    ignore_msrs: false,
                },
            )
            .is_some()
        };
        assert!(on(Platform::QemuTcg));
        assert!(!on(Platform::Other));
        assert_eq!(
            Platform::from_model_name("QEMU TCG CPU version 2.5+"),
            Platform::QemuTcg
        );
        assert_eq!(Platform::from_model_name("AMD EPYC"), Platform::Other);
    }

    #[test]
    fn overlapping_records_are_refused() {
        let twice = ONE.replace("host_vendor = \"intel\"\n", "host_vendor = \"amd\"\n");
        let e = load(&twice).unwrap_err().to_string();
        assert!(e.contains("already has a record"), "{e}");
        let unqualified = ONE.replace("host_vendor = \"intel\"\n", "");
        assert!(load(&unqualified).is_err());
        let bad_vendor = ONE.replace("\"intel\"", "\"via\"");
        let e = load(&bad_vendor).unwrap_err().to_string();
        assert!(e.contains("t.toml"), "{e}");
    }
}
