//! Oracles over single MSR ioctls and sequences of them, needing no golden values: batch
//! semantics, documented errnos, repeated reads, save/restore equality and feature-MSR
//! immutability after KVM_RUN. The `host` fuzz target applies them to generated sequences.

use super::Violation;
use crate::inline_vec::InlineVec;
use crate::kvm::raw::{MsrEntry, MsrIo};
use crate::kvm::{Errno, Vcpu};

/// What a KVM_GET_MSRS caller puts in `data` of every entry, to see which ones KVM wrote.
pub const SENTINEL: u64 = 0x5a5a_0bad_c0de_5a5a;

/// Errnos a call may return, with the source that documents them.
pub struct Errnos {
    pub ioctl: &'static str,
    pub allowed: &'static [Errno],
    pub cite: &'static str,
}

/// KVM_GET_MSRS / KVM_SET_MSRS with 1..=255 entries in a valid buffer: the return value is the
/// number of entries processed; the only errors are E2BIG (nmsrs >= 256), EFAULT (bad buffer)
/// and ENOMEM (x86.c msr_io), none of which a well-formed call may hit.
pub const MSR_IO: Errnos = Errnos {
    ioctl: "KVM_GET_MSRS/KVM_SET_MSRS",
    allowed: &[],
    cite: "api.rst 4.18/4.19 (returns the number of msrs processed); x86.c msr_io: E2BIG, EFAULT, ENOMEM only",
};

/// KVM_SET_CPUID2 with a valid table: 0, E2BIG (too many entries), EINVAL (after KVM_RUN with a
/// different table, or a table kvm_check_cpuid refuses), ENOMEM, EFAULT.
pub const SET_CPUID2: Errnos = Errnos {
    ioctl: "KVM_SET_CPUID2",
    allowed: &[Errno::EINVAL, Errno::E2BIG],
    cite:
        "api.rst 4.73; cpuid.c kvm_set_cpuid (kvm_cpuid_check_equal after KVM_RUN, kvm_check_cpuid)",
};

impl Errnos {
    /// Oracle `documented-errno`: `errno` is one the call may return.
    pub fn check(&self, errno: Errno) -> Result<(), Violation> {
        if self.allowed.contains(&errno) {
            return Ok(());
        }
        Err(Violation {
            oracle: "documented-errno",
            msr: None,
            expected: format!(
                "{} to fail only with {:?} ({})",
                self.ioctl, self.allowed, self.cite
            ),
            actual: format!("errno {errno} ({})", errno.text()),
        })
    }
}

/// The count of an MSR ioctl, or the `documented-errno` violation.
pub fn msr_io_count(io: &MsrIo) -> Result<usize, Violation> {
    match io.result {
        Ok(n) if n <= io.entries().len() => Ok(n),
        Ok(n) => Err(Violation {
            oracle: "batch-count",
            msr: None,
            expected: format!("at most {} (entries passed)", io.entries().len()),
            actual: n.to_string(),
        }),
        Err(e) => MSR_IO.check(e).map(|()| 0),
    }
}

/// Oracle `get-batch-untouched` (api.rst 4.18; x86.c __msr_io stops at the first entry that
/// fails): KVM_GET_MSRS leaves the data of every entry after the count-th as the caller wrote it
/// (SENTINEL).
pub fn get_batch_untouched(io: &MsrIo, count: usize) -> Result<(), Violation> {
    match io.entries().iter().skip(count + 1).find(|e| e.data != SENTINEL) {
        None => Ok(()),
        Some(e) => Err(Violation {
            oracle: "get-batch-untouched",
            msr: Some(e.index),
            expected: format!(
                "data {SENTINEL:#x} (entries after the first failing one, #{count}, are not processed)"
            ),
            actual: format!("{:#x}", e.data),
        }),
    }
}

