//! A vector that keeps up to `N` elements in place and moves them all to the heap past that.
//!
//! The `host` fuzz target makes ~12 MSR ioctls per input, each over a batch of at most 16
//! entries, and its bookkeeping (values before a write, indices to read back, what was read) is
//! as small. With `Vec` those were ~45 heap allocations per input on the fuzzing thread, a few
//! microseconds of a ~130 us input; in place they cost none. Elements are `Copy`, so no `unsafe`
//! is needed: the unused slots hold `T::default()`.

use std::fmt;
use std::ops::{Deref, DerefMut};

#[derive(Clone)]
pub struct InlineVec<T: Copy + Default, const N: usize> {
    /// Elements in `inline` (while not spilled).
    len: usize,
    inline: [T; N],
    /// All the elements once there were more than `N` (then `inline` is unused).
    heap: Option<Vec<T>>,
}

impl<T: Copy + Default, const N: usize> InlineVec<T, N> {
    /// How many elements are kept in place.
    pub const CAPACITY: usize = N;

    pub fn new() -> Self {
        InlineVec {
            len: 0,
            inline: [T::default(); N],
            heap: None,
        }
    }

    #[inline]
    pub fn push(&mut self, value: T) {
        if self.heap.is_none() && self.len < N {
            self.inline[self.len] = value;
            self.len += 1;
        } else {
            self.push_spilled(value);
        }
    }

    /// `push` past the in-place room: onto the heap, moving the elements there the first time.
    #[cold]
    fn push_spilled(&mut self, value: T) {
        let h = self.heap.get_or_insert_with(|| {
            let mut h = Vec::with_capacity(2 * N.max(1));
            h.extend_from_slice(&self.inline[..self.len]);
            h
        });
        h.push(value);
    }

    /// Append the elements of `s`, in place while they fit.
    pub fn extend_from_slice(&mut self, s: &[T]) {
        if self.heap.is_none() && self.len + s.len() <= N {
            self.inline[self.len..self.len + s.len()].copy_from_slice(s);
            self.len += s.len();
        } else {
            self.extend(s.iter().copied());
        }
    }

    /// Insert `value` at `at`, shifting the elements after it (panics if `at > len`).
    pub fn insert(&mut self, at: usize, value: T) {
        let len = self.len();
        assert!(at <= len, "insert at {at} past the end of {len}");
        if self.heap.is_none() && len < N {
            self.inline.copy_within(at..len, at + 1);
            self.inline[at] = value;
            self.len += 1;
        } else {
            self.push_spilled(value);
            if let Some(h) = &mut self.heap {
                h.pop();
                h.insert(at, value);
            }
        }
    }

    /// Remove the element at `at`, shifting the elements after it (panics if `at >= len`).
    pub fn remove(&mut self, at: usize) -> T {
        match &mut self.heap {
            Some(h) => h.remove(at),
            None => {
                let value = self.inline[..self.len][at];
                self.inline.copy_within(at + 1..self.len, at);
                self.len -= 1;
                value
            }
        }
    }

    /// Remove consecutive repeated elements (all repeats, once sorted).
    pub fn dedup(&mut self)
    where
        T: PartialEq,
    {
        let mut kept = 0;
        for k in 0..self.len() {
            if kept == 0 || self[kept - 1] != self[k] {
                self[kept] = self[k];
                kept += 1;
            }
        }
        self.truncate(kept);
    }

    /// Remove every element (a spilled vector keeps its heap storage).
    pub fn clear(&mut self) {
        self.len = 0;
        if let Some(h) = &mut self.heap {
            h.clear();
        }
    }

    /// Keep the first `len` elements.
    pub fn truncate(&mut self, len: usize) {
        match &mut self.heap {
            Some(h) => h.truncate(len),
            None => self.len = self.len.min(len),
        }
    }

    pub fn to_vec(&self) -> Vec<T> {
        self.as_slice().to_vec()
    }

    #[inline]
    pub fn as_slice(&self) -> &[T] {
        match &self.heap {
            Some(h) => h,
            None => &self.inline[..self.len],
        }
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        match &mut self.heap {
            Some(h) => h,
            None => &mut self.inline[..self.len],
        }
    }
}

impl<T: Copy + Default, const N: usize> Default for InlineVec<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> Deref for InlineVec<T, N> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Copy + Default, const N: usize> DerefMut for InlineVec<T, N> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<T: Copy + Default + fmt::Debug, const N: usize> fmt::Debug for InlineVec<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Copy + Default + PartialEq, const N: usize> PartialEq for InlineVec<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Copy + Default + Eq, const N: usize> Eq for InlineVec<T, N> {}

