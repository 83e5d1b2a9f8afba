//! The MSR catalogue: what each MSR is and the documented rules the checks derive expectations
//! from, loaded from `fixtures/catalogue/*.toml`. Loading validates the data; every error names
//! the file and line.

mod load;

pub use load::{load_dir, parse_file};

use crate::kvm::cpuid::{self, CpuidTable};
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
}

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
}

#[derive(Clone, Debug, Serialize)]
pub struct Gate {
    pub condition: GateCondition,
    pub host: HostWhenClosed,
    pub cite: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct VolatileRule {
    pub rule: Volatility,
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
    /// Where the entry was read from, for messages.
    pub source: (PathBuf, usize),
}

/// Whether a gate is open for a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateState {
    Open,
    Closed,
}

impl Gate {
    /// Evaluate against the vCPU's effective CPUID and its MCG_CAP (`None` for a bare vCPU).
    pub fn state(&self, cpuid: Option<&CpuidTable>, mcg_cap: Option<u64>) -> GateState {
        let open = match &self.condition {
            GateCondition::AnyCpuid(names) => cpuid.is_some_and(|c| {
                names
                    .iter()
                    .any(|n| cpuid::feature(n).is_some_and(|f| c.has(f)))
            }),
            GateCondition::McgCapBit(bit) => mcg_cap.is_some_and(|v| v & (1 << bit) != 0),
            GateCondition::HostOnly => false,
        };
        if open {
            GateState::Open
        } else {
            GateState::Closed
        }
    }

    pub fn describe(&self) -> String {
        match &self.condition {
            GateCondition::AnyCpuid(n) => format!("CPUID {}", n.join(" or ")),
            GateCondition::McgCapBit(b) => format!("MCG_CAP bit {b}"),
            GateCondition::HostOnly => "host-only".into(),
        }
    }
}

/// The whole catalogue, keyed by index.
#[derive(Clone, Debug, Default)]
pub struct Catalogue {
    pub msrs: BTreeMap<u32, MsrInfo>,
}

impl Catalogue {
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

    /// The catalogue shipped in this repository's `fixtures/catalogue`.
    pub fn load_default() -> crate::Result<Catalogue> {
        load_dir(&crate::fixtures_dir().join("catalogue"))
    }
}