/// Oracle `set-batch-stops-at-rejection` (api.rst 4.19: the return value is the number of MSRs
/// set): the entry KVM_SET_MSRS stopped at, written alone right after, is rejected too. It runs
/// after the same prefix took effect, so the vCPU is in the state the batch saw.
pub fn set_batch_stopper_rejected(
    vcpu: &Vcpu,
    entries: &[MsrEntry],
    count: usize,
) -> Result<(), Violation> {
    let Some(stopper) = entries.get(count) else {
        return Ok(());
    };
    let alone = vcpu.set_msrs(std::slice::from_ref(stopper));
    match alone.result {
        Ok(0) => Ok(()),
        other => Err(Violation {
            oracle: "set-batch-stops-at-rejection",
            msr: Some(stopper.index),
            expected: format!(
                "KVM_SET_MSRS of entry #{count} ({:#x} = {:#x}) alone to be rejected like in the batch (Ok(0))",
                stopper.index, stopper.data
            ),
            actual: format!("{other:?}"),
        }),
    }
}

/// The order in which `RepeatedReads` files one batch of reads: the positions of the entries
/// whose MSR is compared (not volatile), sorted by (index, position) -- of two reads of one MSR
/// the earlier comes first, as `observe` would see them.
#[derive(Clone, Debug, Default)]
pub struct BatchOrder {
    /// The batch's indices, in its order.
    indices: Vec<u32>,
    /// Positions into the batch.
    sorted: Vec<u32>,
}

impl BatchOrder {
    /// The order of a batch of `indices` (fewer than 2^32); `volatile`: the catalogue documents
    /// the MSR as changing on its own (not compared).
    pub fn of(indices: impl Iterator<Item = u32>, volatile: impl Fn(u32) -> bool) -> BatchOrder {
        let indices: Vec<u32> = indices.collect();
        // Packed in one u64 so that an unstable sort of plain integers does it (the library's
        // stable sort of pairs cost more than the `observe` calls it replaced).
        let mut keys: Vec<u64> = (indices.iter().enumerate())
            .filter(|(_, &i)| !volatile(i))
            .map(|(k, &i)| u64::from(i) << 32 | k as u64)
            .collect();
        keys.sort_unstable();
        let sorted = keys.iter().map(|key| *key as u32).collect();
        BatchOrder { indices, sorted }
    }
}

/// Oracle `repeated-reads`: without a write in between, two host reads of an MSR the catalogue
/// does not document as changing on its own return the same value -- also across KVM_RUN of a
/// guest that touches no MSR. Id-dependent registers (the x2APIC ID and LDR, SDM vol. 3A
/// 12.12.5) are compared like any other: they are per vCPU, not per read.
#[derive(Default)]
pub struct RepeatedReads {
    /// The last value read of each MSR since the last `forget`, sorted by index (in place up to
    /// the ~40 MSRs of a save/restore; the `host` target observes every read of every input,
    /// and a save/restore reads them all at once, so a scan per read would be quadratic).
    last: InlineVec<(u32, u64), 48>,
}

impl RepeatedReads {
    /// Record a successful read; a different earlier value is a violation.
    /// `volatile`: the catalogue documents the MSR as changing on its own (not compared).
    pub fn observe(
        &mut self,
        volatile: impl Fn(u32) -> bool,
        index: u32,
        value: u64,
        since: &str,
    ) -> Result<(), Violation> {
        if volatile(index) {
            return Ok(());
        }
        match self.last.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(k) => {
                let prev = std::mem::replace(&mut self.last[k].1, value);
                if prev != value {
                    return Err(repeated_read_differs(index, prev, value, since));
                }
            }
            Err(k) => self.last.insert(k, (index, value)),
        }
        Ok(())
    }

    /// Forget what was read, then `observe` every entry of `read` (one batch: a repeated MSR in
    /// it is compared like two reads), sorting once instead of inserting each.
    pub fn observe_batch(
        &mut self,
        volatile: impl Fn(u32) -> bool,
        read: &[MsrEntry],
        since: &str,
    ) -> Result<(), Violation> {
        let order = BatchOrder::of(read.iter().map(|e| e.index), &volatile);
        self.observe_in_order(volatile, &order, read, since)
    }

    /// `observe_batch` of a batch whose order was computed beforehand: `order` is
    /// `BatchOrder::of` the indices of `read`, in `read`'s order, with the same `volatile`
    /// (the indices are checked: for any other batch the order is computed here). A
    /// save/restore reads the whole index list, always in the same order, so its order is
    /// computed once per campaign.
    pub fn observe_in_order(
        &mut self,
        volatile: impl Fn(u32) -> bool,
        order: &BatchOrder,
        read: &[MsrEntry],
        since: &str,
    ) -> Result<(), Violation> {
        if !read
            .iter()
            .map(|e| e.index)
            .eq(order.indices.iter().copied())
        {
            return self.observe_batch(volatile, read, since);
        }
        self.last.clear();
        for &k in &order.sorted {
            let e = read[k as usize];
            match self.last.last_mut() {
                Some((index, prev)) if *index == e.index => {
                    let prev = std::mem::replace(prev, e.data);
                    if prev != e.data {
                        return Err(repeated_read_differs(e.index, prev, e.data, since));
                    }
                }
                _ => self.last.push((e.index, e.data)),
            }
        }
        Ok(())
    }

    /// Any write (or CPUID change) may change any MSR: forget what was read.
    pub fn forget(&mut self) {
        self.last.clear();
    }

    /// Forget what was read of one MSR (something documented changed it).
    pub fn forget_index(&mut self, index: u32) {
        if let Ok(k) = self.last.binary_search_by_key(&index, |&(i, _)| i) {
            self.last.remove(k);
        }
    }
}

