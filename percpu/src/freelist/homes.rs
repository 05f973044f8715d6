//! Homes: the cache index an item belongs to, coded so that a push tests it in one instruction.
//!
//! A caller that keeps items sharing a cache line with one CPU (the slab allocator's blocks
//! smaller than a line) gives each item a home, and [`DirectCaches`](super::caches::DirectCaches)
//! pushes an item only into its home's cache. The push runs on every `free`, so the test must be
//! cheap: "no home, or this index's home" as a comparison takes two tests, or a multiply to make
//! them one branch (five instructions on x86_64).
//!
//! Homes are therefore codes: [`HOME_BITS`]-bit words with exactly half of their bits set, index
//! `i`'s the `i`-th such word in increasing order, and 0 for no home. Two different words with
//! the same number of bits set never lie one inside the other, so an item with home code `h`
//! belongs to another index exactly when `h & away != 0`, where `away` is the home bits outside
//! this index's code ([`away_mask`]: all of them for an index with no code). Each index's region
//! holds its mask, and the push tests the item's code against it in memory: one `test`.

/// Bits of a home code.
pub(crate) const HOME_BITS: u32 = 10;
/// The bits a home code may have.
pub(crate) const HOME_MASK: u32 = (1 << HOME_BITS) - 1;
/// Bits set in every home code.
const WEIGHT: u32 = HOME_BITS / 2;
/// Indices with a home code: the words of [`HOME_BITS`] bits with [`WEIGHT`] set (10 choose 5).
/// Items made on indices from this one up have no home.
pub(crate) const HOMED_INDICES: u32 = 252;

/// Each homed index's code, in increasing order.
const CODES: [u16; HOMED_INDICES as usize] = {
    let mut codes = [0u16; HOMED_INDICES as usize];
    let mut n = 0;
    let mut word = 0;
    while word <= HOME_MASK {
        if word.count_ones() == WEIGHT {
            codes[n] = word as u16;
            n += 1;
        }
        word += 1;
    }
    assert!(n == HOMED_INDICES as usize);
    codes
};

/// For each code, its index + 1; 0 for words that are no home code.
const INDEX_BY_CODE: [u8; 1 << HOME_BITS] = {
    let mut table = [0u8; 1 << HOME_BITS];
    let mut i = 0;
    while i < CODES.len() {
        table[CODES[i] as usize] = (i + 1) as u8;
        i += 1;
    }
    table
};

/// The home code of index `index`; 0 (no home) for indices from [`HOMED_INDICES`] up.
#[inline]
pub(crate) const fn home_code(index: u32) -> u32 {
    if index < HOMED_INDICES {
        CODES[index as usize] as u32
    } else {
        0
    }
}

/// The index whose home code is `code`; `None` for 0 (no home) and any word that is no home
/// code. Bits above [`HOME_MASK`] are ignored.
#[inline]
pub(crate) const fn home_index(code: u32) -> Option<u32> {
    match INDEX_BY_CODE[(code & HOME_MASK) as usize] {
        0 => None,
        n => Some(n as u32 - 1),
    }
}

/// The bits that mark an item as another index's, seen from index `index`: the home bits outside
/// its code, or all of them for an index with no code (which then keeps only items with no home).
/// An item with code `h` belongs on `index` (or nowhere) exactly when `h & away_mask(index) == 0`.
#[inline]
pub(crate) const fn away_mask(index: u32) -> u32 {
    HOME_MASK & !home_code(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_of_one_weight_and_decode_to_their_index() {
        for index in 0..HOMED_INDICES {
            let code = home_code(index);
            assert_eq!(code.count_ones(), WEIGHT, "index {index}");
            assert_eq!(code & !HOME_MASK, 0);
            assert_eq!(home_index(code), Some(index));
        }
        assert_eq!(home_code(HOMED_INDICES), 0);
        assert_eq!(home_code(u32::MAX), 0);
        assert_eq!(home_index(0), None);
        // Words of another weight are no code.
        assert_eq!(home_index(1), None);
        assert_eq!(home_index(HOME_MASK), None);
    }

    /// The test the pushes make: every pair of indices (and no home on either side) against the
    /// comparison it replaces.
    #[test]
    fn the_away_test_agrees_with_comparing_homes() {
        let indices = 0..HOMED_INDICES + 3;
        for here in indices.clone() {
            let away = away_mask(here);
            for home in indices.clone() {
                let code = home_code(home);
                let belongs = code == 0 || home == here;
                assert_eq!(code & away == 0, belongs, "home {home} seen from {here}");
            }
        }
    }
}
