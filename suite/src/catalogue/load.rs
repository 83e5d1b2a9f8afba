//! Parsing and validating catalogue files.

use super::*;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRaw {
    #[serde(default)]
    msr: Vec<Spanned<MsrRaw>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MsrRaw {
    index: u32,
    /// A range: `count` members at index, index + stride, ...; `{i}` in name and id is replaced
    /// by the member number.
    count: Option<u32>,
    stride: Option<u32>,
    name: String,
    id: String,
    cite: String,
    volatile: Option<VolatileRaw>,
    gate: Option<GateRaw>,
    host_read_may_fail: Option<String>,
    reset: Option<ResetRaw>,
    #[serde(default)]
    write: Vec<WriteRaw>,
    reserved: Option<ReservedRaw>,
    read_fails: Option<PathRaw>,
    backends: Option<BackendsRaw>,
    requires: Option<RequiresRaw>,
    #[serde(default)]
    setup: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequiresRaw {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    kvm_params: Vec<String>,
    #[serde(default)]
    cpuid_any: Vec<String>,
    #[serde(default)]
    listed: bool,
    cite: String,
    /// { kernel = "X.Y", cite }: before X.Y KVM listed the MSR whatever `kvm_params` said.
    params_listing_since: Option<SinceRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceRaw {
    kernel: String,
    cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRaw {
    value: u64,
    cite: String,
    #[serde(default)]
    when: Vec<ResetWhenRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetWhenRaw {
    backend: Option<String>,
    /// A quirk name (STUFF_FEATURE_MSRS, MISC_ENABLE_NO_MWAIT): the value with it disabled.
    quirk_disabled: Option<String>,
    value: u64,
    cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteRaw {
    name: String,
    value: u64,
    before: Option<u64>,
    path: Option<String>,
    #[serde(default = "same")]
    outcome: String,
    cite: String,
    #[serde(default)]
    when: Vec<WhenRaw>,
    #[serde(default)]
    cpuid_clear: Vec<String>,
}

fn same() -> String {
    "same".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenRaw {
    backend: Option<String>,
    kernel_before: Option<String>,
    #[serde(default)]
    kvm_cpuid_none: Vec<String>,
    guest_vendor: Option<String>,
    path: Option<String>,
    emulated: Option<bool>,
    outcome: String,
    cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservedRaw {
    mask: u64,
    base: Option<u64>,
    #[serde(default)]
    above_maxphyaddr: bool,
    cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathRaw {
    path: Option<String>,
    cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendsRaw {
    only: Vec<String>,
    cite: String,
}

/// Feature names checked against kvm/cpuid.rs FEATURES.
fn features(names: &[String], key: &str) -> std::result::Result<Vec<&'static str>, String> {
    names
        .iter()
        .map(|n| {
            crate::kvm::cpuid::feature(n)
                .map(|f| f.name)
                .ok_or_else(|| {
                    format!("{key} names unknown feature {n:?} (see kvm/cpuid.rs FEATURES)")
                })
        })
        .collect()
}

fn parse_backend(s: &str) -> std::result::Result<Backend, String> {
    match s {
        "vmx" => Ok(Backend::Vmx),
        "svm" => Ok(Backend::Svm),
        "pvm" => Ok(Backend::Pvm),
        o => Err(format!("backend {o:?}: expected vmx, svm or pvm")),
    }
}

fn parse_path(s: &str) -> std::result::Result<AccessPath, String> {
    match s {
        "host" => Ok(AccessPath::Host),
        "guest" => Ok(AccessPath::Guest),
        o => Err(format!("path {o:?}: expected host or guest")),
    }
}

fn parse_vendor(s: &str) -> std::result::Result<GuestVendor, String> {
    match s {
        "intel" => Ok(GuestVendor::Intel),
        "amd" => Ok(GuestVendor::Amd),
        o => Err(format!("guest_vendor {o:?}: expected intel or amd")),
    }
}

fn parse_outcome(s: &str) -> std::result::Result<WriteOutcome, String> {
    Ok(match s {
        "same" => WriteOutcome::Same,
        "low32" => WriteOutcome::Low32,
        "canonical" => WriteOutcome::Canonical,
        "canonical-48" => WriteOutcome::Canonical48,
        "ignored" => WriteOutcome::Ignored,
        "reads-zero" => WriteOutcome::ReadsZero,
        "rejected" => WriteOutcome::Rejected,
        "unsupported" => WriteOutcome::Unsupported,
        o => {
            return Err(format!(
                "outcome {o:?}: expected same, low32, canonical, canonical-48, ignored, reads-zero, rejected or unsupported"
            ))
        }
    })
}

fn parse_kernel(s: &str) -> std::result::Result<KernelVersion, String> {
    match KernelVersion::parse(s) {
        Some(v) if v.to_string() == s => Ok(v),
        _ => Err(format!(
            "kernel version {s:?}: expected MAJOR.MINOR, e.g. \"6.13\""
        )),
    }
}

fn parse_host_mode(s: &str) -> std::result::Result<HostWhenClosed, String> {
    Ok(match s {
        "exempt" => HostWhenClosed::Exempt,
        "advertised-zero" => HostWhenClosed::AdvertisedZero,
        "fails" => HostWhenClosed::Fails,
        "zero-only" => HostWhenClosed::ZeroOnly,
        "unsupported" => HostWhenClosed::Unsupported,
        other => {
            return Err(format!(
                "gate.host {other:?}: expected exempt, advertised-zero, fails, zero-only or unsupported"
            ))
        }
    })
}

fn cited(what: &str, cite: &str) -> std::result::Result<(), String> {
    if cite.trim().is_empty() {
        Err(format!("{what}.cite is empty: every rule names its source"))
    } else {
        Ok(())
    }
}

type Rules = (
    Option<ResetRule>,
    Vec<WriteRule>,
    Option<ReservedRule>,
    Option<PathRule>,
    Option<(Vec<Backend>, String)>,
    Option<Requirement>,
);

fn parse_rules(m: &mut MsrRaw) -> std::result::Result<Rules, String> {
    let reset = match m.reset.take() {
        None => None,
        Some(r) => {
            cited("reset", &r.cite)?;
            let mut by_backend = Vec::new();
            let mut quirk_off = Vec::new();
            for w in r.when {
                cited("reset.when", &w.cite)?;
                match (w.backend, w.quirk_disabled) {
                    (Some(b), None) => by_backend.push((parse_backend(&b)?, w.value, w.cite)),
                    (None, Some(q)) => {
                        let quirk = Quirk::parse(&q).ok_or_else(|| format!("reset.when.quirk_disabled {q:?}: expected STUFF_FEATURE_MSRS or MISC_ENABLE_NO_MWAIT"))?;
                        quirk_off.push((quirk, w.value, w.cite));
                    }
                    _ => {
                        return Err(
                            "reset.when needs exactly one of `backend`, `quirk_disabled`".into(),
                        )
                    }
                }
            }
            Some(ResetRule {
                value: r.value,
                cite: r.cite,
                by_backend,
                quirk_off,
            })
        }
    };
    let mut writes = Vec::new();
    for w in std::mem::take(&mut m.write) {
        cited(&format!("write {:?}", w.name), &w.cite)?;
        if w.name.is_empty()
            || !w
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!(
                "write name {:?} must be lowercase letters, digits and '-'",
                w.name
            ));
        }
        if writes.iter().any(|x: &WriteRule| x.name == w.name) {
            return Err(format!("write name {:?} used twice", w.name));
        }
        let mut when = Vec::new();
        for c in w.when {
            cited(&format!("write {:?} when", w.name), &c.cite)?;
            when.push(When {
                backend: c.backend.as_deref().map(parse_backend).transpose()?,
                kernel_before: c.kernel_before.as_deref().map(parse_kernel).transpose()?,
                kvm_cpuid_none: features(&c.kvm_cpuid_none, "when.kvm_cpuid_none")?,
                guest_vendor: c.guest_vendor.as_deref().map(parse_vendor).transpose()?,
                path: c.path.as_deref().map(parse_path).transpose()?,
                emulated: c.emulated,
                outcome: parse_outcome(&c.outcome)?,
                cite: c.cite,
            });
        }
        writes.push(WriteRule {
            name: w.name,
            value: w.value,
            before: w.before,
            path: w.path.as_deref().map(parse_path).transpose()?,
            outcome: parse_outcome(&w.outcome)?,
            cite: w.cite,
            when,
            cpuid_clear: features(&w.cpuid_clear, "write.cpuid_clear")?,
        });
    }
    let reserved = match m.reserved.take() {
        None => None,
        Some(r) => {
            cited("reserved", &r.cite)?;
            if r.mask == 0 {
                return Err("reserved.mask is 0".into());
            }
            Some(ReservedRule {
                mask: r.mask,
                base: r.base,
                above_maxphyaddr: r.above_maxphyaddr,
                cite: r.cite,
            })
        }
    };
    let read_fails = match m.read_fails.take() {
        None => None,
        Some(r) => {
            cited("read_fails", &r.cite)?;
            Some(PathRule {
                path: r.path.as_deref().map(parse_path).transpose()?,
                cite: r.cite,
            })
        }
    };
    let backends = match m.backends.take() {
        None => None,
        Some(b) => {
            cited("backends", &b.cite)?;
            let list = b
                .only
                .iter()
                .map(|s| parse_backend(s))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Some((list, b.cite))
        }
    };
    let requires = match m.requires.take() {
        None => None,
        Some(r) => {
            cited("requires", &r.cite)?;
            for c in &r.caps {
                if !crate::kvm::facts::MSR_CAPS.iter().any(|(n, _)| n == c) {
                    return Err(format!(
                        "requires.caps names {c:?}, which kvm/facts.rs MSR_CAPS does not know"
                    ));
                }
            }
            for p in &r.kvm_params {
                if !crate::kvm::facts::KVM_PARAMS.contains(&p.as_str()) {
                    return Err(format!("requires.kvm_params names {p:?}, which kvm/facts.rs KVM_PARAMS does not read"));
                }
            }
            for f in &r.cpuid_any {
                if crate::kvm::cpuid::feature(f).is_none() {
                    return Err(format!(
                        "requires.cpuid_any names {f:?}, which kvm/cpuid.rs FEATURES does not know"
                    ));
                }
            }
            if r.caps.is_empty() && r.kvm_params.is_empty() && r.cpuid_any.is_empty() && !r.listed {
                return Err(
                    "requires names nothing (caps, kvm_params, cpuid_any or listed = true)".into(),
                );
            }
            let params_listing_since = match r.params_listing_since {
                None => None,
                Some(since) => {
                    cited("requires.params_listing_since", &since.cite)?;
                    Some((parse_kernel(&since.kernel)?, since.cite))
                }
            };
            Some(Requirement {
                caps: r.caps,
                kvm_params: r.kvm_params,
                cpuid_any: r.cpuid_any,
                listed: r.listed,
                cite: r.cite,
                params_listing_since,
            })
        }
    };
    Ok((reset, writes, reserved, read_fails, backends, requires))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VolatileRaw {
    rule: String,
    #[serde(default)]
    vm_clock: bool,
    cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GateRaw {
    /// Any of these CPUID features.
    cpuid: Option<Vec<String>>,
    mcg_cap_bit: Option<u8>,
    host_only: Option<bool>,
    /// Any of these KVM PV feature bits, when KVM_CAP_ENFORCE_PV_FEATURE_CPUID is enabled.
    pv_feature: Option<Vec<String>>,
    /// "interface", "synic" or "syndbg": a Hyper-V MSR's guest gate.
    hyperv: Option<String>,
    /// "exempt", "advertised-zero", "fails" or "zero-only".
    host: String,
    cite: String,
    /// { kernel = "X.Y", host, cite }: the host behaviour on kernels older than X.Y.
    host_until: Option<HostUntilRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostUntilRaw {
    kernel: String,
    host: String,
    cite: String,
}

use crate::fixtures::line_of;

/// `volatile = { rule, vm_clock?, cite }`.
fn parse_volatile(v: VolatileRaw) -> std::result::Result<VolatileRule, String> {
    let rule = match v.rule.as_str() {
        "monotonic" => Volatility::Monotonic,
        "changes" => Volatility::Changes,
        other => {
            return Err(format!(
                "volatile.rule {other:?}: expected \"monotonic\" or \"changes\""
            ))
        }
    };
    if v.cite.trim().is_empty() {
        return Err("volatile.cite is empty".into());
    }
    Ok(VolatileRule {
        rule,
        vm_clock: v.vm_clock,
        cite: v.cite,
    })
}

/// `gate = { cpuid | pv_feature | hyperv | mcg_cap_bit | host_only, host, host_until?, cite }`.
fn parse_gate(g: GateRaw) -> std::result::Result<Gate, String> {
    let conds = usize::from(g.cpuid.is_some())
        + usize::from(g.mcg_cap_bit.is_some())
        + usize::from(g.host_only == Some(true))
        + usize::from(g.pv_feature.is_some())
        + usize::from(g.hyperv.is_some());
    if conds != 1 {
        return Err(
                "gate needs exactly one of `cpuid`, `pv_feature`, `hyperv`, `mcg_cap_bit`, `host_only = true`"
                    .into(),
            );
    }
    let condition = if let Some(hv) = g.hyperv {
        GateCondition::Hyperv(match hv.as_str() {
            "interface" => HvGate::Interface,
            "synic" => HvGate::Synic,
            "syndbg" => HvGate::Syndbg,
            other => {
                return Err(format!(
                    "gate.hyperv {other:?}: expected interface, synic or syndbg"
                ))
            }
        })
    } else if let Some(names) = g.pv_feature {
        let mut known = Vec::new();
        for n in &names {
            match crate::kvm::cpuid::feature(n) {
                    Some(f) if f.leaf == 0x4000_0001 => known.push(f.name),
                    _ => return Err(format!("gate.pv_feature names {n:?}, not a KVM_CPUID_FEATURES (0x40000001) bit in kvm/cpuid.rs")),
                }
        }
        GateCondition::PvFeature(known)
    } else if let Some(names) = g.cpuid {
        let mut known = Vec::new();
        for n in &names {
            match crate::kvm::cpuid::feature(n) {
                Some(f) => known.push(f.name),
                None => {
                    return Err(format!(
                        "gate.cpuid names unknown feature {n:?} (see kvm/cpuid.rs FEATURES)"
                    ))
                }
            }
        }
        GateCondition::AnyCpuid(known)
    } else if let Some(b) = g.mcg_cap_bit {
        if b > 63 {
            return Err(format!("gate.mcg_cap_bit {b} is not a bit of a 64-bit MSR"));
        }
        GateCondition::McgCapBit(b)
    } else {
        GateCondition::HostOnly
    };
    let host = parse_host_mode(&g.host)?;
    let host_until = match g.host_until {
        None => None,
        Some(u) => {
            if u.cite.trim().is_empty() {
                return Err("gate.host_until.cite is empty".into());
            }
            Some((parse_kernel(&u.kernel)?, parse_host_mode(&u.host)?, u.cite))
        }
    };
    if g.cite.trim().is_empty() {
        return Err("gate.cite is empty".into());
    }
    Ok(Gate {
        condition,
        host,
        cite: g.cite,
        host_until,
    })
}

/// `setup = [...]`: the steps a machine needs before the MSR behaves as catalogued.
fn parse_setup(steps: &[String]) -> std::result::Result<Vec<Setup>, String> {
    steps
        .iter()
        .map(|st| match st.as_str() {
            "x2apic-mode" => Ok(Setup::X2apicMode),
            "hyperv-interface" => Ok(Setup::HypervInterface),
            "hyperv-synic" => Ok(Setup::HypervSynic),
            other => Err(format!(
                "setup {other:?}: expected x2apic-mode, hyperv-interface or hyperv-synic"
            )),
        })
        .collect()
}

/// Parse one file. `text` is its contents; `file` names it in errors.
pub fn parse_file(file: &Path, text: &str) -> Result<Vec<MsrInfo>> {
    let err = |line: Option<usize>, message: String| Error::Fixture {
        file: file.to_path_buf(),
        line,
        message,
    };
    let raw: FileRaw = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        err(line, e.message().to_string())
    })?;
    let mut out = Vec::new();
    for m in raw.msr {
        let line = line_of(text, m.span().start);
        let mut m = m.into_inner();
        let rules = parse_rules(&mut m).map_err(|msg| {
            err(
                Some(line),
                format!("MSR {:#x} ({}): {msg}", m.index, m.name),
            )
        })?;
        let e = |msg: String| {
            err(
                Some(line),
                format!("MSR {:#x} ({}): {msg}", m.index, m.name),
            )
        };
        if m.cite.trim().is_empty() {
            return Err(e("`cite` is empty: every entry names its source".into()));
        }
        let plain_id = m.id.replace("{i}", "0");
        if plain_id.is_empty()
            || !plain_id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(e(format!(
                "`id` {:?} must be lowercase letters, digits and '-'",
                m.id
            )));
        }
        let volatile = m.volatile.map(parse_volatile).transpose().map_err(&e)?;
        let gate = m.gate.map(parse_gate).transpose().map_err(&e)?;
        let (reset, writes, reserved, read_fails, backends, requires) = rules;
        let setup = parse_setup(&m.setup).map_err(&e)?;
        let count = m.count.unwrap_or(1);
        let stride = m.stride.unwrap_or(1);
        if count == 0 || stride == 0 {
            return Err(e("count and stride must be at least 1".into()));
        }
        if count > 1 && !(m.name.contains("{i}") && m.id.contains("{i}")) {
            return Err(e("a range (count > 1) needs {i} in both name and id".into()));
        }
        for i in 0..count {
            let Some(index) = m.index.checked_add(i * stride) else {
                return Err(e("the range runs past index 0xffffffff".into()));
            };
            out.push(MsrInfo {
                index,
                name: m.name.replace("{i}", &i.to_string()),
                id: m.id.replace("{i}", &i.to_string()),
                cite: m.cite.clone(),
                volatile: volatile.clone(),
                gate: gate.clone(),
                host_read_may_fail: m.host_read_may_fail.clone(),
                reset: reset.clone(),
                writes: writes.clone(),
                reserved: reserved.clone(),
                read_fails: read_fails.clone(),
                backends: backends.clone(),
                requires: requires.clone(),
                setup: setup.clone(),
                source: (file.to_path_buf(), line),
            });
        }
    }
    Ok(out)
}

/// Load every `*.toml` in `dir` (sorted by name) and reject duplicate indices and ids.
pub fn load_dir(dir: &Path) -> Result<Catalogue> {
    load_files(crate::fixtures::toml_files(dir, "catalogue")?)
}

/// Load `(file, text)` pairs in order and reject duplicate indices and ids.
pub fn load_files(files: Vec<(PathBuf, String)>) -> Result<Catalogue> {
    let mut cat = Catalogue::default();
    let mut ids: BTreeMap<String, (PathBuf, usize)> = BTreeMap::new();
    for (f, text) in files {
        for m in parse_file(&f, &text)? {
            if let Some(prev) = cat.msrs.get(&m.index) {
                return Err(Error::Fixture {
                    file: f.clone(),
                    line: Some(m.source.1),
                    message: format!(
                        "duplicate index {:#x}: already defined at {}:{}",
                        m.index,
                        prev.source.0.display(),
                        prev.source.1
                    ),
                });
            }
            if let Some(prev) = ids.insert(m.id.clone(), m.source.clone()) {
                return Err(Error::Fixture {
                    file: f.clone(),
                    line: Some(m.source.1),
                    message: format!(
                        "duplicate id {:?}: already used at {}:{}",
                        m.id,
                        prev.0.display(),
                        prev.1
                    ),
                });
            }
            cat.msrs.insert(m.index, m);
        }
    }
    cat.index_order();
    Ok(cat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn parse(text: &str) -> Result<Vec<MsrInfo>> {
        parse_file(Path::new("t.toml"), text)
    }

    fn err_text(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_complete_entry() {
        let m = parse(
            r#"
[[msr]]
index = 0x10
name = "IA32_TIME_STAMP_COUNTER"
id = "tsc"
cite = "SDM"
volatile = { rule = "monotonic", cite = "SDM 18.17" }
gate = { cpuid = ["RDTSCP", "RDPID"], host = "exempt", cite = "x86.c" }
"#,
        )
        .unwrap();
        assert_eq!(m[0].index, 0x10);
        assert_eq!(m[0].source.1, 2);
        assert_eq!(m[0].volatile.as_ref().unwrap().rule, Volatility::Monotonic);
        assert_eq!(
            m[0].gate.as_ref().unwrap().condition,
            GateCondition::AnyCpuid(vec!["RDTSCP", "RDPID"])
        );
    }

    #[rstest]
    #[case::unknown_key(
        "[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ncolour = 1\n",
        "t.toml:6",
        "unknown field `colour`"
    )]
    #[case::malformed_number(
        "[[msr]]\nindex = 0xzz\nname = \"A\"\nid = \"a\"\ncite = \"x\"\n",
        "t.toml:2",
        ""
    )]
    #[case::no_citation(
        "[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \" \"\n",
        "t.toml:1",
        "cite"
    )]
    #[case::missing_citation(
        "[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\n",
        "t.toml:1",
        "missing field `cite`"
    )]
    #[case::bad_rule("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nvolatile = { rule = \"often\", cite = \"c\" }\n", "t.toml:1", "often")]
    #[case::unknown_feature("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = { cpuid = [\"WARP\"], host = \"exempt\", cite = \"c\" }\n", "t.toml:1", "WARP")]
    #[case::gate_without_cite("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = { host_only = true, host = \"exempt\", cite = \"\" }\n", "t.toml:1", "gate.cite")]
    #[case::bad_id(
        "[[msr]]\nindex = 1\nname = \"A\"\nid = \"A B\"\ncite = \"x\"\n",
        "t.toml:1",
        "id"
    )]
    #[case::bad_kernel_version("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"w\", value = 1, cite = \"c\", when = [{ kernel_before = \"6\", outcome = \"rejected\", cite = \"c\" }] }]\n", "t.toml:1", "MAJOR.MINOR")]
    #[case::bad_hyperv_gate("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = { hyperv = \"vmbus\", host = \"exempt\", cite = \"c\" }\n", "t.toml:1", "vmbus")]
    #[case::host_until_without_cite("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = { host_only = true, host = \"exempt\", cite = \"c\", host_until = { kernel = \"6.13\", host = \"fails\", cite = \"\" } }\n", "t.toml:1", "host_until.cite")]
    #[case::unknown_cpuid_condition("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"w\", value = 1, cite = \"c\", when = [{ kvm_cpuid_none = [\"WARP\"], outcome = \"rejected\", cite = \"c\" }] }]\n", "t.toml:1", "WARP")]
    fn rejects_bad_entries_naming_file_and_line(
        #[case] text: &str,
        #[case] place: &str,
        #[case] what: &str,
    ) {
        let e = err_text(text);
        assert!(e.starts_with(place), "{e}");
        assert!(e.contains(what), "{e}");
    }

    #[test]
    fn rejects_duplicate_indices_across_files() {
        let dir = std::env::temp_dir().join(format!("kvm-msr-cat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.toml"),
            "[[msr]]\nindex = 0x10\nname = \"A\"\nid = \"a\"\ncite = \"x\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("b.toml"),
            "\n[[msr]]\nindex = 0x10\nname = \"B\"\nid = \"b\"\ncite = \"x\"\n",
        )
        .unwrap();
        let e = load_dir(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("b.toml:2") && e.contains("duplicate index 0x10") && e.contains("a.toml:1"),
            "{e}"
        );
    }

    #[test]
    fn version_conditions_follow_the_running_kernel() {
        let m = parse(
            r#"
[[msr]]
index = 0x10a
name = "A"
id = "a"
cite = "x"
gate = { cpuid = ["ARCH_CAPABILITIES"], host = "advertised-zero", cite = "new", host_until = { kernel = "6.13", host = "exempt", cite = "old" } }
write = [{ name = "w", value = 0, outcome = "unsupported", cite = "new", when = [{ kernel_before = "6.13", outcome = "rejected", cite = "old" }] }]
"#,
        )
        .unwrap();
        let g = m[0].gate.as_ref().unwrap();
        let (old, new) = (
            KernelVersion::parse("6.12.118+deb13-amd64"),
            KernelVersion::parse("7.2.13"),
        );
        assert_eq!(old, Some(KernelVersion(6, 12)));
        assert_eq!(g.host_on(old), HostWhenClosed::Exempt);
        assert_eq!(g.host_on(new), HostWhenClosed::AdvertisedZero);
        assert_eq!(g.host_on(None), HostWhenClosed::AdvertisedZero);
        assert_eq!(g.host_cite(old), "old");
        let rc = |kernel| RuleContext {
            backend: Backend::Svm,
            kernel,
            kvm_cpuid: None,
            guest_vendor: None,
            path: AccessPath::Guest,
            emulated: false,
        };
        assert_eq!(
            m[0].writes[0].outcome_for(rc(old)).0,
            WriteOutcome::Rejected
        );
        assert_eq!(
            m[0].writes[0].outcome_for(rc(new)).0,
            WriteOutcome::Unsupported
        );
        assert_eq!(
            m[0].writes[0].outcome_for(rc(None)).0,
            WriteOutcome::Unsupported
        );
        assert!(KernelVersion::parse("unknown").is_none());
    }

    #[test]
    fn hyperv_gates_open_with_the_hyperv_interface() {
        let gate = |hv: &str| {
            parse(&format!("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\ngate = {{ hyperv = \"{hv}\", host = \"exempt\", cite = \"c\" }}\n"))
                .unwrap()[0]
                .gate
                .clone()
                .unwrap()
        };
        let kvm_leaves = crate::kvm::CpuidTable {
            entries: Vec::new(),
        };
        let mut hv = kvm_leaves.clone();
        hv.set_hyperv_interface();
        for name in ["interface", "syndbg"] {
            let g = gate(name);
            assert_eq!(
                g.state(Some(&kvm_leaves), None, false, false),
                GateState::Closed,
                "{name}"
            );
            assert_eq!(
                g.state(Some(&hv), None, false, false),
                GateState::Open,
                "{name}"
            );
            assert_eq!(
                g.state(None, None, false, false),
                GateState::Closed,
                "{name}"
            );
        }
        let synic = gate("synic");
        assert_eq!(
            synic.state(Some(&hv), None, false, false),
            GateState::Closed
        );
        assert_eq!(synic.state(Some(&hv), None, false, true), GateState::Open);
        assert_eq!(
            synic.state(Some(&kvm_leaves), None, false, true),
            GateState::Closed
        );
    }

    #[test]
    fn ranges_expand_to_their_members() {
        let m = parse("[[msr]]\nindex = 0x400\ncount = 3\nstride = 4\nname = \"IA32_MC{i}_CTL\"\nid = \"mc{i}-ctl\"\ncite = \"SDM\"\n").unwrap();
        let got: Vec<(u32, &str)> = m.iter().map(|x| (x.index, x.id.as_str())).collect();
        assert_eq!(
            got,
            [(0x400, "mc0-ctl"), (0x404, "mc1-ctl"), (0x408, "mc2-ctl")]
        );
    }

    #[test]
    fn write_rules_pick_the_first_matching_condition() {
        let m = parse(
            r#"
[[msr]]
index = 0x175
name = "IA32_SYSENTER_ESP"
id = "sysenter-esp"
cite = "SDM"
[[msr.write]]
name = "high"
value = 0x123456789abc
cite = "x86.c"
when = [{ backend = "svm", guest_vendor = "amd", outcome = "low32", cite = "svm.c" }]
"#,
        )
        .unwrap();
        let w = &m[0].writes[0];
        let rc = |backend, v| RuleContext {
            kernel: None,
            kvm_cpuid: None,
            backend,
            guest_vendor: Some(v),
            path: AccessPath::Guest,
            emulated: false,
        };
        assert_eq!(
            w.outcome_for(rc(Backend::Svm, GuestVendor::Amd)).0,
            WriteOutcome::Low32
        );
        assert_eq!(
            w.outcome_for(rc(Backend::Svm, GuestVendor::Intel)).0,
            WriteOutcome::Same
        );
        assert_eq!(
            w.outcome_for(rc(Backend::Vmx, GuestVendor::Amd)).0,
            WriteOutcome::Same
        );
        assert!(w.vendor_dependent());
    }

    #[test]
    fn supported_cpuid_and_emulation_conditions_match() {
        let text = concat!(
            "[[msr]]\nindex = 0xc0000100\nname = \"IA32_FS_BASE\"\nid = \"fs-base\"\ncite = \"SDM\"\n",
            "write = [{ name = \"la57-only\", value = 0x0012_3456_789a_bcd0, cpuid_clear = [\"LA57\"], cite = \"x86.c\", when = [",
            "{ kvm_cpuid_none = [\"LA57\"], outcome = \"rejected\", cite = \"48\" }, ",
            "{ emulated = true, outcome = \"canonical\", cite = \"fep\" }] }]\n",
        );
        let m = parse(text).unwrap();
        let w = &m[0].writes[0];
        assert_eq!(w.cpuid_clear, ["LA57"]);
        let la57 = crate::kvm::cpuid::feature("LA57").unwrap();
        let mut with = crate::kvm::CpuidTable {
            entries: vec![kvm_bindings::kvm_cpuid_entry2 {
                function: 7,
                ..Default::default()
            }],
        };
        let without = with.clone();
        assert!(with.set(la57, true));
        let rc = |t, path, emulated| RuleContext {
            backend: Backend::Svm,
            kernel: None,
            kvm_cpuid: t,
            guest_vendor: None,
            path,
            emulated,
        };
        let o = |t, path, e| w.outcome_for(rc(t, path, e)).0;
        assert_eq!(
            o(Some(&without), AccessPath::Host, false),
            WriteOutcome::Rejected
        );
        assert_eq!(o(Some(&with), AccessPath::Host, false), WriteOutcome::Same);
        // No supported CPUID to judge by: the condition does not match.
        assert_eq!(o(None, AccessPath::Host, false), WriteOutcome::Same);
        assert_eq!(
            o(Some(&with), AccessPath::Guest, true),
            WriteOutcome::Canonical
        );
        assert_eq!(o(Some(&with), AccessPath::Guest, false), WriteOutcome::Same);
        // `emulated` is about the guest's instruction: a host write never matches it.
        assert_eq!(o(Some(&with), AccessPath::Host, true), WriteOutcome::Same);
    }

    #[rstest]
    #[case::uncited_write("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"v\", value = 1, cite = \"\" }]\n", "write \"v\".cite")]
    #[case::bad_outcome("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nwrite = [{ name = \"v\", value = 1, outcome = \"maybe\", cite = \"c\" }]\n", "maybe")]
    #[case::range_without_placeholder(
        "[[msr]]\nindex = 1\ncount = 2\nname = \"A\"\nid = \"a\"\ncite = \"x\"\n",
        "{i}"
    )]
    #[case::bad_backend("[[msr]]\nindex = 1\nname = \"A\"\nid = \"a\"\ncite = \"x\"\nbackends = { only = [\"tcg\"], cite = \"c\" }\n", "tcg")]
    fn rejects_bad_rules(#[case] text: &str, #[case] what: &str) {
        let e = err_text(text);
        assert!(e.starts_with("t.toml:1"), "{e}");
        assert!(e.contains(what), "{e}");
    }

    #[test]
    fn the_shipped_catalogue_loads() {
        let c = Catalogue::load_default().unwrap();
        assert!(!c.msrs.is_empty());
    }
}