/// The `repeated-reads` violation: `index` read `value` after `prev` with no write in between.
fn repeated_read_differs(index: u32, prev: u64, value: u64, since: &str) -> Violation {
    Violation {
        oracle: "repeated-reads",
        msr: Some(index),
        expected: format!("{prev:#x} (the previous read; no write since, {since})"),
        actual: format!("{value:#x}"),
    }
}

/// Oracle `save-restore-equal` (api.rst 4.3: the index list is what userspace saves and
/// restores; QEMU's kvm_put_msrs needs every entry accepted): the destination accepts every
/// saved entry and reads back the saved value, except MSRs `volatile` says change on their own
/// (the catalogue documents them).
pub fn save_restore_equal(
    volatile: impl Fn(u32) -> bool,
    saved: &[MsrEntry],
    restore: &MsrIo,
    read_back: &MsrIo,
) -> Result<(), Violation> {
    let accepted = msr_io_count(restore)?;
    if accepted != saved.len() {
        return Err(Violation {
            oracle: "save-restore-equal",
            msr: saved.get(accepted).map(|e| e.index),
            expected: format!(
                "the destination to accept all {} saved entries",
                saved.len()
            ),
            actual: format!("KVM_SET_MSRS stopped at entry #{accepted}"),
        });
    }
    let read = msr_io_count(read_back)?;
    for (k, (s, r)) in saved.iter().zip(read_back.entries()).enumerate() {
        if volatile(s.index) {
            continue;
        }
        if k >= read || s.data != r.data {
            return Err(Violation {
                oracle: "save-restore-equal",
                msr: Some(s.index),
                expected: format!("{:#x} (the saved value)", s.data),
                actual: if k >= read {
                    "no value (KVM_GET_MSRS stopped before it)".into()
                } else {
                    format!("{:#x}", r.data)
                },
            });
        }
    }
    Ok(())
}

pub use crate::msr_index::IA32_UCODE_REV as UCODE_REV;

