//! The MSR catalogue: what each MSR is and the documented rules the checks derive expectations
//! from, loaded from `fixtures/catalogue/*.toml`. Loading validates the data; every error names
//! the file and line.

mod load;
pub mod render;

pub use load::{load_dir, load_files, parse_file};

use crate::kvm::cpuid::{self, CpuidTable};
pub use crate::kvm::facts::Backend;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How an MSR's value may change between two reads with no write in between.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Volatility {
    /// Counts up: a later read is never smaller than an earlier one.
    Monotonic,
    /// May change in either direction.
    Changes,
}

/// A condition a guest access needs (one of the listed CPUID features, or a vCPU state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum GateCondition {
    /// Any of these CPUID features in the vCPU's effective CPUID (KVM's `guest_cpu_cap_has`).
    AnyCpuid(Vec<&'static str>),
    /// A bit of the vCPU's MCG_CAP (MSR 0x179), e.g. 8 = MCG_CTL_P.
    McgCapBit(u8),
    /// Guest accesses always fault; only the host may access it.
    HostOnly,
    /// Any of these KVM_CPUID_FEATURES bits, enforced only once userspace enables
    /// KVM_CAP_ENFORCE_PV_FEATURE_CPUID on the vCPU (cpuid.h guest_pv_has).
    PvFeature(Vec<&'static str>),
    /// The Hyper-V interface in the vCPU's CPUID (hyperv.c kvm_hv_get/set_msr_common:
    /// `!host && !vcpu->arch.hyperv_enabled -> 1`), plus what the MSR's group needs.
    Hyperv(HvGate),
}

/// What a Hyper-V MSR needs beyond the Hyper-V interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HvGate {
    /// CPUID 0x40000001.EAX = "Hv#1" (cpuid.c kvm_cpuid_has_hyperv).
    Interface,
    /// ... and SynIC activated on the vCPU (KVM_CAP_HYPERV_SYNIC/SYNIC2, setup `hyperv-synic`).
    Synic,
    /// ... and CPUID 0x40000082.EAX bit 1, HV_X64_SYNDBG_CAP_ALLOW_KERNEL_DEBUGGING
    /// (hyperv.c kvm_hv_is_syndbg_enabled).
    Syndbg,
}

/// CPUID 0x40000001.EAX of a vCPU with the Hyper-V interface: "Hv#1"
/// (HYPERV_CPUID_SIGNATURE_EAX, cpuid.c kvm_cpuid_has_hyperv).
pub const HYPERV_SIGNATURE_EAX: u32 = 0x3123_7648;

/// What a host access does while the gate is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostWhenClosed {
    /// The gate applies to guest accesses only; the host reads and writes normally.
    Exempt,
    /// KVM_MSR_RET_UNSUPPORTED: an advertised MSR reads 0 and accepts writes of 0 (x86.c
    /// `kvm_do_msr_access`).
    AdvertisedZero,
    /// The host access fails too.
    Fails,
    /// KVM_MSR_RET_UNSUPPORTED without the advertised-MSR exemption (kernels before 6.12 for
    /// emulated MSRs): host reads and writes fail, unless kvm.ignore_msrs, which makes every
    /// access succeed (reads 0, writes dropped) for host and guest alike.
    Unsupported,
    /// Host reads succeed; a host write of 0 succeeds and any other value fails, whatever
    /// kvm.ignore_msrs says (the handler returns 1, not KVM_MSR_RET_UNSUPPORTED): the SynIC and
    /// synthetic timer MSRs (hyperv.c synic_set_msr / stimer_set_config, b1e34d325397, v5.18).
    ZeroOnly,
    /// Reads are gated for the guest only (the host reads the value, the guest's RDMSR #GPs even
    /// under kvm.ignore_msrs: the read handler returns 1); writes return KVM_MSR_RET_UNSUPPORTED
    /// for host and guest alike: a host write of 0 to an advertised MSR succeeds, any other
    /// fails, and under kvm.ignore_msrs every write, the guest's included, is accepted and dropped
    /// (x86.c kvm_do_msr_access). IA32_XSS from 338543cbe033 (6.18).
    WriteUnsupported,
}

