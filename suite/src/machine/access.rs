//! One MSR access from either side of the vCPU, with one outcome: the host through
//! KVM_GET_MSRS / KVM_SET_MSRS (one entry each), the guest through RDMSR / WRMSR in an MSR
//! program (with KVM's forced-emulation prefix inside `with_forced_emulation`, so the
//! `guest-fep.*` twins come for free). A check about an MSR is written once over `AccessPath`
//! and keeps only what genuinely differs between the paths (host-initiated accesses are exempt
//! from some of KVM's checks).

use super::{GuestDeath, Machine};
use crate::guest::program::vector_name;
use crate::guest::{GuestOp, OpOutcome};
use crate::kvm::{Errno, MsrEntry, MsrIo};
use serde::Serialize;
use std::fmt;

/// Which side of the vCPU accesses an MSR (and which path a catalogue rule is about).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessPath {
    /// Userspace: KVM_GET_MSRS / KVM_SET_MSRS (host_initiated in KVM).
    Host,
    /// The guest: RDMSR / WRMSR.
    Guest,
}

impl AccessPath {
    /// Both paths, host first (the order of the checks' ids).
    pub const BOTH: [AccessPath; 2] = [AccessPath::Host, AccessPath::Guest];

    /// The family of a check's id on this path.
    pub fn family(self) -> crate::check_id::Family {
        match self {
            AccessPath::Host => crate::check_id::Family::Host,
            AccessPath::Guest => crate::check_id::Family::Guest,
        }
    }

    /// `host` or `guest`: the subject of a check's sentences.
    pub fn name(self) -> &'static str {
        match self {
            AccessPath::Host => "host",
            AccessPath::Guest => "guest",
        }
    }

    /// The path on the other side of the vCPU.
    pub fn other(self) -> AccessPath {
        match self {
            AccessPath::Host => AccessPath::Guest,
            AccessPath::Guest => AccessPath::Host,
        }
    }

    /// The mechanism that writes an MSR on this path.
    pub fn write_call(self) -> &'static str {
        match self {
            AccessPath::Host => "KVM_SET_MSRS",
            AccessPath::Guest => "WRMSR",
        }
    }
}

/// What one access did, on either path. A guest that dies is not an outcome of an access but
/// of the program: `Machine::access` returns it as its error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The read completed with this value: KVM_GET_MSRS processed the entry, or RDMSR retired.
    Read(u64),
    /// The write completed: KVM_SET_MSRS processed the entry, or WRMSR retired.
    Wrote,
    /// Host: the ioctl processed no entry because the MSR's handler failed. A handler's 1 and its
    /// KVM_MSR_RET_UNSUPPORTED (outside kvm_do_msr_access's exemptions: a host read or a host
    /// write of 0 of an advertised MSR, kvm.ignore_msrs) look the same from userspace: __msr_io
    /// stops at the first failing entry and msr_io returns how many it processed (x86.c).
    NotProcessed,
    /// Host: the ioctl itself failed with this errno.
    Errno(Errno),
    /// Guest: the instruction raised this exception (#GP is vector 13).
    Fault { vector: u8, error_code: u32 },
}

impl Access {
    /// A one-entry KVM_GET_MSRS (`write` false) or KVM_SET_MSRS (`write` true) as an access.
    pub fn from_host(io: &MsrIo, write: bool) -> Access {
        match io.result {
            Ok(0) => Access::NotProcessed,
            Ok(_) if write => Access::Wrote,
            Ok(_) => Access::Read(io.entries()[0].data),
            Err(errno) => Access::Errno(errno),
        }
    }

    /// A guest op's outcome as an access. Only for RDMSR/WRMSR of a program that completed (a
    /// completed program reached every op).
    pub fn from_guest(o: OpOutcome) -> Access {
        match o {
            OpOutcome::Read(v) => Access::Read(v),
            OpOutcome::Wrote => Access::Wrote,
            OpOutcome::Fault { vector, error_code } => Access::Fault { vector, error_code },
            OpOutcome::Cpuid(_) | OpOutcome::NotReached => {
                panic!("{o} is not the outcome of an MSR access in a completed program")
            }
        }
    }

    /// The value read, if this was a read that completed.
    pub fn value(self) -> Option<u64> {
        match self {
            Access::Read(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_gp(self) -> bool {
        matches!(self, Access::Fault { vector: 13, .. })
    }

    /// The documented refusal of an MSR access: the host's entry not processed (api.rst 4.18 /
    /// 4.19: the ioctls return the number of MSRs read or set), the guest's #GP (SDM vol. 2B
    /// RDMSR/WRMSR). An errno or another exception is not a refusal of the MSR.
    pub fn rejected(self) -> bool {
        self == Access::NotProcessed || self.is_gp()
    }

    /// What a one-entry KVM_GET_MSRS / KVM_SET_MSRS returned (`MsrIo::result`); None for a
    /// guest access.
    pub fn ioctl_result(self) -> Option<Result<usize, Errno>> {
        match self {
            Access::Read(_) | Access::Wrote => Some(Ok(1)),
            Access::NotProcessed => Some(Ok(0)),
            Access::Errno(e) => Some(Err(e)),
            Access::Fault { .. } => None,
        }
    }
}

/// The guest outcomes read as `OpOutcome` shows them (`read 0x..`, `written`, `#GP(0x0)`).
impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Read(v) => write!(f, "read {v:#x}"),
            Access::Wrote => write!(f, "written"),
            Access::NotProcessed => write!(f, "not processed"),
            Access::Errno(e) => write!(f, "errno {e}"),
            Access::Fault { vector, error_code } => {
                write!(f, "{}({error_code:#x})", vector_name(*vector))
            }
        }
    }
}