impl<T: Copy + Default, const N: usize> Extend<T> for InlineVec<T, N> {
    #[inline]
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let mut iter = iter.into_iter();
        while self.heap.is_none() {
            let Some(v) = iter.next() else { return };
            self.push(v);
        }
        // Spilled: the rest goes straight onto the heap.
        if let Some(h) = &mut self.heap {
            h.extend(iter);
        }
    }
}

impl<'a, T: Copy + Default + 'a, const N: usize> Extend<&'a T> for InlineVec<T, N> {
    #[inline]
    fn extend<I: IntoIterator<Item = &'a T>>(&mut self, iter: I) {
        for v in iter {
            self.push(*v);
        }
    }
}

impl<T: Copy + Default, const N: usize> FromIterator<T> for InlineVec<T, N> {
    #[inline]
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut v = Self::new();
        let (at_least, _) = iter.size_hint();
        if at_least > N {
            v.heap = Some(iter.collect());
        } else {
            v.extend(iter);
        }
        v
    }
}

impl<T: Copy + Default, const N: usize> From<&[T]> for InlineVec<T, N> {
    fn from(s: &[T]) -> Self {
        let mut v = Self::new();
        v.extend_from_slice(s);
        v
    }
}

impl<'a, T: Copy + Default, const N: usize> IntoIterator for &'a InlineVec<T, N> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_in_place_up_to_n_and_spills_past_it_in_order() {
        let mut v: InlineVec<u32, 4> = InlineVec::new();
        for i in 0..4 {
            v.push(i);
        }
        assert!(v.heap.is_none());
        assert_eq!(&*v, &[0, 1, 2, 3]);
        v.push(4);
        assert!(v.heap.is_some());
        assert_eq!(&*v, &[0, 1, 2, 3, 4]);
        v.truncate(2);
        assert_eq!(v.to_vec(), vec![0, 1]);
        v.clear();
        assert!(v.is_empty());
        v.extend([7, 8]);
        assert_eq!(&*v, &[7, 8]);
    }

    #[test]
    fn remove_and_dedup_shift_in_place_and_spilled() {
        let mut v: InlineVec<u32, 3> = [0, 1, 2, 3, 9].into_iter().collect();
        assert_eq!(v.remove(1), 1);
        assert_eq!(&*v, &[0, 2, 3, 9]);
        let mut u: InlineVec<u32, 2> = [3, 1, 3, 2, 1].into_iter().collect();
        u.sort_unstable();
        u.dedup();
        assert_eq!(&*u, &[1, 2, 3]);
        let mut w: InlineVec<u32, 3> = [1, 2, 3].as_slice().into();
        assert_eq!(w.remove(0), 1);
        assert_eq!(&*w, &[2, 3]);
        w[1] = 9;
        assert_eq!(w.last(), Some(&9));
    }

    #[test]
    fn insert_extend_and_slices_spill_in_order() {
        let mut v: InlineVec<u32, 4> = InlineVec::new();
        v.insert(0, 5);
        v.insert(0, 1);
        v.insert(2, 9);
        v.insert(1, 3);
        assert_eq!(&*v, &[1, 3, 5, 9]);
        assert!(v.heap.is_none());
        v.insert(4, 10);
        v.insert(0, 0);
        assert!(v.heap.is_some());
        assert_eq!(&*v, &[0, 1, 3, 5, 9, 10]);
        // An iterator whose size hint says nothing spills part-way through `extend`.
        let mut w: InlineVec<u32, 3> = InlineVec::new();
        w.extend((0..7).filter(|_| true));
        assert_eq!(&*w, &[0, 1, 2, 3, 4, 5, 6]);
        let mut x: InlineVec<u32, 3> = InlineVec::new();
        x.extend_from_slice(&[1, 2]);
        x.extend_from_slice(&[3]);
        assert!(x.heap.is_none());
        x.extend_from_slice(&[4, 5]);
        assert_eq!(&*x, &[1, 2, 3, 4, 5]);
        let collected: InlineVec<u32, 2> = (0..5).collect();
        assert_eq!(&*collected, &[0, 1, 2, 3, 4]);
    }

    #[test]
    fn equality_and_debug_see_the_elements_only() {
        let a: InlineVec<u8, 2> = [1, 2, 3].into_iter().collect();
        let b: InlineVec<u8, 2> = [1, 2, 3].as_slice().into();
        let mut c: InlineVec<u8, 2> = [1, 2, 3, 4].into_iter().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        c.truncate(3);
        assert_eq!(a, c);
        let d: InlineVec<u8, 8> = [5].into_iter().collect();
        assert_eq!(format!("{d:?}"), "[5]");
    }
}
