//! How libFuzzer's bytes become a `HostInput`, decoded by hand the way `#[derive(Arbitrary)]`
//! (arbitrary 1.5) decodes it, byte for byte, without its generic machinery.
//!
//! The derived decoder cost ~11,000 instructions and ~1.5 us per input (every integer through
//! `fill_buffer` and a `memcpy`, a thread-local recursion guard per value), about 1 % of the
//! `host` target's loop; this one half the time, most of it the vectors' allocations. The rules
//! the derive follows, which this module repeats:
//! - an integer takes its size in bytes, little-endian, zero-filled past the end of the data
//!   (`Unstructured::fill_buffer`); a bool is a u8's lowest bit;
//! - an enum of k variants reads a u32 x and takes variant (x * k) >> 32, then its fields in
//!   order (derive_arbitrary `arbitrary_enum_method`);
//! - a Vec is a loop: a bool "keep going", then an element, until a false bool (`ArbitraryIter`,
//!   `ArbitraryTakeRestIter`: the same loop for the last field, as for the others);
//! - nothing fails: at the end of the data every read gives zeros (variant 0, "stop"). The
//!   derive's recursion guard fails only a type nested in itself, which none of these is.
//!
//! `tests::decodes_as_the_derived_decoder` compares the two on the seeds and on random bytes.

use super::input::{
    CpuidChoice, HostEntry, HostIndex, HostInput, HostOp, HostValue, MAX_HOST_ENTRIES, MAX_HOST_OPS,
};
use crate::fuzzing::{IndexChoice, ValueChoice};
use arbitrary::{Arbitrary, Unstructured};

/// The bytes not decoded yet.
struct Reader<'a> {
    data: &'a [u8],
}

impl Reader<'_> {
    /// The next `N` bytes, zero-filled past the end of the data.
    fn take<const N: usize>(&mut self) -> [u8; N] {
        // (A whole chunk is a fixed-size load, not a `memcpy` call of a variable length.)
        if let Some((chunk, rest)) = self.data.split_first_chunk::<N>() {
            self.data = rest;
            return *chunk;
        }
        let mut buf = [0; N];
        let n = N.min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        buf
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Which of `k` variants.
    fn variant(&mut self, k: u64) -> u64 {
        (u64::from(self.u32()) * k) >> 32
    }

    /// The elements of a collection, each read by `element`; room for `room` is made at the
    /// first (one allocation for a list no longer than what an input uses).
    fn list<T>(&mut self, room: usize, mut element: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let mut v = Vec::new();
        while self.bool() {
            if v.is_empty() {
                v.reserve(room);
            }
            v.push(element(self));
        }
        v
    }

    fn index_choice(&mut self) -> IndexChoice {
        match self.variant(4) {
            0 => IndexChoice::Listed(self.u8()),
            1 => IndexChoice::Feature(self.u8()),
            2 => IndexChoice::Edge(self.u8()),
            _ => IndexChoice::Raw(self.u32()),
        }
    }

    fn value_choice(&mut self) -> ValueChoice {
        match self.variant(6) {
            0 => ValueChoice::Zero,
            1 => ValueChoice::Ones,
            2 => ValueChoice::Bit(self.u8()),
            3 => ValueChoice::High(self.u32()),
            4 => {
                let la57 = self.bool();
                let above = self.bool();
                ValueChoice::CanonicalEdge { la57, above }
            }
            _ => ValueChoice::Raw(self.u64()),
        }
    }

    fn host_index(&mut self) -> HostIndex {
        match self.variant(2) {
            0 => HostIndex::Choice(self.index_choice()),
            _ => HostIndex::Catalogued(self.u16()),
        }
    }

    fn host_value(&mut self) -> HostValue {
        match self.variant(4) {
            0 => HostValue::Pick(self.value_choice()),
            1 => HostValue::FlipCurrent(self.u8()),
            2 => HostValue::ReservedBit(self.u8()),
            _ => HostValue::Current,
        }
    }

    fn cpuid_choice(&mut self) -> CpuidChoice {
        match self.variant(4) {
            0 => CpuidChoice::Supported,
            1 => CpuidChoice::Without(self.u8()),
            2 => CpuidChoice::With(self.u8()),
            _ => CpuidChoice::Vendor(self.u8()),
        }
    }

    fn host_op(&mut self) -> HostOp {
        match self.variant(5) {
            0 => HostOp::Set(self.list(MAX_HOST_ENTRIES, |r| {
                let index = r.host_index();
                let value = r.host_value();
                HostEntry { index, value }
            })),
            1 => HostOp::Get(self.list(MAX_HOST_ENTRIES, Self::host_index)),
            2 => HostOp::SetCpuid(self.cpuid_choice()),
            3 => HostOp::Run,
            _ => HostOp::SaveRestore,
        }
    }

    fn host_input(&mut self) -> HostInput {
        HostInput {
            ops: self.list(MAX_HOST_OPS, Self::host_op),
        }
    }
}

