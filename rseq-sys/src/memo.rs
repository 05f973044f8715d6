//! A per-thread memo: one value a client derived from the thread's index, kept beside the
//! registration where a fast path reads both at once.
//!
//! A per-CPU structure finds its data for the index a thread runs on by reading the index,
//! checking it against its bound, and computing an address. A fast path that keeps the result
//! for the next call skips all three: [`current_with_memo`] gives it the registration together
//! with the index and value it remembered. The index may be stale (the thread may have moved
//! since): the sequence compares it with the kernel's, exactly as it does an index read before
//! the sequence, so a thread that moved aborts and its caller remembers afresh on its slow path.
//!
//! One memo per thread, kept for one client at a time. Each client holds a [`MemoTag`], unique in
//! the process, and the memo answers only the tag that wrote it last: two clients used in turn
//! each take their slow path once per turn, never each other's values. A tag is never reused, so
//! a memo outliving its client (freed, and another built at the same address) is never read.

use core::num::NonZeroU32;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::registration::Current;
use crate::thread_block;

/// A client's claim on the memo; unique in the process (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoTag(NonZeroU32);

/// The raw tag no memo ever holds: for a client that has no [`MemoTag`] yet, whose reads then
/// find nothing.
pub const NO_MEMO_TAG: u32 = u32::MAX;

impl MemoTag {
    /// A tag no other client has had; `None` once 2^32 - 2 have been made, when the caller goes
    /// on without a memo.
    pub fn new() -> Option<MemoTag> {
        // Shared by every copy of this crate that shares the thread's block: two such copies'
        // clients must never hold the same tag.
        let last = thread_block::memo_tags()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                (last < NO_MEMO_TAG - 1).then_some(last + 1)
            })
            .ok()?;
        NonZeroU32::new(last + 1).map(MemoTag)
    }

    /// The raw tag, for a client to keep where its fast path reads it (a [`NO_MEMO_TAG`] there
    /// until it has one).
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

/// What a client remembered: the index it computed `value` for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memo {
    /// The index the thread ran on when the memo was written; it may have moved since.
    pub index: u32,
    /// The client's value for that index.
    pub value: usize,
}

/// Why [`current_with_memo`] found no memo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoMemo {
    /// The thread has no registration (none yet, or no rseq): a slow path may go straight to
    /// its code for threads without rseq.
    Unregistered,
    /// The thread is registered, but its memo is another client's, or none yet.
    Forgotten,
}

/// The current thread's registration and memo, when the memo was last written with raw tag
/// `tag`; else why not ([`NO_MEMO_TAG`] never matches). Never registers. One read of the
/// thread's block, with no test of the registration of its own when the tag matches: a thread
/// has a memo only while registered.
#[inline(always)]
pub fn current_with_memo(tag: u32) -> Result<(Current, Memo), NoMemo> {
    let (t, memo_tag, memo) = thread_block::read_with_memo();
    if memo_tag != tag {
        return Err(if t.area.is_null() {
            NoMemo::Unregistered
        } else {
            NoMemo::Forgotten
        });
    }
    debug_assert!(!t.area.is_null(), "a memo without a registration");
    // SAFETY: the block's memo tag is 0 while its area is null (`ThreadBlock::set` clears it,
    // `ThreadBlock::remember` writes it only beside a registration), and `tag` matched a tag
    // written there, which is never 0 (tags start at 1).
    let area = unsafe { NonNull::new_unchecked(t.area) };
    Ok((Current::from_block(area, t), memo))
}

impl Current {
    /// Remembers `value` for `index` under `tag`, for [`current_with_memo`] on this thread until
    /// another client writes the memo or the registration changes. Nothing happens if the
    /// thread's registration is no longer this one.
    #[inline]
    pub fn remember(self, tag: MemoTag, index: u32, value: usize) {
        thread_block::with(|b| b.remember(self.area().as_ptr(), tag.get(), index, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_tags_are_unique_and_never_the_no_memo_tag() {
        let tags: Vec<u32> = (0..1000).map(|_| MemoTag::new().unwrap().get()).collect();
        let mut sorted = tags.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), tags.len(), "a tag handed out twice");
        assert!(tags.iter().all(|&t| t != 0 && t != NO_MEMO_TAG));
    }

    /// A memo answers the tag that wrote it last, and only on its own thread; other tags,
    /// [`NO_MEMO_TAG`] and other threads find none, and say whether the thread is registered.
    #[test]
    fn a_memo_answers_only_the_tag_that_wrote_it_last() {
        std::thread::spawn(|| {
            let (mine, other) = (MemoTag::new().unwrap(), MemoTag::new().unwrap());
            // A new thread: registered or not yet (the global allocator may have registered
            // it), but no memo.
            assert!(current_with_memo(mine.get()).is_err());
            let Some(current) = crate::current() else {
                // No rseq here: nothing to remember under.
                assert_eq!(
                    current_with_memo(mine.get()).err(),
                    Some(NoMemo::Unregistered)
                );
                return;
            };
            assert_eq!(current_with_memo(mine.get()).err(), Some(NoMemo::Forgotten));
            current.remember(mine, 7, 0xdead_beef);
            let (read, memo) = current_with_memo(mine.get()).expect("the memo just written");
            assert_eq!(
                memo,
                Memo {
                    index: 7,
                    value: 0xdead_beef
                }
            );
            assert_eq!(read.area(), current.area());
            assert_eq!(read.best_index(), current.best_index());
            assert_eq!(read.kernel_size(), current.kernel_size());
            for tag in [other.get(), NO_MEMO_TAG, 0] {
                assert_eq!(current_with_memo(tag).err(), Some(NoMemo::Forgotten));
            }
            std::thread::spawn(move || {
                assert!(
                    current_with_memo(mine.get()).is_err(),
                    "another thread's memo"
                );
            })
            .join()
            .unwrap();
            current.remember(other, 8, 1);
            assert_eq!(current_with_memo(mine.get()).err(), Some(NoMemo::Forgotten));
            assert_eq!(current_with_memo(other.get()).unwrap().1.index, 8);
        })
        .join()
        .unwrap();
    }
}
