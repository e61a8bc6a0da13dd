//! Fetching on the reader's own thread: a FUSE thread that waits for a chunk from a
//! local store may as well run the fetch and decode the chunk itself.
//!
//! A miss used to cross threads six times: the FUSE thread spawned the flight on a
//! runtime worker, which read the pack range on a blocking thread, decoded it on another,
//! and woke the FUSE thread with the bytes; each hand-off wakes an idle core. The machine-
//! learning image's start-up is one reader waiting on about 1300 misses in a row: with
//! the flight and the decoding on the reader's thread its median was 3-9% lower in four of
//! five sets of alternating runs and 3% higher in one (docs/benchmarks-notes.md). A thread
//! marks itself with [`on_this_thread`]; every other thread (the runtime's workers, which
//! must never block) keeps the hand-offs.
//!
//! The pack read itself stays on the blocking pool, so that a store on a disk that hangs
//! still lets the reader's timeout fire; reading in place as well gained nothing more.

use std::cell::Cell;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with blocking fetch work allowed on this thread: a dedicated thread that
/// would only wait for it otherwise (a FUSE thread in `block_on`), never a runtime worker.
pub fn on_this_thread<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INLINE.with(|i| i.set(self.0));
        }
    }
    let _restore = Restore(INLINE.with(|i| i.replace(true)));
    f()
}

/// Whether the current thread may do blocking fetch work in place.
pub(crate) fn allowed() -> bool {
    INLINE.with(Cell::get)
}

/// Runs blocking work `f` in place where [`allowed`], else on tokio's blocking pool.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> Result<R, tokio::task::JoinError> {
    if allowed() {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f).await
}

#[cfg(test)]
mod tests {
    use super::{allowed, blocking, on_this_thread};

    #[test]
    fn a_marked_thread_is_unmarked_after_its_call_even_when_nested() {
        assert!(!allowed());
        on_this_thread(|| {
            assert!(allowed());
            on_this_thread(|| assert!(allowed()));
            assert!(allowed(), "the inner call restored the outer mark");
        });
        assert!(!allowed());
        let unwound = std::panic::catch_unwind(|| on_this_thread(|| panic!("in the call")));
        assert!(unwound.is_err());
        assert!(!allowed(), "a panic restores the mark too");
    }

    #[test]
    fn blocking_work_runs_in_place_only_on_a_marked_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let here = std::thread::current().id();
        let ran_on = |marked: bool| {
            let work = || rt.block_on(blocking(|| std::thread::current().id()));
            let got = if marked { on_this_thread(work) } else { work() };
            got.expect("joined")
        };
        assert_eq!(ran_on(true), here);
        assert_ne!(ran_on(false), here);
    }
}