impl<'a> Arbitrary<'a> for HostInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let all = u.len();
        let mut r = Reader {
            data: u.peek_bytes(all).unwrap_or_default(),
        };
        let input = r.host_input();
        u.bytes(all - r.data.len())?;
        Ok(input)
    }

    fn arbitrary_take_rest(u: Unstructured<'a>) -> arbitrary::Result<Self> {
        let data = u.peek_bytes(u.len()).unwrap_or_default();
        Ok(Reader { data }.host_input())
    }

    fn size_hint(depth: usize) -> (usize, Option<usize>) {
        // What the derive gave: a struct of one Vec.
        <Vec<HostOp> as Arbitrary>::size_hint(depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `#[derive(Arbitrary)]` on `struct HostInput { ops: Vec<HostOp> }` does: the last
    /// field through `arbitrary_take_rest`, the others (here none) through `arbitrary`.
    fn derived_take_rest(bytes: &[u8]) -> arbitrary::Result<HostInput> {
        let ops = Unstructured::new(bytes)
            .arbitrary_take_rest_iter::<HostOp>()?
            .collect::<arbitrary::Result<Vec<_>>>()?;
        Ok(HostInput { ops })
    }

    /// And its `arbitrary`, which leaves the bytes it did not read.
    fn derived(bytes: &[u8]) -> (String, usize) {
        let mut u = Unstructured::new(bytes);
        let ops: Vec<HostOp> = Arbitrary::arbitrary(&mut u).unwrap();
        (format!("{:?}", HostInput { ops }), u.len())
    }

    fn check(bytes: &[u8]) {
        let ours = HostInput::arbitrary_take_rest(Unstructured::new(bytes)).unwrap();
        let theirs = derived_take_rest(bytes).unwrap();
        assert_eq!(
            format!("{ours:?}"),
            format!("{theirs:?}"),
            "bytes {bytes:02x?}"
        );
        let mut u = Unstructured::new(bytes);
        let ours = HostInput::arbitrary(&mut u).unwrap();
        assert_eq!(
            (format!("{ours:?}"), u.len()),
            derived(bytes),
            "bytes {bytes:02x?}"
        );
    }

    #[test]
    fn decodes_as_the_derived_decoder() {
        let mut seeds = 0;
        for path in crate::fuzzing::corpus_files("host") {
            check(&std::fs::read(&path).unwrap());
            seeds += 1;
        }
        assert!(seeds > 0, "no host seeds");
        // Random bytes, dense in the values that choose variants and keep lists going: every
        // byte drawn from a few interesting ones or at random (xorshift64*, fixed seed).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        for _ in 0..20_000 {
            let len = (next() % 700) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => [0x00, 0x01, 0xff, 0x7f, 0x80, 0x33, 0xcc][(next() % 7) as usize],
                    _ => next() as u8,
                })
                .collect();
            check(&bytes);
        }
        check(&[]);
        check(&[1]);
        check(&[1, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn size_hint_is_the_derived_one() {
        assert_eq!(HostInput::size_hint(0), (0, None));
    }
}