#[derive(Clone, Debug, Serialize)]
pub struct Gate {
    pub condition: GateCondition,
    pub host: HostWhenClosed,
    pub cite: String,
    /// On kernels older than this version the host behaves as given instead (with its cite).
    pub host_until: Option<(KernelVersion, HostWhenClosed, String)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VolatileRule {
    pub rule: Volatility,
    /// The value follows the VM's own clock: a fresh VM restarts it, KVM_SET_MSRS does not
    /// restore it (a VMM carries it with KVM_GET_CLOCK/KVM_SET_CLOCK).
    pub vm_clock: bool,
    pub cite: String,
}

/// One catalogued MSR.
#[derive(Clone, Debug, Serialize)]
pub struct MsrInfo {
    pub index: u32,
    /// Architectural or KVM name, e.g. IA32_TIME_STAMP_COUNTER.
    pub name: String,
    /// Short, stable identifier used in check ids, e.g. `tsc`.
    pub id: String,
    /// Where the MSR is defined (SDM/APM/msr.rst) and where KVM handles it.
    pub cite: String,
    pub volatile: Option<VolatileRule>,
    pub gate: Option<Gate>,
    /// Why a host read on a fresh vCPU may fail, if it may.
    pub host_read_may_fail: Option<String>,
    /// Value after vCPU creation.
    pub reset: Option<ResetRule>,
    /// Values written, one check each per path, with the documented outcome.
    pub writes: Vec<WriteRule>,
    /// Bits that must be rejected, walked one at a time.
    pub reserved: Option<ReservedRule>,
    /// Reads that must fail (write-only MSRs).
    pub read_fails: Option<PathRule>,
    /// Backends that implement the MSR at all (None: every backend).
    pub backends: Option<(Vec<Backend>, String)>,
    /// Capabilities, kvm parameters or host support the MSR needs.
    pub requires: Option<Requirement>,
    /// State the host puts the vCPU in before every check of this MSR.
    pub setup: Vec<Setup>,
    /// Where the entry was read from, for messages.
    pub source: (PathBuf, usize),
}

/// A state the host establishes before a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// IA32_APIC_BASE = 0xfee00d00 (enabled, x2APIC, BSP): the x2APIC registers exist as MSRs
    /// only in x2APIC mode (SDM vol. 3A 12.12.1; lapic.c kvm_x2apic_msr_read).
    X2apicMode,
    /// The vCPU's CPUID presents the Hyper-V interface instead of KVM's leaves
    /// (`CpuidTable::set_hyperv_interface`), so Hyper-V MSRs are open to the guest.
    HypervInterface,
    /// The Hyper-V interface and SynIC activated on the vCPU (KVM_ENABLE_CAP
    /// KVM_CAP_HYPERV_SYNIC2, hyperv.c kvm_hv_activate_synic), for the SynIC and timer MSRs.
    HypervSynic,
}

/// What must hold on the host for KVM to implement an MSR at all.
#[derive(Clone, Debug, Serialize)]
pub struct Requirement {
    /// KVM_CHECK_EXTENSION names (see kvm/facts.rs MSR_CAPS) that must be non-zero.
    pub caps: Vec<String>,
    /// kvm module parameters that must be enabled (e.g. enable_pmu).
    pub kvm_params: Vec<String>,
    /// CPUID features of which KVM_GET_SUPPORTED_CPUID must have at least one (KVM's caps:
    /// kvm_cpu_cap_has, which KVM_GET_SUPPORTED_CPUID reports).
    pub cpuid_any: Vec<String>,
    /// KVM lists the MSR in KVM_GET_MSR_INDEX_LIST or KVM_GET_MSR_FEATURE_INDEX_LIST on this host
    /// (KVM lists such MSRs only when the host supports them: x86.c kvm_probe_msr_to_save).
    pub listed: bool,
    pub cite: String,
    /// Kernels older than this listed the MSR whatever `kvm_params` said (with the cite of the
    /// commit that made the listing follow them).
    pub params_listing_since: Option<(KernelVersion, String)>,
}

/// Which access path a rule is about.
pub use crate::machine::AccessPath;

/// Which guest vendor class a rule is about (KVM's guest_cpuid_is_intel/amd_compatible).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestVendor {
    Intel,
    Amd,
}

