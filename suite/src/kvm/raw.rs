//! Raw MSR ioctls with full control over the header, for the calls whose protocol is under test
//! (short buffers, over-limit counts). kvm-ioctls' wrappers size their buffers themselves, which
//! would hide exactly what the checks look at.

use crate::error::{Errno, Error};
use kvm_bindings::{
    kvm_cpuid2, kvm_cpuid_entry2, kvm_msr_entry, kvm_msr_list, kvm_msrs, kvm_one_reg, kvm_reg_list,
    KVMIO,
};
use std::cell::RefCell;
use std::os::fd::AsRawFd;
use vmm_sys_util::ioctl::{ioctl_with_mut_ptr, ioctl_with_ptr};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
ioctl_iowr_nr!(KVM_GET_MSR_FEATURE_INDEX_LIST, KVMIO, 0x0a, kvm_msr_list);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_iow_nr!(KVM_SET_MSRS, KVMIO, 0x89, kvm_msrs);
ioctl_iow_nr!(KVM_GET_ONE_REG, KVMIO, 0xab, kvm_one_reg);
ioctl_iow_nr!(KVM_SET_ONE_REG, KVMIO, 0xac, kvm_one_reg);
ioctl_iowr_nr!(KVM_GET_REG_LIST, KVMIO, 0xb0, kvm_reg_list);
ioctl_iow_nr!(KVM_X86_SETUP_MCE, KVMIO, 0x9c, u64);
ioctl_iow_nr!(KVM_SET_CPUID2, KVMIO, 0x90, kvm_cpuid2);
ioctl_ior_nr!(KVM_X86_GET_MCE_CAP_SUPPORTED, KVMIO, 0x9d, u64);

/// An ioctl's return value: Ok(ret), or the errno when it failed (ret < 0).
pub(super) fn ioctl_result(ret: i32) -> Result<usize, Errno> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

/// How many entries an ioctl that writes back a count copied out: that count, at most `room`,
/// none if it failed. With the errno if it failed.
fn copied_out(ret: i32, written_back: usize, room: usize) -> (Option<Errno>, usize) {
    match ioctl_result(ret) {
        Ok(_) => (None, written_back.min(room)),
        Err(e) => (Some(e), 0),
    }
}

/// Which of the two MSR list ioctls (api.rst 4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    /// KVM_GET_MSR_INDEX_LIST: MSRs to save and restore.
    Index,
    /// KVM_GET_MSR_FEATURE_INDEX_LIST: MSR-based features readable through /dev/kvm.
    Feature,
}

impl ListKind {
    pub fn ioctl_name(self) -> &'static str {
        match self {
            ListKind::Index => "KVM_GET_MSR_INDEX_LIST",
            ListKind::Feature => "KVM_GET_MSR_FEATURE_INDEX_LIST",
        }
    }
}

/// What one list ioctl did: the count asked for, the result, the count KVM wrote back and the
/// indices it copied out.
#[derive(Clone, Debug)]
pub struct ListCall {
    pub asked: u32,
    /// The errno if the call failed.
    pub errno: Option<Errno>,
    pub written_back: u32,
    pub indices: Vec<u32>,
}

/// One KVM_GET_MSR_(FEATURE_)INDEX_LIST call with room for `room` indices, telling KVM `asked`.
/// `asked` may not exceed `room`.
pub fn list_call(fd: &impl AsRawFd, kind: ListKind, asked: u32, room: usize) -> ListCall {
    assert!(
        asked as usize <= room,
        "asked {asked} exceeds buffer room {room}"
    );
    // kvm_msr_list is { u32 nmsrs; u32 indices[] }: a u32 vector lays it out exactly.
    let mut buf = vec![0u32; 1 + room];
    buf[0] = asked;
    let nr = match kind {
        ListKind::Index => KVM_GET_MSR_INDEX_LIST(),
        ListKind::Feature => KVM_GET_MSR_FEATURE_INDEX_LIST(),
    };
    // SAFETY: `buf` holds a kvm_msr_list header followed by `room` >= `asked` u32 slots, so KVM
    // writes at most `asked` indices inside the allocation; the fd is a /dev/kvm system fd.
    let ret = unsafe { ioctl_with_mut_ptr(fd, nr, buf.as_mut_ptr()) };
    let written_back = buf[0];
    let (errno, copied) = copied_out(ret, written_back as usize, room);
    ListCall {
        asked,
        errno,
        written_back,
        indices: buf[1..1 + copied].to_vec(),
    }
}

