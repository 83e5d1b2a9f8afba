//! A vCPU's KVM binary statistics (api.rst 4.133 KVM_GET_STATS_FD; KVM_CAP_BINARY_STATS_FD):
//! the header and descriptors are parsed once, counter values are re-read with pread.
//!
//! File layout (include/uapi/linux/kvm.h): `struct kvm_stats_header { u32 flags, name_size,
//! num_desc, id_offset, desc_offset, data_offset }`, an id string of `name_size` bytes at
//! `id_offset`, `num_desc` descriptors `struct kvm_stats_desc { u32 flags; s16 exponent; u16 size;
//! u32 offset; u32 bucket_size; char name[name_size] }` at `desc_offset`, and the data block of
//! u64 values at `data_offset` (each descriptor's `offset` is relative to it, `size` counts u64s).
//!
//! Which statistics exist depends on the kernel and the backend (x86.c `kvm_vcpu_stats_desc`,
//! KVM_GENERIC_VCPU_STATS in include/linux/kvm_host.h): callers look names up and must treat a
//! missing one as absent, never as zero.

use super::vm::Vcpu;
use crate::error::Errno;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// Bytes of `struct kvm_stats_header`.
pub const HEADER_SIZE: usize = 24;
/// Bytes of `struct kvm_stats_desc` before its name.
pub const DESC_FIXED_SIZE: usize = 16;

/// Why the statistics could not be opened or read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsError {
    /// KVM_CHECK_EXTENSION(KVM_CAP_BINARY_STATS_FD) is 0.
    CapAbsent,
    /// An ioctl or read failed.
    Os { what: &'static str, errno: Errno },
    /// The file does not follow the documented layout.
    Malformed(String),
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsError::CapAbsent => write!(
                f,
                "KVM_CAP_BINARY_STATS_FD is absent: this kernel has no binary vCPU statistics"
            ),
            StatsError::Os { what, errno } => {
                write!(f, "{what} failed: {} (errno {errno})", errno.text())
            }
            StatsError::Malformed(m) => write!(f, "KVM binary stats file malformed: {m}"),
        }
    }
}

impl std::error::Error for StatsError {}

/// The kind of a statistic (KVM_STATS_TYPE_* in flags bits 0..3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    Cumulative,
    Instant,
    Peak,
    LinearHist,
    LogHist,
    Other(u32),
}

/// One statistic's descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatDesc {
    pub name: String,
    pub flags: u32,
    pub exponent: i16,
    /// Number of u64 values.
    pub size: u16,
    /// Byte offset of the first value in the data block.
    pub offset: u32,
    pub bucket_size: u32,
}

impl StatDesc {
    pub fn kind(&self) -> StatKind {
        match self.flags & kvm_bindings::KVM_STATS_TYPE_MASK {
            kvm_bindings::KVM_STATS_TYPE_CUMULATIVE => StatKind::Cumulative,
            kvm_bindings::KVM_STATS_TYPE_INSTANT => StatKind::Instant,
            kvm_bindings::KVM_STATS_TYPE_PEAK => StatKind::Peak,
            kvm_bindings::KVM_STATS_TYPE_LINEAR_HIST => StatKind::LinearHist,
            kvm_bindings::KVM_STATS_TYPE_LOG_HIST => StatKind::LogHist,
            other => StatKind::Other(other),
        }
    }

    /// KVM_STATS_UNIT_NONE: a plain count (exits, emulated instructions), not time or bytes.
    pub fn is_count(&self) -> bool {
        self.flags & kvm_bindings::KVM_STATS_UNIT_MASK == kvm_bindings::KVM_STATS_UNIT_NONE
    }
}