/// Oracle `feature-msr-immutable-after-run` (x86.c do_set_msr: once the vCPU has run, a write
/// of a different value to an immutable feature MSR fails with -EINVAL; kvm_is_immutable_feature_msr
/// excludes UCODE_REV): `accepted` entries of a KVM_SET_MSRS on a vCPU that has run, with the
/// values the MSRs held before (`before`, None if unreadable).
pub fn feature_msrs_immutable(
    is_feature_msr: impl Fn(u32) -> bool,
    accepted: &[MsrEntry],
    before: impl Fn(u32) -> Option<u64>,
) -> Result<(), Violation> {
    for e in accepted {
        if !is_feature_msr(e.index) || e.index == UCODE_REV {
            continue;
        }
        if let Some(old) = before(e.index) {
            if old != e.data {
                return Err(Violation {
                    oracle: "feature-msr-immutable-after-run",
                    msr: Some(e.index),
                    expected: format!(
                        "KVM_SET_MSRS to refuse {:#x} (the vCPU has run; the MSR holds {old:#x})",
                        e.data
                    ),
                    actual: "accepted".into(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(result: Result<usize, Errno>, data: &[u64]) -> MsrIo {
        let entries: Vec<MsrEntry> = data
            .iter()
            .enumerate()
            .map(|(i, &d)| MsrEntry {
                index: i as u32,
                data: d,
            })
            .collect();
        MsrIo::new(result, &entries)
    }

    #[test]
    fn repeated_reads_remember_each_msr_until_forgotten() {
        let stable = |_: u32| false;
        let mut r = RepeatedReads::default();
        // More MSRs than are kept in place, in no particular order, each read twice.
        let order: Vec<u32> = (0..100u32).map(|k| (k * 37) % 100 + 0x10).collect();
        for &i in order.iter().chain(order.iter().rev()) {
            r.observe(stable, i, u64::from(i) * 3, "t").unwrap();
        }
        let v = r.observe(stable, 0x20, 1, "after x").unwrap_err();
        assert_eq!((v.oracle, v.msr), ("repeated-reads", Some(0x20)));
        assert!(
            v.expected.starts_with("0x60 (the previous read"),
            "{}",
            v.expected
        );
        // The new value is the one remembered now.
        r.observe(stable, 0x20, 1, "t").unwrap();
        // A volatile MSR is not compared.
        r.observe(|i| i == 0x21, 0x21, 5, "t").unwrap();
        r.forget_index(0x22);
        r.observe(stable, 0x22, 5, "t").unwrap();
        assert!(r.observe(stable, 0x23, 5, "t").is_err());
        r.forget();
        r.observe(stable, 0x23, 5, "t").unwrap();
        // A batch replaces everything remembered, and compares repeats within it.
        let e = |index, data| MsrEntry { index, data };
        r.observe_batch(stable, &[e(0x30, 1), e(0x11, 2), e(0x30, 1)], "b")
            .unwrap();
        r.observe(stable, 0x23, 6, "t").unwrap();
        assert!(r.observe(stable, 0x11, 3, "t").is_err());
        let v = r
            .observe_batch(
                |i| i == 0x12,
                &[e(0x12, 1), e(0x12, 2), e(0x31, 1), e(0x31, 4)],
                "b",
            )
            .unwrap_err();
        assert_eq!(v.msr, Some(0x31));
        assert!(v.actual == "0x4" && v.expected.starts_with("0x1 "), "{v:?}");
    }

    #[test]
    fn a_batch_in_a_precomputed_order_is_observed_as_in_its_own() {
        let e = |index, data| MsrEntry { index, data };
        let volatile = |i: u32| i == 0x10;
        let list = [0x1b, 0x10, 0xc000_0080, 0x3a, 0x1b, 0x174];
        let order = BatchOrder::of(list.iter().copied(), volatile);
        let batch = |data: [u64; 6]| -> Vec<MsrEntry> {
            list.iter().zip(data).map(|(&i, d)| e(i, d)).collect()
        };
        // The same verdicts as `observe_batch`, and the same memory after it.
        for data in [[1, 2, 3, 4, 1, 6], [1, 2, 3, 4, 9, 6], [0; 6]] {
            let (mut a, mut b) = (RepeatedReads::default(), RepeatedReads::default());
            let ra = a.observe_batch(volatile, &batch(data), "s");
            let rb = b.observe_in_order(volatile, &order, &batch(data), "s");
            assert_eq!(ra, rb, "{data:?}");
            assert_eq!(a.last.as_slice(), b.last.as_slice());
        }
        // The repeated MSR that differs is named, with both values.
        let v = RepeatedReads::default()
            .observe_in_order(volatile, &order, &batch([1, 2, 3, 4, 9, 6]), "s")
            .unwrap_err();
        assert_eq!((v.msr, v.actual.as_str()), (Some(0x1b), "0x9"));
        // A batch the order was not computed for is ordered on its own: nothing is skipped.
        let other = [e(0x3a, 1), e(0x11, 2), e(0x11, 3)];
        let v = RepeatedReads::default()
            .observe_in_order(volatile, &order, &other, "s")
            .unwrap_err();
        assert_eq!(v.msr, Some(0x11));
        let mut r = RepeatedReads::default();
        r.observe_in_order(volatile, &order, &other[..2], "s")
            .unwrap();
        assert_eq!(r.last.as_slice(), &[(0x11, 2), (0x3a, 1)]);
    }

    #[test]
    fn untouched_entries_after_the_failing_one() {
        let ok = io(Ok(1), &[7, SENTINEL, SENTINEL]);
        assert!(get_batch_untouched(&ok, 1).is_ok());
        // The failing entry itself is not judged; the one after it is.
        let bad = io(Ok(1), &[7, 3, 9]);
        let v = get_batch_untouched(&bad, 1).unwrap_err();
        assert_eq!((v.oracle, v.msr), ("get-batch-untouched", Some(2)));
    }

    #[test]
    fn counts_and_errnos() {
        assert_eq!(msr_io_count(&io(Ok(2), &[0, 0])), Ok(2));
        assert_eq!(
            msr_io_count(&io(Ok(3), &[0, 0])).unwrap_err().oracle,
            "batch-count"
        );
        assert_eq!(
            msr_io_count(&io(Err(Errno::EINVAL), &[0]))
                .unwrap_err()
                .oracle,
            "documented-errno"
        );
        assert!(SET_CPUID2.check(Errno::EINVAL).is_ok());
        assert!(SET_CPUID2.check(Errno::EPERM).is_err());
    }

    #[test]
    fn repeated_reads_compare_all_but_volatile_msrs() {
        let volatile = |i: u32| i == 0x10;
        let mut r = RepeatedReads::default();
        assert!(r.observe(volatile, 0x1b, 0xfee0_0c00, "x").is_ok());
        assert!(r.observe(volatile, 0x1b, 0xfee0_0c00, "x").is_ok());
        assert!(r.observe(volatile, 0x10, 1, "x").is_ok());
        assert!(r.observe(volatile, 0x10, 2, "x").is_ok());
        let v = r.observe(volatile, 0x1b, 0xfee0_0900, "x").unwrap_err();
        assert_eq!((v.oracle, v.msr), ("repeated-reads", Some(0x1b)));
        r.forget();
        assert!(r.observe(volatile, 0x1b, 0, "x").is_ok());
        r.forget_index(0x1b);
        assert!(r.observe(volatile, 0x1b, 5, "x").is_ok());
        // More MSRs than are kept in place, seen in any order.
        for i in (0..100).rev() {
            assert!(r.observe(volatile, 0x100 + i, u64::from(i), "x").is_ok());
        }
        for i in 0..100 {
            assert!(r.observe(volatile, 0x100 + i, u64::from(i), "x").is_ok());
        }
        let v = r.observe(volatile, 0x150, 7, "x").unwrap_err();
        assert_eq!(v.msr, Some(0x150));
        assert!(r.observe(volatile, 0x1b, 6, "x").is_err());
    }

    #[test]
    fn save_restore_compares_all_but_volatile_msrs() {
        let volatile = |i: u32| i == 1;
        let saved = io(Ok(3), &[7, 8, 9]).entries().to_vec();
        let back = io(Ok(3), &[7, 100, 9]);
        assert!(save_restore_equal(volatile, &saved, &io(Ok(3), &[0, 0, 0]), &back).is_ok());
        let v = save_restore_equal(|_| false, &saved, &io(Ok(3), &[0, 0, 0]), &back).unwrap_err();
        assert_eq!((v.oracle, v.msr), ("save-restore-equal", Some(1)));
        let partial =
            save_restore_equal(volatile, &saved, &io(Ok(2), &[0, 0, 0]), &back).unwrap_err();
        assert_eq!(partial.msr, Some(2));
    }

    #[test]
    fn immutability_ignores_ucode_rev_and_same_values() {
        let before = |i: u32| {
            [(0x10a, 1), (UCODE_REV, 5)]
                .into_iter()
                .find(|e| e.0 == i)
                .map(|e| e.1)
        };
        let feat = |i: u32| i == 0x10a || i == UCODE_REV;
        let same = [MsrEntry {
            index: 0x10a,
            data: 1,
        }];
        assert!(feature_msrs_immutable(feat, &same, before).is_ok());
        let ucode = [MsrEntry {
            index: UCODE_REV,
            data: 6,
        }];
        assert!(feature_msrs_immutable(feat, &ucode, before).is_ok());
        let changed = [MsrEntry {
            index: 0x10a,
            data: 2,
        }];
        let v = feature_msrs_immutable(feat, &changed, before).unwrap_err();
        assert_eq!(v.msr, Some(0x10a));
    }
}