/// The protocol api.rst 4.3 describes: ask with a small buffer, expect E2BIG with the needed count
/// written back, retry with exactly that count. Returns both calls so a check can judge them.
pub fn list_with_protocol(fd: &impl AsRawFd, kind: ListKind) -> (ListCall, Option<ListCall>) {
    let first = list_call(fd, kind, 1, 1);
    if first.errno == Some(Errno::E2BIG) {
        let n = first.written_back;
        let second = list_call(fd, kind, n, n as usize);
        (first, Some(second))
    } else {
        (first, None)
    }
}

/// An MSR entry laid out as KVM's `struct kvm_msr_entry { u32 index; u32 reserved; u64 data; }`:
/// the reserved word is the padding after `index`, so a kvm_msrs buffer's entries can be viewed
/// as `MsrEntry` values (`MsrIo::entries`). Buffers given to KVM are built word by word, with the
/// reserved word zero (semantics §1.1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrEntry {
    pub index: u32,
    pub data: u64,
}

const _: () = {
    assert!(std::mem::size_of::<MsrEntry>() == std::mem::size_of::<kvm_msr_entry>());
    assert!(std::mem::size_of::<MsrEntry>() == 2 * std::mem::size_of::<u64>());
    assert!(std::mem::align_of::<MsrEntry>() == std::mem::align_of::<u64>());
    assert!(std::mem::offset_of!(MsrEntry, index) == std::mem::offset_of!(kvm_msr_entry, index));
    assert!(std::mem::offset_of!(MsrEntry, data) == std::mem::offset_of!(kvm_msr_entry, data));
};

/// Result of KVM_GET_MSRS / KVM_SET_MSRS: the raw return value (entries processed) or an errno,
/// and the entries as they were copied back (GET) or passed in (SET). It keeps the very buffer
/// the ioctl used, so an ioctl's entries are never copied out of it.
#[derive(Clone)]
pub struct MsrIo {
    pub result: Result<usize, Errno>,
    /// struct kvm_msrs as the ioctl left it: the header word, then two words per entry
    /// (`MsrEntry`'s layout), at least `count` entries.
    words: Vec<u64>,
    count: usize,
}

impl MsrIo {
    /// A result with these entries, for tests of what reads results.
    #[cfg(test)]
    pub(crate) fn new(result: Result<usize, Errno>, entries: &[MsrEntry]) -> MsrIo {
        let mut words = kvm_msrs_words(entries.len(), entries.len() as u32);
        put_entries(&mut words, entries.len(), |i| entries[i]);
        MsrIo {
            result,
            words,
            count: entries.len(),
        }
    }

    /// The entries, as copied back (GET) or passed in (SET).
    pub fn entries(&self) -> &[MsrEntry] {
        let words = &self.words[1..1 + 2 * self.count];
        // SAFETY: MsrEntry is repr(C) { u32, 4 bytes of padding, u64 }: 16 bytes aligned to 8
        // (asserted above), and every bit pattern of its fields is valid. `words` is 2 * count
        // initialized, 8-aligned u64s, so it holds `count` MsrEntry values; the view is shared,
        // so nothing stores through it (a stored MsrEntry's padding would be uninitialized).
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<MsrEntry>(), self.count) }
    }

    /// For the harness's own MSR accesses: Ok when KVM processed every entry, else
    /// [`Error::Msr`] at the first entry it did not process, with the errno if the ioctl failed
    /// (then none was processed). `what` names the access ("setup x2apic-mode: KVM_SET_MSRS").
    pub fn all_processed(&self, what: &'static str) -> crate::error::Result<()> {
        let done = self.result.unwrap_or(0);
        match (self.entries().get(done), self.result) {
            (Some(e), errno) => Err(Error::Msr {
                what,
                index: e.index,
                errno: errno.err(),
            }),
            (None, Err(errno)) => Err(Error::Ioctl { what, errno }),
            (None, Ok(_)) => Ok(()),
        }
    }
}

impl std::fmt::Debug for MsrIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsrIo")
            .field("result", &self.result)
            .field("entries", &self.entries())
            .finish()
    }
}