impl Machine {
    /// Run `ops` (RDMSR and WRMSR only) from `path`, in order, one outcome each: on the host one
    /// one-entry KVM_GET_MSRS / KVM_SET_MSRS per op, in the guest one MSR program (`run_ops`).
    /// Err: the guest died before the program completed.
    pub fn access(&mut self, path: AccessPath, ops: &[GuestOp]) -> Result<Vec<Access>, GuestDeath> {
        match path {
            AccessPath::Host => Ok(ops.iter().map(|op| self.host_access(*op)).collect()),
            AccessPath::Guest => {
                assert!(
                    !ops.iter().any(|op| matches!(op, GuestOp::Cpuid(..))),
                    "an MSR access program has only RDMSR and WRMSR"
                );
                let run = self.run_ops(ops);
                match run.death {
                    Some(d) => Err(d),
                    None => Ok(run.outcomes.into_iter().map(Access::from_guest).collect()),
                }
            }
        }
    }

    /// One read of `index` from `path`.
    pub fn read(&mut self, path: AccessPath, index: u32) -> Result<Access, GuestDeath> {
        self.access(path, &[GuestOp::Rdmsr(index)]).map(|a| a[0])
    }

    fn host_access(&self, op: GuestOp) -> Access {
        match op {
            GuestOp::Rdmsr(index) => Access::from_host(&self.vcpu.get_msrs(&[index]), false),
            GuestOp::Wrmsr(index, data) => {
                Access::from_host(&self.vcpu.set_msrs(&[MsrEntry { index, data }]), true)
            }
            GuestOp::Cpuid(..) => panic!("CPUID has no host path: an MSR access is RDMSR or WRMSR"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(result: Result<usize, Errno>, data: u64) -> MsrIo {
        MsrIo::new(result, &[MsrEntry { index: 0x10, data }])
    }

    #[test]
    fn host_results_become_accesses_and_back() {
        assert_eq!(Access::from_host(&io(Ok(1), 7), false), Access::Read(7));
        assert_eq!(Access::from_host(&io(Ok(1), 7), true), Access::Wrote);
        assert_eq!(
            Access::from_host(&io(Ok(0), 0), false),
            Access::NotProcessed
        );
        assert_eq!(Access::from_host(&io(Ok(0), 5), true), Access::NotProcessed);
        assert_eq!(
            Access::from_host(&io(Err(Errno(7)), 0), false),
            Access::Errno(Errno(7))
        );
        for (r, write) in [
            (Ok(1), false),
            (Ok(1), true),
            (Ok(0), false),
            (Err(Errno::EFAULT), true),
        ] {
            assert_eq!(Access::from_host(&io(r, 3), write).ioctl_result(), Some(r));
        }
        assert_eq!(
            Access::Fault {
                vector: 13,
                error_code: 0
            }
            .ioctl_result(),
            None
        );
    }

    #[test]
    fn guest_outcomes_read_as_the_interpreter_shows_them() {
        for o in [
            OpOutcome::Read(0x1234),
            OpOutcome::Wrote,
            OpOutcome::Fault {
                vector: 13,
                error_code: 0,
            },
            OpOutcome::Fault {
                vector: 6,
                error_code: 0x10,
            },
        ] {
            assert_eq!(Access::from_guest(o).to_string(), o.to_string());
        }
    }

    #[test]
    #[should_panic(expected = "not the outcome of an MSR access")]
    fn an_op_not_reached_is_not_an_access() {
        Access::from_guest(OpOutcome::NotReached);
    }

    #[test]
    fn refusals_are_the_hosts_unprocessed_entry_and_the_guests_gp() {
        let gp = Access::Fault {
            vector: 13,
            error_code: 0,
        };
        let ud = Access::Fault {
            vector: 6,
            error_code: 0,
        };
        assert!(gp.rejected() && gp.is_gp());
        assert!(Access::NotProcessed.rejected());
        assert!(!ud.rejected() && !Access::Errno(Errno::EINVAL).rejected());
        assert!(!Access::Wrote.rejected() && !Access::Read(0).rejected());
        assert_eq!(Access::Read(9).value(), Some(9));
        assert_eq!(gp.value(), None);
        assert_eq!(Access::NotProcessed.value(), None);
    }

    #[test]
    fn paths_are_named_as_in_check_ids() {
        assert_eq!(AccessPath::BOTH.map(AccessPath::name), ["host", "guest"]);
        assert_eq!(
            AccessPath::BOTH.map(AccessPath::other),
            [AccessPath::Guest, AccessPath::Host]
        );
        assert_eq!(
            AccessPath::BOTH.map(AccessPath::write_call),
            ["KVM_SET_MSRS", "WRMSR"]
        );
    }
}