/// What a write does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteOutcome {
    /// Accepted; reads back the value written.
    Same,
    /// Accepted; reads back the low 32 bits.
    Low32,
    /// Accepted; reads back the value made canonical at KVM's address width: 57 bits with KVM's
    /// LA57 capability, 48 without (x86.h max_host_virt_addr_bits).
    Canonical,
    /// Accepted; reads back the value made canonical at 48 bits (the width of the guest's
    /// 4-level paging, which this suite's guests use).
    Canonical48,
    /// Accepted; the MSR keeps its previous value.
    Ignored,
    /// Accepted; reads back 0.
    ReadsZero,
    /// Rejected: the host write fails, the guest gets #GP.
    Rejected,
    /// KVM_MSR_RET_UNSUPPORTED (or 6.1's KVM_MSR_RET_INVALID): rejected, but with kvm.ignore_msrs
    /// accepted and dropped, the value unchanged (x86.c kvm_do_msr_access /
    /// kvm_msr_ignored_check).
    Unsupported,
}

pub use crate::kvm::facts::KernelVersion;

/// Conditions under which a different outcome applies; all given fields must match.
#[derive(Clone, Debug, Serialize)]
pub struct When {
    pub backend: Option<Backend>,
    /// Kernels older than this version (the rule names the commit that changed it there).
    pub kernel_before: Option<KernelVersion>,
    /// KVM_GET_SUPPORTED_CPUID has none of these features (e.g. the host lacks IBPB).
    pub kvm_cpuid_none: Vec<&'static str>,
    pub guest_vendor: Option<GuestVendor>,
    pub path: Option<AccessPath>,
    /// Whether the guest's WRMSR goes through KVM's instruction emulator (the `guest-fep.*`
    /// twins) rather than straight to the CPU or KVM's intercept: for MSRs a backend passes
    /// through to the hardware, only the emulated path applies KVM's own checks.
    pub emulated: Option<bool>,
    pub outcome: WriteOutcome,
    pub cite: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct WriteRule {
    /// Short name used in the check id (`host.<msr>.write.<name>`).
    pub name: String,
    pub value: u64,
    /// A value the host writes first, so the rule does not depend on the reset value.
    pub before: Option<u64>,
    /// Only this path writes (None: both).
    pub path: Option<AccessPath>,
    pub outcome: WriteOutcome,
    pub cite: String,
    pub when: Vec<When>,
    /// CPUID features cleared from the vCPU's CPUID (KVM_SET_CPUID2, checked with KVM_GET_CPUID2)
    /// for this write, to show the outcome does not follow them; the checks skip where
    /// KVM_GET_SUPPORTED_CPUID has none of them (nothing to clear).
    pub cpuid_clear: Vec<&'static str>,
}

/// The facts a rule's conditions are evaluated against.
#[derive(Clone, Copy, Debug)]
pub struct RuleContext<'a> {
    pub backend: Backend,
    pub kernel: Option<KernelVersion>,
    /// KVM_GET_SUPPORTED_CPUID, for `kvm_cpuid_none` (None: such conditions do not match).
    pub kvm_cpuid: Option<&'a CpuidTable>,
    pub guest_vendor: Option<GuestVendor>,
    pub path: AccessPath,
    /// The guest's access goes through KVM's instruction emulator (forced emulation).
    pub emulated: bool,
}

impl WriteRule {
    /// The outcome and its citation under `rc` (first matching `when`, else the default).
    pub fn outcome_for(&self, rc: RuleContext<'_>) -> (WriteOutcome, &str) {
        for w in &self.when {
            let ok = w.backend.is_none_or(|b| b == rc.backend)
                && w.kernel_before
                    .is_none_or(|v| rc.kernel.is_some_and(|k| k < v))
                && (w.kvm_cpuid_none.is_empty()
                    || rc.kvm_cpuid.is_some_and(|t| {
                        !w.kvm_cpuid_none
                            .iter()
                            .any(|n| cpuid::feature(n).is_some_and(|f| t.has(f)))
                    }))
                && w.guest_vendor.is_none_or(|v| Some(v) == rc.guest_vendor)
                && w.path.is_none_or(|p| p == rc.path)
                && w.emulated
                    .is_none_or(|e| rc.path == AccessPath::Guest && e == rc.emulated);
            if ok {
                return (w.outcome, &w.cite);
            }
        }
        (self.outcome, &self.cite)
    }