/// The parsed header, id and descriptors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsLayout {
    /// The id string (e.g. `kvm-1234/vcpu-0`).
    pub id: String,
    pub descs: Vec<StatDesc>,
    pub data_offset: u32,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl StatsLayout {
    /// How many bytes from the start of the file `parse` needs, given the header.
    pub fn prefix_len(header: &[u8]) -> Result<usize, StatsError> {
        let h = |i: usize| {
            u32_at(header, 4 * i).ok_or_else(|| {
                StatsError::Malformed(format!("header shorter than {HEADER_SIZE} bytes"))
            })
        };
        let (name_size, num_desc, id_offset, desc_offset) = (h(1)?, h(2)?, h(3)?, h(4)?);
        let descs_end = u64::from(desc_offset)
            + u64::from(num_desc) * (DESC_FIXED_SIZE as u64 + u64::from(name_size));
        let id_end = u64::from(id_offset) + u64::from(name_size);
        let end = descs_end.max(id_end).max(HEADER_SIZE as u64);
        if end > 16 << 20 {
            return Err(StatsError::Malformed(format!(
                "{num_desc} descriptors of name size {name_size} would need {end} bytes"
            )));
        }
        Ok(end as usize)
    }

    /// Parse the file's first `prefix_len` bytes.
    pub fn parse(buf: &[u8]) -> Result<StatsLayout, StatsError> {
        let need = Self::prefix_len(buf)?;
        if buf.len() < need {
            return Err(StatsError::Malformed(format!(
                "{} bytes given, the header describes {need}",
                buf.len()
            )));
        }
        let h = |i: usize| u32_at(buf, 4 * i).expect("length checked");
        let (name_size, num_desc) = (h(1) as usize, h(2) as usize);
        let (id_offset, desc_offset, data_offset) = (h(3) as usize, h(4) as usize, h(5));
        if name_size == 0 {
            return Err(StatsError::Malformed("name_size is 0".into()));
        }
        let id = c_string(&buf[id_offset..id_offset + name_size]);
        let stride = DESC_FIXED_SIZE + name_size;
        let descs = (0..num_desc)
            .map(|i| {
                let d = &buf[desc_offset + i * stride..desc_offset + (i + 1) * stride];
                StatDesc {
                    flags: u32_at(d, 0).expect("in bounds"),
                    exponent: i16::from_le_bytes([d[4], d[5]]),
                    size: u16::from_le_bytes([d[6], d[7]]),
                    offset: u32_at(d, 8).expect("in bounds"),
                    bucket_size: u32_at(d, 12).expect("in bounds"),
                    name: c_string(&d[DESC_FIXED_SIZE..]),
                }
            })
            .collect();
        Ok(StatsLayout {
            id,
            descs,
            data_offset,
        })
    }

    /// Bytes of the data block the descriptors cover.
    pub fn data_len(&self) -> usize {
        self.descs
            .iter()
            .map(|d| d.offset as usize + 8 * d.size as usize)
            .max()
            .unwrap_or(0)
    }

    /// Single-value cumulative counts from a data block: name -> value.
    pub fn counters(&self, data: &[u8]) -> Stats {
        let values = self
            .descs
            .iter()
            .filter(|d| d.kind() == StatKind::Cumulative && d.size == 1 && d.is_count())
            .filter_map(|d| {
                let at = d.offset as usize;
                let v = u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?);
                Some((d.name.clone(), v))
            })
            .collect();
        Stats { values }
    }
}

/// Cumulative counter values at one moment (or the difference of two moments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub values: BTreeMap<String, u64>,
}

impl Stats {
    /// The counter's value, or None when this kernel has no such statistic.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.get(name).copied()
    }

    /// `self - before` for every counter both have (counters only grow; a wrap reads as 0).
    pub fn since(&self, before: &Stats) -> Stats {
        let values = self
            .values
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.saturating_sub(*before.values.get(k)?))))
            .collect();
        Stats { values }
    }
}

/// An open vCPU statistics fd.
pub struct VcpuStats {
    file: File,
    pub layout: StatsLayout,
    buf: Vec<u8>,
}

fn read_exact_at(
    file: &File,
    buf: &mut [u8],
    at: u64,
    what: &'static str,
) -> Result<(), StatsError> {
    file.read_exact_at(buf, at).map_err(|e| StatsError::Os {
        what,
        errno: Errno(e.raw_os_error().unwrap_or(-1)),
    })
}

