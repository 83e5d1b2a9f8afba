//! Host facts, read once: backend, CPU, kernel, module parameters, capabilities, the MSR lists,
//! the system-level feature MSR values and KVM's supported CPUID. Together they are the host
//! fingerprint printed with every result, and the context every expectation is derived from.

use super::cpuid::{CpuidTable, Reg, Vendor};
use super::raw::ListKind;
use super::system::KvmSystem;
use crate::error::{Error, Result};
use kvm_bindings as kb;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The KVM backend that runs guests, from the loaded modules (/sys/module).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Vmx,
    Svm,
    Pvm,
    Unknown,
}

impl Backend {
    pub fn detect() -> Backend {
        let loaded = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
        if loaded("kvm_pvm") {
            Backend::Pvm
        } else if loaded("kvm_intel") {
            Backend::Vmx
        } else if loaded("kvm_amd") {
            Backend::Svm
        } else {
            Backend::Unknown
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Vmx => "vmx",
            Backend::Svm => "svm",
            Backend::Pvm => "pvm",
            Backend::Unknown => "unknown",
        }
    }

    /// The backend's module, whose parameters are recorded too.
    pub fn module(self) -> Option<&'static str> {
        match self {
            Backend::Vmx => Some("kvm_intel"),
            Backend::Svm => Some("kvm_amd"),
            Backend::Pvm => Some("kvm_pvm"),
            Backend::Unknown => None,
        }
    }
}

/// Capabilities that matter for MSRs, by name, with their KVM_CHECK_EXTENSION numbers.
pub const MSR_CAPS: &[(&str, u32)] = &[
    ("KVM_CAP_IRQCHIP", kb::KVM_CAP_IRQCHIP),
    ("KVM_CAP_MCE", kb::KVM_CAP_MCE),
    ("KVM_CAP_HYPERV", kb::KVM_CAP_HYPERV),
    ("KVM_CAP_XEN_HVM", kb::KVM_CAP_XEN_HVM),
    ("KVM_CAP_TSC_CONTROL", kb::KVM_CAP_TSC_CONTROL),
    ("KVM_CAP_GET_TSC_KHZ", kb::KVM_CAP_GET_TSC_KHZ),
    ("KVM_CAP_ONE_REG", kb::KVM_CAP_ONE_REG),
    ("KVM_CAP_TSC_DEADLINE_TIMER", kb::KVM_CAP_TSC_DEADLINE_TIMER),
    ("KVM_CAP_DISABLE_QUIRKS", kb::KVM_CAP_DISABLE_QUIRKS),
    ("KVM_CAP_X86_SMM", kb::KVM_CAP_X86_SMM),
    ("KVM_CAP_SPLIT_IRQCHIP", kb::KVM_CAP_SPLIT_IRQCHIP),
    ("KVM_CAP_X2APIC_API", kb::KVM_CAP_X2APIC_API),
    ("KVM_CAP_X86_DISABLE_EXITS", kb::KVM_CAP_X86_DISABLE_EXITS),
    ("KVM_CAP_GET_MSR_FEATURES", kb::KVM_CAP_GET_MSR_FEATURES),
    ("KVM_CAP_NESTED_STATE", kb::KVM_CAP_NESTED_STATE),
    ("KVM_CAP_MSR_PLATFORM_INFO", kb::KVM_CAP_MSR_PLATFORM_INFO),
    ("KVM_CAP_X86_USER_SPACE_MSR", kb::KVM_CAP_X86_USER_SPACE_MSR),
    ("KVM_CAP_X86_MSR_FILTER", kb::KVM_CAP_X86_MSR_FILTER),
    (
        "KVM_CAP_ENFORCE_PV_FEATURE_CPUID",
        kb::KVM_CAP_ENFORCE_PV_FEATURE_CPUID,
    ),
    (
        "KVM_CAP_HYPERV_ENFORCE_CPUID",
        kb::KVM_CAP_HYPERV_ENFORCE_CPUID,
    ),
    ("KVM_CAP_BINARY_STATS_FD", kb::KVM_CAP_BINARY_STATS_FD),
    (
        "KVM_CAP_EXIT_ON_EMULATION_FAILURE",
        kb::KVM_CAP_EXIT_ON_EMULATION_FAILURE,
    ),
    ("KVM_CAP_PMU_CAPABILITY", kb::KVM_CAP_PMU_CAPABILITY),
    ("KVM_CAP_DISABLE_QUIRKS2", kb::KVM_CAP_DISABLE_QUIRKS2),
    ("KVM_CAP_VM_TSC_CONTROL", kb::KVM_CAP_VM_TSC_CONTROL),
];