/// Direction of an MSR ioctl.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrOp {
    Get,
    Set,
}

/// KVM_GET_MSRS / KVM_SET_MSRS with `entries`, telling KVM `nmsrs` (normally `entries.len()`;
/// larger values exercise the E2BIG rule, api.rst 4.18). Works on a vCPU fd and, for GET, on the
/// /dev/kvm fd (feature MSRs). Pad and reserved words are zero (semantics §1.1).
pub fn msr_io(fd: &impl AsRawFd, op: MsrOp, entries: &[MsrEntry], nmsrs: u32) -> MsrIo {
    msr_io_of(fd, op, entries.len(), nmsrs, |i| entries[i])
}

/// KVM_GET_MSRS of `indices`, one entry each (data 0), telling KVM their number.
pub fn get_msrs(fd: &impl AsRawFd, indices: &[u32]) -> MsrIo {
    msr_io_of(fd, MsrOp::Get, indices.len(), indices.len() as u32, |i| {
        MsrEntry {
            index: indices[i],
            data: 0,
        }
    })
}

/// `msr_io` of `count` entries, the i-th being `entry(i)`.
fn msr_io_of(
    fd: &impl AsRawFd,
    op: MsrOp,
    count: usize,
    nmsrs: u32,
    entry: impl Fn(usize) -> MsrEntry,
) -> MsrIo {
    let mut words = kvm_msrs_words(count, nmsrs);
    put_entries(&mut words, count, entry);
    let nr = match op {
        MsrOp::Get => KVM_GET_MSRS(),
        MsrOp::Set => KVM_SET_MSRS(),
    };
    // SAFETY: the buffer holds a kvm_msrs header and max(count, nmsrs) >= nmsrs entries
    // (`kvm_msrs_words`), so KVM reads and writes only inside it; the fd is a KVM vCPU or system
    // fd.
    let ret = unsafe { ioctl_with_mut_ptr(fd, nr, words.as_mut_ptr()) };
    MsrIo {
        result: ioctl_result(ret),
        words,
        count,
    }
}

/// A zeroed struct kvm_msrs { u32 nmsrs; u32 pad; struct kvm_msr_entry entries[]; } with room for
/// max(count, nmsrs) entries and `nmsrs` in its header, as u64 words (which gives it its natural
/// alignment): the header word, then two words per entry. Taken from the thread's spare buffers
/// where one is left.
fn kvm_msrs_words(count: usize, nmsrs: u32) -> Vec<u64> {
    let room = count.max(nmsrs as usize);
    let mut words = SPARE_WORDS
        .with(|spare| spare.try_borrow_mut().ok().and_then(|mut s| s.pop()))
        .unwrap_or_default();
    words.clear();
    words.push(u64::from(nmsrs));
    words.resize(1 + 2 * room, 0);
    words
}

thread_local! {
    /// Buffers of dropped `MsrIo`s, reused by the next ones: the `host` fuzz target makes 10-14
    /// MSR ioctls per input, and a heap allocation for each cost it ~3 % of its instructions
    /// (callgrind, 2026-12-06; ~10 % with `vec![0; n]`, which glibc serves with calloc).
    static SPARE_WORDS: RefCell<Vec<Vec<u64>>> = const { RefCell::new(Vec::new()) };
}

/// At most this many spare buffers are kept per thread, each of at most `SPARE_WORDS_MAX` words
/// (a batch of 256 entries, which KVM refuses beyond: `MAX_IO_MSRS`).
const SPARE_BUFFERS: usize = 8;
const SPARE_WORDS_MAX: usize = 1 + 2 * MAX_IO_MSRS as usize;

impl Drop for MsrIo {
    fn drop(&mut self) {
        let words = std::mem::take(&mut self.words);
        if words.capacity() > SPARE_WORDS_MAX {
            return;
        }
        // (During thread exit the spare list may be gone: the buffer is then just freed.)
        let _ = SPARE_WORDS.try_with(|spare| {
            if let Ok(mut s) = spare.try_borrow_mut() {
                if s.len() < SPARE_BUFFERS {
                    s.push(words);
                }
            }
        });
    }
}