impl VcpuStats {
    /// KVM_GET_STATS_FD on the vCPU (api.rst 4.133), then the header and descriptors.
    /// `cap` is KVM_CHECK_EXTENSION(KVM_CAP_BINARY_STATS_FD) (see HostFacts::cap).
    pub fn open(vcpu: &Vcpu, cap: i32) -> Result<VcpuStats, StatsError> {
        if cap <= 0 {
            return Err(StatsError::CapAbsent);
        }
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; the vCPU fd is
        // open for the duration of the call.
        let fd = unsafe { ioctl(&vcpu.fd, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(StatsError::Os {
                what: "KVM_GET_STATS_FD",
                errno: Errno::last(),
            });
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_SIZE];
        read_exact_at(&file, &mut header, 0, "read of the stats header")?;
        let mut prefix = vec![0u8; StatsLayout::prefix_len(&header)?];
        read_exact_at(&file, &mut prefix, 0, "read of the stats descriptors")?;
        let layout = StatsLayout::parse(&prefix)?;
        let buf = vec![0u8; layout.data_len()];
        Ok(VcpuStats { file, layout, buf })
    }

    /// The cumulative counters now (one pread of the data block).
    pub fn snapshot(&mut self) -> Result<Stats, StatsError> {
        let at = u64::from(self.layout.data_offset);
        read_exact_at(&self.file, &mut self.buf, at, "read of the stats data")?;
        Ok(self.layout.counters(&self.buf))
    }

    /// Every descriptor's name, for reports of what this kernel counts.
    pub fn names(&self) -> Vec<&str> {
        self.layout.descs.iter().map(|d| d.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME_SIZE: usize = 48;

    /// A stats file as the kernel lays it out: header, id, descriptors, data.
    fn synthetic(descs: &[(&str, u32, u16)], values: &[u64]) -> Vec<u8> {
        let id_offset = HEADER_SIZE;
        let desc_offset = id_offset + NAME_SIZE;
        let data_offset = desc_offset + descs.len() * (DESC_FIXED_SIZE + NAME_SIZE);
        let mut b = Vec::new();
        for w in [
            0u32,
            NAME_SIZE as u32,
            descs.len() as u32,
            id_offset as u32,
            desc_offset as u32,
            data_offset as u32,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let mut id = b"kvm-42/vcpu-0".to_vec();
        id.resize(NAME_SIZE, 0);
        b.extend_from_slice(&id);
        let mut offset = 0u32;
        for (name, flags, size) in descs {
            b.extend_from_slice(&flags.to_le_bytes());
            b.extend_from_slice(&0i16.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            let mut n = name.as_bytes().to_vec();
            n.resize(NAME_SIZE, 0);
            b.extend_from_slice(&n);
            offset += 8 * u32::from(*size);
        }
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    const SECONDS: u32 = kvm_bindings::KVM_STATS_UNIT_SECONDS;
    const INSTANT: u32 = kvm_bindings::KVM_STATS_TYPE_INSTANT;
    const LOG_HIST: u32 = kvm_bindings::KVM_STATS_TYPE_LOG_HIST;

    fn file() -> Vec<u8> {
        synthetic(
            &[
                ("exits", 0, 1),
                ("halt_wait_hist", LOG_HIST | SECONDS, 2),
                ("insn_emulation", 0, 1),
                ("halt_wait_ns", SECONDS, 1),
                ("guest_mode", INSTANT, 1),
            ],
            &[100, 7, 8, 5, 999, 1],
        )
    }

    #[test]
    fn parses_header_id_and_descriptors() {
        let f = file();
        let l = StatsLayout::parse(&f).unwrap();
        assert_eq!(l.id, "kvm-42/vcpu-0");
        let names: Vec<&str> = l.descs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "exits",
                "halt_wait_hist",
                "insn_emulation",
                "halt_wait_ns",
                "guest_mode"
            ]
        );
        assert_eq!(l.descs[1].kind(), StatKind::LogHist);
        assert_eq!(l.descs[1].size, 2);
        assert_eq!(l.descs[2].offset, 24);
        assert_eq!(l.data_len(), 48);
    }

    #[test]
    fn counters_are_single_cumulative_counts_only() {
        let f = file();
        let l = StatsLayout::parse(&f).unwrap();
        let s = l.counters(&f[l.data_offset as usize..]);
        assert_eq!(s.get("exits"), Some(100));
        assert_eq!(s.get("insn_emulation"), Some(5));
        // A histogram, a time and an instant value are not counts of events.
        assert_eq!(s.get("halt_wait_hist"), None);
        assert_eq!(s.get("halt_wait_ns"), None);
        assert_eq!(s.get("guest_mode"), None);
        assert_eq!(s.get("no_such_stat"), None);
    }

    #[test]
    fn difference_keeps_common_counters() {
        let before = Stats {
            values: [("exits".to_string(), 10), ("io_exits".to_string(), 3)].into(),
        };
        let after = Stats {
            values: [("exits".to_string(), 74), ("extra".to_string(), 1)].into(),
        };
        let d = after.since(&before);
        assert_eq!(d.get("exits"), Some(64));
        assert_eq!(d.get("io_exits"), None);
        assert_eq!(d.get("extra"), None);
    }

    #[test]
    fn truncated_or_absurd_files_are_errors_not_panics() {
        let f = file();
        for len in [0, 10, HEADER_SIZE, HEADER_SIZE + 30, f.len() - 49] {
            assert!(
                matches!(StatsLayout::parse(&f[..len]), Err(StatsError::Malformed(_))),
                "{len} bytes"
            );
        }
        let mut huge = f.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            StatsLayout::parse(&huge),
            Err(StatsError::Malformed(_))
        ));
        let mut nameless = f;
        nameless[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert!(StatsLayout::parse(&nameless).is_err());
    }

    #[test]
    fn a_short_data_block_drops_the_counters_it_lacks() {
        let f = file();
        let l = StatsLayout::parse(&f).unwrap();
        let s = l.counters(&f[l.data_offset as usize..][..16]);
        assert_eq!(s.get("exits"), Some(100));
        assert_eq!(s.get("insn_emulation"), None);
    }
}
