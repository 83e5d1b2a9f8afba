//! The catalogue files' TOML shape, as serde reads it (spans kept for file:line errors).

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRaw {
    #[serde(default)]
    pub(super) msr: Vec<Spanned<MsrRaw>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MsrRaw {
    pub(super) index: u32,
    /// A range: `count` members at index, index + stride, ...; `{i}` in name and id is replaced
    /// by the member number.
    pub(super) count: Option<u32>,
    pub(super) stride: Option<u32>,
    pub(super) name: String,
    pub(super) id: String,
    pub(super) cite: String,
    pub(super) volatile: Option<VolatileRaw>,
    pub(super) gate: Option<GateRaw>,
    pub(super) host_read_may_fail: Option<String>,
    pub(super) reset: Option<ResetRaw>,
    #[serde(default)]
    pub(super) write: Vec<WriteRaw>,
    pub(super) reserved: Option<ReservedRaw>,
    pub(super) read_fails: Option<PathRaw>,
    pub(super) backends: Option<BackendsRaw>,
    pub(super) requires: Option<RequiresRaw>,
    #[serde(default)]
    pub(super) setup: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RequiresRaw {
    #[serde(default)]
    pub(super) caps: Vec<String>,
    #[serde(default)]
    pub(super) kvm_params: Vec<String>,
    #[serde(default)]
    pub(super) cpuid_any: Vec<String>,
    #[serde(default)]
    pub(super) listed: bool,
    pub(super) cite: String,
    /// { kernel = "X.Y", cite }: before X.Y KVM listed the MSR whatever `kvm_params` said.
    pub(super) params_listing_since: Option<SinceRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SinceRaw {
    pub(super) kernel: String,
    pub(super) cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetRaw {
    pub(super) value: u64,
    pub(super) cite: String,
    #[serde(default)]
    pub(super) when: Vec<ResetWhenRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetWhenRaw {
    pub(super) backend: Option<String>,
    /// A quirk name (STUFF_FEATURE_MSRS, MISC_ENABLE_NO_MWAIT): the value with it disabled.
    pub(super) quirk_disabled: Option<String>,
    pub(super) value: u64,
    pub(super) cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WriteRaw {
    pub(super) name: String,
    pub(super) value: u64,
    pub(super) before: Option<u64>,
    pub(super) path: Option<String>,
    #[serde(default = "same")]
    pub(super) outcome: String,
    pub(super) cite: String,
    #[serde(default)]
    pub(super) when: Vec<WhenRaw>,
    #[serde(default)]
    pub(super) cpuid_clear: Vec<String>,
}

pub(super) fn same() -> String {
    "same".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WhenRaw {
    pub(super) backend: Option<String>,
    pub(super) kernel_before: Option<String>,
    #[serde(default)]
    pub(super) kvm_cpuid_none: Vec<String>,
    pub(super) guest_vendor: Option<String>,
    pub(super) path: Option<String>,
    pub(super) emulated: Option<bool>,
    pub(super) outcome: String,
    pub(super) cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReservedRaw {
    pub(super) mask: u64,
    pub(super) base: Option<u64>,
    #[serde(default)]
    pub(super) above_maxphyaddr: bool,
    pub(super) cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PathRaw {
    pub(super) path: Option<String>,
    pub(super) cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BackendsRaw {
    pub(super) only: Vec<String>,
    pub(super) cite: String,
}

/// Feature names checked against kvm/cpuid.rs FEATURES.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VolatileRaw {
    pub(super) rule: String,
    #[serde(default)]
    pub(super) vm_clock: bool,
    pub(super) cite: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GateRaw {
    /// Any of these CPUID features.
    pub(super) cpuid: Option<Vec<String>>,
    pub(super) mcg_cap_bit: Option<u8>,
    pub(super) host_only: Option<bool>,
    /// Any of these KVM PV feature bits, when KVM_CAP_ENFORCE_PV_FEATURE_CPUID is enabled.
    pub(super) pv_feature: Option<Vec<String>>,
    /// "interface", "synic" or "syndbg": a Hyper-V MSR's guest gate.
    pub(super) hyperv: Option<String>,
    /// "exempt", "advertised-zero", "fails", "zero-only", "unsupported" or "write-unsupported".
    pub(super) host: String,
    pub(super) cite: String,
    /// { kernel = "X.Y", host, cite }: the host behaviour on kernels older than X.Y.
    pub(super) host_until: Option<HostUntilRaw>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostUntilRaw {
    pub(super) kernel: String,
    pub(super) host: String,
    pub(super) cite: String,
}
