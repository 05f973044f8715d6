//! Size classes: which block size serves a request.
//!
//! 16-byte steps up to 128 bytes, then four classes per doubling (160, 192, 224, 256, 320, ...)
//! up to [`MAX_SMALL`] (128 KiB): 48 classes. A block is at most 15 bytes larger than a request of up to
//! 128 bytes, and less than 25% larger above that (at most 20% of the block is waste). Every
//! power of two from 16 up is a class, so any alignment up to [`MAX_SMALL`] has a class whose
//! size is a multiple of it, and blocks, laid out at multiples of their size from a slab start,
//! are aligned to it.

/// The largest request (size, or size rounded up to its alignment) served from slabs; larger
/// ones get their own mapping.
pub(crate) const MAX_SMALL: usize = 1 << MAX_SMALL_SHIFT;
const MAX_SMALL_SHIFT: usize = 17;
/// Number of size classes: eight of 16-byte steps, then four per doubling from 128 bytes.
pub(crate) const CLASSES: usize = 8 + 4 * (MAX_SMALL_SHIFT - 7);
/// The alignment every block has without asking.
pub(crate) const MIN_ALIGN: usize = 16;

/// Block size of each class, ascending.
pub(crate) const SIZES: [usize; CLASSES] = sizes();

const fn sizes() -> [usize; CLASSES] {
    let mut sizes = [0; CLASSES];
    let mut i = 0;
    while i < 8 {
        sizes[i] = 16 * (i + 1);
        i += 1;
    }
    let mut shift = 7;
    while shift < MAX_SMALL_SHIFT {
        let mut step = 1;
        while step <= 4 {
            sizes[i] = (1 << shift) + step * (1 << (shift - 2));
            i += 1;
            step += 1;
        }
        shift += 1;
    }
    assert!(i == CLASSES && sizes[CLASSES - 1] == MAX_SMALL);
    sizes
}

/// The class of a request of `size <= MAX_SMALL` bytes with the default alignment.
#[inline(always)]
pub(crate) const fn class_of(size: usize) -> usize {
    debug_assert!(size <= MAX_SMALL);
    if size <= 128 {
        // 0 shares class 0 with 1..=16.
        return size.saturating_sub(1) / 16;
    }
    // size in (2^shift, 2^(shift+1)]: four classes of 2^(shift-2) each.
    let shift = (usize::BITS - 1 - (size - 1).leading_zeros()) as usize;
    let step = (size - 1 - (1 << shift)) >> (shift - 2);
    8 + (shift - 7) * 4 + step
}

/// The class for a request, or `None` when it is too large (or too aligned) for slabs.
/// Up to this size, [`class_of_small`] looks the class up in a table.
pub(crate) const TABLE_MAX: usize = 1024;

/// The class of each size up to [`TABLE_MAX`] in 16-byte steps: `CLASS_BY_16[(size + 15) / 16]`.
/// A `const`, not a `static`: each caller's crate gets its own copy, addressed relative to the
/// code, where a shared library built on this crate would reach a `static` through the GOT.
const CLASS_BY_16: [u8; TABLE_MAX / 16 + 1] = {
    let mut table = [0u8; TABLE_MAX / 16 + 1];
    let mut i = 0;
    while i < table.len() {
        table[i] = class_of(i * 16) as u8;
        i += 1;
    }
    table
};

/// Whether a block of class `class` may serve `new_size` bytes in place when resized by address
/// (C's `realloc`): it fits, and at least half the block stays in use, as mimalloc and
/// tcmalloc decide. A shrink past half moves, so that a small remainder never pins a large
/// block; a size whose own class is `class` always stays (below half only in the smallest).
pub(crate) fn keeps_block(class: usize, new_size: usize) -> bool {
    let block = SIZES[class];
    new_size <= block && (new_size >= block / 2 || class_of(new_size) == class)
}

/// [`class_of`] with one load instead of the arithmetic up to [`TABLE_MAX`].
#[inline(always)]
pub(crate) fn class_of_small(size: usize) -> usize {
    if size <= TABLE_MAX {
        class_by_table(size)
    } else {
        class_of(size)
    }
}

/// [`class_of`] for `size <= TABLE_MAX`, in one load.
#[inline(always)]
pub(crate) fn class_by_table(size: usize) -> usize {
    debug_assert!(size <= TABLE_MAX);
    // SAFETY: `size <= TABLE_MAX` (the caller's bound) keeps the index within the table.
    unsafe { *CLASS_BY_16.get_unchecked(size.div_ceil(16)) as usize }
}

#[inline(always)]
pub(crate) fn class_for(size: usize, align: usize) -> Option<usize> {
    if align <= MIN_ALIGN {
        if size <= MAX_SMALL {
            Some(class_of(size))
        } else {
            None
        }
    } else {
        aligned_class_for(size, align)
    }
}

#[cold]
fn aligned_class_for(size: usize, align: usize) -> Option<usize> {
    if align > MAX_SMALL || size > MAX_SMALL {
        return None;
    }
    let size = size.max(1).next_multiple_of(align);
    if size > MAX_SMALL {
        return None;
    }
    // A power of two at least `size` is a class and a multiple of `align`: at most three steps.
    let mut class = class_of(size);
    while !SIZES[class].is_multiple_of(align) {
        class += 1;
    }
    Some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_agrees_with_the_arithmetic_for_every_size() {
        for size in 0..=MAX_SMALL {
            assert_eq!(class_of_small(size), class_of(size), "size {size}");
        }
    }

    #[test]
    fn classes_ascend_and_cover_every_power_of_two() {
        assert!(SIZES.windows(2).all(|w| w[0] < w[1]));
        assert!(SIZES.iter().all(|s| s % MIN_ALIGN == 0));
        for shift in 4..=MAX_SMALL_SHIFT {
            assert!(SIZES.contains(&(1 << shift)), "2^{shift}");
        }
    }

    #[test]
    fn every_size_gets_the_smallest_class_that_fits_within_the_waste_bound() {
        for size in 0..=MAX_SMALL {
            let class = class_of(size);
            let block = SIZES[class];
            assert!(block >= size, "size {size} got {block}");
            assert!(
                class == 0 || SIZES[class - 1] < size,
                "size {size}: {block} not smallest"
            );
            if size <= 128 {
                assert!(block - size.max(1) < 16, "size {size}");
            } else {
                assert!(
                    (block - size) * 4 < size,
                    "size {size}: {block} wastes 25% or more"
                );
            }
        }
    }

    #[test]
    fn aligned_requests_get_aligned_classes() {
        for shift in 0..=16 {
            let align = 1usize << shift;
            for size in [0, 1, 15, 16, 17, 100, 1000, 5000, 20000, 32768] {
                match class_for(size, align) {
                    Some(class) => {
                        let block = SIZES[class];
                        assert!(block >= size && block.is_multiple_of(align.max(MIN_ALIGN)));
                        assert!(align <= MAX_SMALL);
                    }
                    None => assert!(size.max(1).next_multiple_of(align) > MAX_SMALL),
                }
            }
        }
        assert_eq!(class_for(MAX_SMALL + 1, 8), None);
        assert_eq!(class_for(8, MAX_SMALL * 2), None);
        // 48 bytes aligned to 32: 64 (48 is a class but not a multiple of 32).
        assert_eq!(SIZES[class_for(48, 32).unwrap()], 64);
    }
}