    /// Whether the outcome depends on the guest's vendor (then both vendors are exercised).
    pub fn vendor_dependent(&self) -> bool {
        self.when.iter().any(|w| w.guest_vendor.is_some())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ResetRule {
    pub value: u64,
    pub cite: String,
    /// Per-backend values that differ, with their own citation.
    pub by_backend: Vec<(Backend, u64, String)>,
    /// Values with a KVM quirk disabled (KVM_CAP_DISABLE_QUIRKS2), with their citation.
    pub quirk_off: Vec<(Quirk, u64, String)>,
}

impl ResetRule {
    /// The reset value on `backend` with the quirks in `quirks_off` disabled.
    pub fn value_for(&self, backend: Backend, quirks_off: u64) -> (u64, &str) {
        if let Some((_, v, c)) = self
            .quirk_off
            .iter()
            .find(|(q, _, _)| quirks_off & q.bit() != 0)
        {
            return (*v, c);
        }
        self.by_backend
            .iter()
            .find(|(b, _, _)| *b == backend)
            .map(|(_, v, c)| (*v, c.as_str()))
            .unwrap_or((self.value, &self.cite))
    }
}

/// KVM quirks that change MSR behaviour (api.rst 7.31 KVM_CAP_DISABLE_QUIRKS2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Quirk {
    /// KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT (bit 4).
    MiscEnableNoMwait,
    /// KVM_X86_QUIRK_STUFF_FEATURE_MSRS (bit 8).
    StuffFeatureMsrs,
}

impl Quirk {
    pub fn bit(self) -> u64 {
        match self {
            Quirk::MiscEnableNoMwait => u64::from(kvm_bindings::KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT),
            Quirk::StuffFeatureMsrs => u64::from(kvm_bindings::KVM_X86_QUIRK_STUFF_FEATURE_MSRS),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Quirk::MiscEnableNoMwait => "MISC_ENABLE_NO_MWAIT",
            Quirk::StuffFeatureMsrs => "STUFF_FEATURE_MSRS",
        }
    }