/// kvm module parameters that change MSR expectations (semantics §1.6, §5).
pub const KVM_PARAMS: &[&str] = &[
    "ignore_msrs",
    "report_ignored_msrs",
    "enable_pmu",
    "force_emulation_prefix",
];

/// The host's CPU as the host kernel sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostCpu {
    pub vendor: Vendor,
    pub model_name: String,
    pub family: u32,
    pub model: u32,
    pub stepping: u32,
}

/// A feature MSR's system-level value (KVM_GET_MSRS on /dev/kvm).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FeatureValue {
    pub index: u32,
    /// None when the system-level read did not process the entry.
    pub value: Option<u64>,
}

/// Everything the suite learns about the host before running a check.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostFacts {
    pub kernel_release: String,
    pub backend: Backend,
    pub cpu: HostCpu,
    pub kvm_api_version: i32,
    /// kvm.* parameters (value as sysfs prints it), missing ones absent.
    pub kvm_params: BTreeMap<String, String>,
    /// The backend module's parameters.
    pub backend_params: BTreeMap<String, String>,
    /// KVM_CHECK_EXTENSION results (0 = absent).
    pub caps: BTreeMap<String, i32>,
    pub msr_index_list: Vec<u32>,
    pub msr_feature_index_list: Vec<u32>,
    pub feature_values: Vec<FeatureValue>,
    /// Vendor of KVM_GET_SUPPORTED_CPUID's leaf 0.
    pub supported_cpuid_vendor: Vendor,
    /// Names of known CPUID features KVM_GET_SUPPORTED_CPUID reports.
    pub supported_cpuid_features: Vec<String>,
    /// KVM has the LA57 capability (KVM_GET_SUPPORTED_CPUID 7.0:ECX bit 16), which cpuid.c
    /// kvm_set_cpu_caps takes from the hardware's CPUID even when the host kernel runs 4-level
    /// paging ("Set LA57 based on hardware capability"): MSR addresses are then canonical at 57
    /// bits instead of 48 (x86.h max_host_virt_addr_bits, used by __kvm_set_msr and
    /// is_noncanonical_msr_address).
    #[serde(default, alias = "host_la57")]
    pub kvm_la57: bool,
    #[serde(skip)]
    pub supported_cpuid: CpuidTable,
}

fn read_params(module: &str, only: Option<&[&str]>) -> BTreeMap<String, String> {
    let dir = std::path::Path::new("/sys/module")
        .join(module)
        .join("parameters");
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if only.is_some_and(|o| !o.contains(&name.as_str())) {
            continue;
        }
        if let Ok(v) = std::fs::read_to_string(e.path()) {
            out.insert(name, v.trim().to_string());
        }
    }
    out
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn host_cpu() -> HostCpu {
    use std::arch::x86_64::__cpuid;
    let (l0, l1) = (__cpuid(0), __cpuid(1));
    let vendor = Vendor::from_signature(l0.ebx, l0.edx, l0.ecx);
    let base_family = (l1.eax >> 8) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((l1.eax >> 20) & 0xff)
    } else {
        base_family
    };
    let base_model = (l1.eax >> 4) & 0xf;
    let model = if base_family >= 0x6 {
        base_model | (((l1.eax >> 16) & 0xf) << 4)
    } else {
        base_model
    };
    let model_name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    HostCpu {
        vendor,
        model_name,
        family,
        model,
        stepping: l1.eax & 0xf,
    }
}

impl HostFacts {
    /// The running kernel's major.minor (None if its release does not parse).
    pub fn kernel_version(&self) -> Option<KernelVersion> {
        KernelVersion::parse(&self.kernel_release)
    }

    /// The running kernel's stable patch level (118 in "6.12.118+deb13-amd64"), for the rare rule
    /// that a stable backport changed within one major.minor (None if the release has none).
    pub fn kernel_sublevel(&self) -> Option<u32> {
        KernelVersion::sublevel(&self.kernel_release)
    }

    /// The facts of a host whose KVM cannot be opened: the CPU (from CPUID) and the loaded
    /// backend module are known, nothing KVM reports is (no lists, no capabilities, no supported
    /// CPUID). Enough to build the checks that exist on every host, not to run any.
    pub fn without_kvm() -> HostFacts {
        HostFacts {
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            backend: Backend::detect(),
            cpu: host_cpu(),
            kvm_api_version: 0,
            kvm_params: BTreeMap::new(),
            backend_params: BTreeMap::new(),
            caps: BTreeMap::new(),
            msr_index_list: Vec::new(),
            msr_feature_index_list: Vec::new(),
            feature_values: Vec::new(),
            supported_cpuid_vendor: Vendor::Other,
            supported_cpuid_features: Vec::new(),
            kvm_la57: false,
            supported_cpuid: CpuidTable::default(),
        }
    }