/// Store `count` entries, the i-th being `entry(i)`, in a `kvm_msrs_words` buffer: index and
/// reserved word (zero) in the first word of each, data in the second.
fn put_entries(words: &mut [u64], count: usize, entry: impl Fn(usize) -> MsrEntry) {
    for (i, w) in words[1..1 + 2 * count].chunks_exact_mut(2).enumerate() {
        let e = entry(i);
        w[0] = u64::from(e.index);
        w[1] = e.data;
    }
}

/// KVM_SET_CPUID2 (api.rst 4.73) of `entries`; the errno on failure. Lays out struct kvm_cpuid2
/// { u32 nent; u32 padding; struct kvm_cpuid_entry2 entries[]; } itself, in one copy: the `host`
/// fuzz target sets a CPUID table every other input, and kvm-ioctls' `CpuId` built one entry
/// at a time.
pub fn set_cpuid2(fd: &impl AsRawFd, entries: &[kvm_cpuid_entry2]) -> Result<(), Errno> {
    let mut buf: Vec<u32> = Vec::with_capacity(2 + 10 * entries.len());
    buf.extend([entries.len() as u32, 0]);
    buf.extend_from_slice(super::cpuid::entry_words(entries));
    // SAFETY: `buf` holds the header and `nent` entries of 10 u32 each (kvm_cpuid_entry2 is 40
    // bytes, u32-aligned), and KVM only reads them; the fd is a KVM vCPU fd.
    let ret = unsafe { ioctl_with_ptr(fd, KVM_SET_CPUID2(), buf.as_ptr()) };
    ioctl_result(ret).map(|_| ())
}

/// The most entries one KVM_GET_MSRS / KVM_SET_MSRS accepts: `nmsrs >= MAX_IO_MSRS (256)` is
/// rejected with E2BIG (x86.c `msr_io`).
pub const MAX_IO_MSRS: u32 = 256;

/// The KVM_{GET,SET}_ONE_REG id of MSR `index` (api.rst 4.68: "x86 MSR registers have the following
/// id bit patterns: 0x2030 0002 <msr number:32>"; uapi asm/kvm.h KVM_X86_REG_MSR).
pub const fn one_reg_msr_id(index: u32) -> u64 {
    kvm_bindings::KVM_REG_X86 | kvm_bindings::KVM_REG_SIZE_U64 | (2 << 32) | index as u64
}

/// KVM_GET_ONE_REG / KVM_SET_ONE_REG (api.rst 4.68, 4.69) of register `id`, any id (malformed
/// ones exercise KVM's checks of it): GET returns the register's first 8 bytes, SET writes
/// `value` (zero-extended to the size the id names). The errno on failure.
pub fn one_reg(fd: &impl AsRawFd, op: MsrOp, id: u64, value: u64) -> Result<u64, Errno> {
    // The id's size field (bits 55:52, KVM_REG_SIZE) names 2^field bytes, up to 32 KiB: the
    // buffer holds that many (and at least the 8 of the value), whatever the id is.
    let bytes = 1usize << ((id >> 52) & 0xf);
    let mut buf = vec![0u64; bytes.div_ceil(8).max(1)];
    buf[0] = value;
    let reg = kvm_one_reg {
        id,
        addr: buf.as_mut_ptr() as u64,
    };
    let nr = match op {
        MsrOp::Get => KVM_GET_ONE_REG(),
        MsrOp::Set => KVM_SET_ONE_REG(),
    };
    // SAFETY: `reg` is a valid kvm_one_reg whose addr points at `buf`, which outlives the call
    // and is as large as the register size the id names (KVM_REG_SIZE(id)), the most KVM copies
    // to or from addr for that id; the fd is a KVM vCPU fd.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(fd, nr, &reg) };
    ioctl_result(ret).map(|_| buf[0])
}

/// What one KVM_GET_REG_LIST call did (api.rst 4.84): the errno if it failed, the count KVM
/// wrote back and the ids it copied out.
#[derive(Clone, Debug)]
pub struct RegListCall {
    pub errno: Option<Errno>,
    pub written_back: u64,
    pub ids: Vec<u64>,
}