    pub fn parse(s: &str) -> Option<Quirk> {
        [Quirk::MiscEnableNoMwait, Quirk::StuffFeatureMsrs]
            .into_iter()
            .find(|q| q.name() == s)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ReservedRule {
    pub mask: u64,
    /// The value each reserved bit is set on top of (default: the reset value, else 0).
    pub base: Option<u64>,
    /// Bits from the vCPU's MAXPHYADDR (CPUID 0x80000008 EAX[7:0], 36 without the leaf) up are
    /// reserved too (x86.c kvm_vcpu_reserved_gpa_bits_raw, for MSRs that hold a GPA).
    pub above_maxphyaddr: bool,
    pub cite: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PathRule {
    /// None: both paths.
    pub path: Option<AccessPath>,
    pub cite: String,
}

/// Whether a gate is open for a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateState {
    Open,
    Closed,
}

// The catalogue sits above the machine, so the question "is this gate open on that machine"
// is answered here, where both are known.
impl crate::machine::Machine {
    /// Whether `gate` is open for this vCPU: its effective CPUID, its MCG_CAP and whether PV
    /// feature enforcement is on (Gate::state).
    pub fn gate_state(&self, gate: &Gate) -> GateState {
        gate.state(
            self.vcpu.effective_cpuid.as_ref(),
            self.vcpu.get_msr(crate::msr_index::IA32_MCG_CAP),
            self.vcpu.pv_enforced,
            self.vcpu.synic_active,
        )
    }
}

impl Gate {
    /// Evaluate against the vCPU's effective CPUID and its MCG_CAP (`None` for a bare vCPU).
    pub fn state(
        &self,
        cpuid: Option<&CpuidTable>,
        mcg_cap: Option<u64>,
        pv_enforced: bool,
        synic_active: bool,
    ) -> GateState {
        let open = match &self.condition {
            GateCondition::AnyCpuid(names) => cpuid.is_some_and(|c| {
                names
                    .iter()
                    .any(|n| cpuid::feature(n).is_some_and(|f| c.has(f)))
            }),
            GateCondition::McgCapBit(bit) => mcg_cap.is_some_and(|v| v & (1 << bit) != 0),
            GateCondition::HostOnly => false,
            GateCondition::PvFeature(names) => {
                !pv_enforced
                    || cpuid.is_some_and(|c| {
                        names
                            .iter()
                            .any(|n| cpuid::feature(n).is_some_and(|f| c.has(f)))
                    })
            }
            GateCondition::Hyperv(hv) => cpuid.is_some_and(|c| {
                let interface =
                    c.reg(0x4000_0001, 0, cpuid::Reg::Eax) == Some(HYPERV_SIGNATURE_EAX);
                interface
                    && match hv {
                        HvGate::Interface => true,
                        HvGate::Synic => synic_active,
                        HvGate::Syndbg => c
                            .reg(0x4000_0082, 0, cpuid::Reg::Eax)
                            .is_some_and(|a| a & 2 != 0),
                    }
            }),
        };
        if open {
            GateState::Open
        } else {
            GateState::Closed
        }
    }

    /// What a host access does while the gate is closed, on kernel `kernel`.
    pub fn host_on(&self, kernel: Option<KernelVersion>) -> HostWhenClosed {
        match &self.host_until {
            Some((v, h, _)) if kernel.is_some_and(|k| k < *v) => *h,
            _ => self.host,
        }
    }

    /// The citation for the host behaviour on `kernel`.
    pub fn host_cite(&self, kernel: Option<KernelVersion>) -> &str {
        match &self.host_until {
            Some((v, _, c)) if kernel.is_some_and(|k| k < *v) => c,
            _ => &self.cite,
        }
    }

    pub fn describe(&self) -> String {
        match &self.condition {
            GateCondition::AnyCpuid(n) => format!("CPUID {}", n.join(" or ")),
            GateCondition::McgCapBit(b) => format!("MCG_CAP bit {b}"),
            GateCondition::HostOnly => "host-only".into(),
            GateCondition::PvFeature(n) => {
                format!("KVM PV feature {} (when enforced)", n.join(" or "))
            }
            GateCondition::Hyperv(HvGate::Interface) => {
                "Hyper-V interface (CPUID 0x40000001.EAX \"Hv#1\")".into()
            }
            GateCondition::Hyperv(HvGate::Synic) => {
                "Hyper-V interface and SynIC activated (KVM_CAP_HYPERV_SYNIC2)".into()
            }
            GateCondition::Hyperv(HvGate::Syndbg) => {
                "Hyper-V interface and CPUID 0x40000082.EAX[1] (synthetic debugger)".into()
            }
        }
    }
}

/// The whole catalogue, keyed by index.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    pub msrs: BTreeMap<u32, MsrInfo>,
    /// The keys of `msrs` in order, for picking the n-th MSR in O(1) (the fuzzers do, per
    /// operation); filled when the catalogue is loaded.
    order: Vec<u32>,
}

impl Catalogue {
    /// The `n`-th catalogued index (counting round), or None for an empty catalogue.
    pub fn nth_index(&self, n: usize) -> Option<u32> {
        if self.order.len() != self.msrs.len() {
            // Built by hand rather than loaded: walk the map.
            let len = self.msrs.len();
            return (len > 0).then(|| *self.msrs.keys().nth(n % len).expect("n % len < len"));
        }
        (!self.order.is_empty()).then(|| self.order[n % self.order.len()])
    }

    /// Recompute `order` after `msrs` changed.
    pub(crate) fn index_order(&mut self) {
        self.order = self.msrs.keys().copied().collect();
    }

    pub fn get(&self, index: u32) -> Option<&MsrInfo> {
        self.msrs.get(&index)
    }

    /// The identifier used in check ids: the catalogue's, or `msr-0x<index>`.
    pub fn slug(&self, index: u32) -> String {
        self.get(index)
            .map(|m| m.id.clone())
            .unwrap_or_else(|| format!("msr-{index:#x}"))
    }

    pub fn name(&self, index: u32) -> String {
        self.get(index)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("MSR {index:#x}"))
    }

    /// The catalogue: `fixtures/catalogue` as embedded at build time, or the given tree's.
    pub fn load_default() -> crate::Result<Catalogue> {
        load_files(crate::fixtures::files("catalogue", "catalogue")?)
    }
}