    /// Gather every fact. Fails only if an ioctl the harness depends on fails.
    pub fn gather(sys: &KvmSystem) -> Result<HostFacts> {
        let backend = Backend::detect();
        let caps = MSR_CAPS
            .iter()
            .map(|(n, c)| (n.to_string(), sys.check_extension(*c)))
            .collect();
        let msr_index_list = sys.msr_list(ListKind::Index)?;
        let msr_feature_index_list = if sys.check_extension(kb::KVM_CAP_GET_MSR_FEATURES) > 0 {
            sys.msr_list(ListKind::Feature)?
        } else {
            Vec::new()
        };
        let feature_values = msr_feature_index_list
            .iter()
            .map(|&index| {
                let io = sys.get_feature_msrs(&[index]);
                FeatureValue {
                    index,
                    value: (io.result == Ok(1)).then(|| io.entries()[0].data),
                }
            })
            .collect();
        let supported = sys
            .kvm()
            .get_supported_cpuid(kb::KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::ioctl("KVM_GET_SUPPORTED_CPUID", e))?;
        let supported_cpuid = CpuidTable::from_kvm(&supported);
        Ok(HostFacts {
            kernel_release: kernel_release(),
            backend,
            cpu: host_cpu(),
            kvm_api_version: sys.api_version(),
            kvm_params: read_params("kvm", Some(KVM_PARAMS)),
            backend_params: backend
                .module()
                .map(|m| read_params(m, None))
                .unwrap_or_default(),
            caps,
            msr_index_list,
            msr_feature_index_list,
            feature_values,
            supported_cpuid_vendor: supported_cpuid.vendor(),
            supported_cpuid_features: supported_cpuid
                .feature_names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            kvm_la57: supported_cpuid
                .reg(7, 0, Reg::Ecx)
                .is_some_and(|ecx| ecx & (1 << 16) != 0),
            supported_cpuid,
        })
    }

    fn param_bool(&self, name: &str) -> bool {
        matches!(
            self.kvm_params.get(name).map(String::as_str),
            Some("Y" | "y" | "1")
        )
    }

    /// kvm.ignore_msrs (semantics §1.6).
    pub fn ignore_msrs(&self) -> bool {
        self.param_bool("ignore_msrs")
    }

    /// kvm.force_emulation_prefix is non-zero.
    pub fn force_emulation_prefix(&self) -> bool {
        self.kvm_params
            .get("force_emulation_prefix")
            .is_some_and(|v| v != "0" && v != "N")
    }

    pub fn enable_pmu(&self) -> bool {
        self.param_bool("enable_pmu")
    }

    pub fn cap(&self, name: &str) -> i32 {
        self.caps.get(name).copied().unwrap_or(0)
    }

    pub fn is_advertised(&self, index: u32) -> bool {
        self.msr_index_list.contains(&index)
    }

    pub fn is_feature_msr(&self, index: u32) -> bool {
        self.msr_feature_index_list.contains(&index)
    }

    /// A one-line summary for report headers.
    pub fn summary(&self) -> String {
        let params: Vec<String> = self
            .kvm_params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "kernel {} · backend {} · {:?} {} (family {:#x} model {:#x}) · {} index-list MSRs, {} feature MSRs · kvm {}",
            self.kernel_release,
            self.backend.name(),
            self.cpu.vendor,
            self.cpu.model_name,
            self.cpu.family,
            self.cpu.model,
            self.msr_index_list.len(),
            self.msr_feature_index_list.len(),
            params.join(" "),
        )
    }
}

/// A kernel's major.minor version, for rules that changed between kernels (each such rule names
/// the commit that tells them apart). Parsed from the running kernel's release; a release that
/// does not parse matches no version condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct KernelVersion(pub u32, pub u32);

impl KernelVersion {
    /// "6.13", or a release such as "6.12.118+deb13-amd64".
    pub fn parse(s: &str) -> Option<KernelVersion> {
        let mut it = s.split(|c: char| !c.is_ascii_digit());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some(KernelVersion(major, minor))
    }

    /// The third number of a release ("6.12.118+deb13-amd64" -> 118; "7.2" -> None).
    pub fn sublevel(s: &str) -> Option<u32> {
        s.split(|c: char| !c.is_ascii_digit()).nth(2)?.parse().ok()
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::KernelVersion;

    #[test]
    fn sublevel_of_releases() {
        assert_eq!(KernelVersion::sublevel("6.12.118+deb13-amd64"), Some(118));
        assert_eq!(KernelVersion::sublevel("6.18.44-fc-v1252"), Some(44));
        assert_eq!(KernelVersion::sublevel("7.2"), None);
        assert_eq!(KernelVersion::sublevel("6.13-rc1"), None);
    }
}