/// One KVM_GET_REG_LIST call with room for `room` ids (told to KVM as n).
pub fn reg_list(fd: &impl AsRawFd, room: usize) -> RegListCall {
    // kvm_reg_list is { u64 n; u64 reg[] }: a u64 vector lays it out exactly.
    let mut buf = vec![0u64; 1 + room];
    buf[0] = room as u64;
    // SAFETY: `buf` holds a kvm_reg_list header followed by `room` u64 slots and tells KVM n =
    // room, so KVM writes at most `room` ids inside the allocation; the fd is a KVM vCPU fd.
    let ret = unsafe { ioctl_with_mut_ptr(fd, KVM_GET_REG_LIST(), buf.as_mut_ptr()) };
    let written_back = buf[0];
    let (errno, copied) = copied_out(ret, written_back as usize, room);
    RegListCall {
        errno,
        written_back,
        ids: buf[1..1 + copied].to_vec(),
    }
}

/// KVM_X86_GET_MCE_CAP_SUPPORTED on the /dev/kvm fd (api.rst 4.106): the MCG_CAP bits
/// KVM_X86_SETUP_MCE accepts beyond the bank count, or the errno.
pub fn mce_cap_supported(fd: &impl AsRawFd) -> Result<u64, Errno> {
    let mut caps = 0u64;
    // SAFETY: KVM writes one u64 to the pointer, which points at `caps`; the fd is /dev/kvm.
    let ret = unsafe { ioctl_with_mut_ptr(fd, KVM_X86_GET_MCE_CAP_SUPPORTED(), &mut caps) };
    ioctl_result(ret).map(|_| caps)
}

/// KVM_X86_SETUP_MCE on a vCPU fd (api.rst 4.105): MCG_CAP with the bank count in bits 7:0.
pub fn setup_mce(fd: &impl AsRawFd, mcg_cap: u64) -> Result<(), Errno> {
    // SAFETY: KVM reads one u64 from the pointer, which points at `mcg_cap`; the fd is a vCPU fd.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(fd, KVM_X86_SETUP_MCE(), &mcg_cap) };
    ioctl_result(ret).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(result: Result<usize, Errno>, indices: &[u32]) -> MsrIo {
        let entries: Vec<MsrEntry> = indices
            .iter()
            .map(|&index| MsrEntry { index, data: 0 })
            .collect();
        MsrIo::new(result, &entries)
    }

    #[test]
    fn msr_io_views_the_kvm_msrs_buffer_as_its_entries() {
        let entries: Vec<MsrEntry> = (0..40)
            .map(|i| MsrEntry {
                index: 0xc000_0080 + i,
                data: u64::MAX - u64::from(i),
            })
            .collect();
        let io = MsrIo::new(Ok(40), &entries);
        assert_eq!(io.entries(), &entries[..]);
        // struct kvm_msrs: nmsrs, pad, then { index, reserved = 0, data } per entry.
        assert_eq!(io.words[0], 40);
        assert_eq!(io.words[1], 0xc000_0080);
        assert_eq!(io.words[2], u64::MAX);
        assert_eq!(format!("{io:?}").matches("MsrEntry").count(), 40);
    }

    #[test]
    fn a_reused_buffer_starts_zeroed() {
        let dirty = vec![
            MsrEntry {
                index: u32::MAX,
                data: u64::MAX
            };
            64
        ];
        drop(MsrIo::new(Ok(64), &dirty));
        // The spare buffer comes back for a smaller batch with a larger nmsrs: every word past
        // the header is zero (the entries KVM reads beyond `count` are index 0, data 0).
        let words = kvm_msrs_words(2, 5);
        assert!(
            words.capacity() > 2 * 64,
            "the dropped buffer was not reused"
        );
        assert_eq!(words.len(), 1 + 2 * 5);
        assert_eq!(words[0], 5);
        assert!(words[1..].iter().all(|&w| w == 0), "{words:x?}");
    }

    #[test]
    fn all_processed_names_the_first_entry_kvm_did_not_process() {
        assert!(io(Ok(2), &[0x10, 0x1b]).all_processed("x").is_ok());
        match io(Ok(1), &[0x10, 0x1b]).all_processed("x") {
            Err(Error::Msr {
                index: 0x1b,
                errno: None,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match io(Err(Errno::EFAULT), &[0x10, 0x1b]).all_processed("x") {
            Err(Error::Msr {
                index: 0x10,
                errno: Some(Errno::EFAULT),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match io(Err(Errno::E2BIG), &[]).all_processed("x") {
            Err(Error::Ioctl {
                errno: Errno::E2BIG,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }
}
