//! The /dev/kvm system fd: opening it with clear errors, capabilities, the two MSR lists and the
//! system-level feature MSR reads (api.rst 4.1, 4.3, 4.4, 4.18).

use super::raw::{self, ListCall, ListKind, MsrEntry, MsrIo, MsrOp};
use crate::error::{Errno, Error, Result};
use kvm_ioctls::Kvm;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Environment variable that points the suite at another KVM device node (default `/dev/kvm`).
pub const DEVICE_ENV: &str = "KVM_MSR_DEVICE";

/// An open KVM system fd.
pub struct KvmSystem {
    kvm: Kvm,
    path: PathBuf,
}

impl AsRawFd for KvmSystem {
    fn as_raw_fd(&self) -> RawFd {
        self.kvm.as_raw_fd()
    }
}

fn group_name(gid: u32) -> Option<String> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        (f.next()?.parse::<u32>().ok()? == gid).then(|| name.to_string())
    })
}

/// What the user lacks and what to do, from the device's mode and group.
fn permission_detail(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.mode() & 0o777;
            let group = group_name(m.gid()).unwrap_or_else(|| format!("gid {}", m.gid()));
            if mode & 0o060 == 0o060 {
                format!(
                    "mode {mode:o}, group '{group}': add your user to group '{group}' \
                     (`sudo usermod -aG {group} $USER`, then log in again) or run as root"
                )
            } else {
                format!(
                    "mode {mode:o}, group '{group}' gives the group no read/write access: have the \
                     device made mode 0660 with group 'kvm' (the usual udev rule) and join that \
                     group, or run as root"
                )
            }
        }
        Err(e) => e.to_string(),
    }
}

impl KvmSystem {
    /// KVM_GET_VCPU_MMAP_SIZE (api.rst 4.5): the size of a vCPU's kvm_run mapping, which on x86
    /// holds the kvm_run page, the PIO data page (KVM_PIO_PAGE_OFFSET 1) and the coalesced-MMIO
    /// ring.
    pub fn vcpu_mmap_size(&self) -> std::result::Result<usize, Errno> {
        self.kvm.get_vcpu_mmap_size().map_err(Errno::from)
    }

    /// The device path: `$KVM_MSR_DEVICE` or `/dev/kvm`.
    pub fn device_path() -> PathBuf {
        std::env::var_os(DEVICE_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| "/dev/kvm".into())
    }

    /// Open the KVM device and check the API version (api.rst 4.1: must be 12).
    pub fn open() -> Result<Self> {
        Self::open_at(&Self::device_path())
    }

    pub fn open_at(path: &Path) -> Result<Self> {
        let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
            return Err(Error::KvmMissing {
                path: path.to_path_buf(),
            });
        };
        let fd = match Kvm::open_with_cloexec_at(&cpath, true) {
            Ok(fd) => fd,
            Err(e) => {
                let path = path.to_path_buf();
                return Err(match Errno::from(e) {
                    Errno::ENOENT | Errno::ENXIO | Errno::ENODEV => Error::KvmMissing { path },
                    Errno::EACCES | Errno::EPERM => {
                        let detail = permission_detail(&path);
                        Error::KvmPermission { path, detail }
                    }
                    errno => Error::KvmOpen { path, errno },
                });
            }
        };
        // SAFETY: `fd` was just opened by us, is valid, and ownership moves into `Kvm`.
        let kvm = unsafe { Kvm::from_raw_fd(fd) };
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(Error::KvmApiVersion { found: version });
        }
        Ok(KvmSystem {
            kvm,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// KVM_CHECK_EXTENSION on the system fd (api.rst 4.4); 0 means absent.
    pub fn check_extension(&self, cap: u32) -> i32 {
        self.kvm.check_extension_raw(cap.into())
    }

    /// One raw list call (for protocol checks).
    pub fn list_call(&self, kind: ListKind, asked: u32, room: usize) -> ListCall {
        raw::list_call(self, kind, asked, room)
    }

    /// The list, fetched with the E2BIG protocol (never assuming a maximum size).
    pub fn msr_list(&self, kind: ListKind) -> Result<Vec<u32>> {
        let (first, second) = raw::list_with_protocol(self, kind);
        let call = second.unwrap_or(first);
        if let Some(errno) = call.errno {
            return Err(Error::Ioctl {
                what: kind.ioctl_name(),
                errno,
            });
        }
        Ok(call.indices)
    }

    /// System-level KVM_GET_MSRS (feature MSRs, api.rst 4.18).
    pub fn get_feature_msrs(&self, indices: &[u32]) -> MsrIo {
        raw::get_msrs(self, indices)
    }

    /// Raw system-level MSR ioctl with an explicit nmsrs (for E2BIG and SET-on-/dev/kvm checks).
    pub fn msr_io(&self, op: MsrOp, entries: &[MsrEntry], nmsrs: u32) -> MsrIo {
        raw::msr_io(self, op, entries, nmsrs)
    }
}
