//! A global allocator that counts the calling thread's allocations and otherwise forwards to the
//! system allocator, for tests that prove a path allocates nothing once warm (the hot path rule).
//! Behind the `counting-alloc` feature, which only dev-dependencies enable: production builds
//! never contain it.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: nodedns_sys::alloc::Counting = nodedns_sys::alloc::Counting;
//! let before = nodedns_sys::alloc::Counting::this_thread();
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // const-initialized and without a destructor, so reading it never allocates (which would
    // recurse into the allocator).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Counts `alloc` and `realloc` calls per thread; frees are not counted.
pub struct Counting;

impl Counting {
    /// Allocations the calling thread has made so far.
    pub fn this_thread() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }
}

fn count() {
    // try_with: during thread teardown the slot may be gone; such allocations go uncounted.
    let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
}

// SAFETY: every call forwards to the system allocator unchanged, so its guarantees are ours; the
// counting touches only a thread-local Cell that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract (non-zero-size layout) is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above, i.e. from System, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as for dealloc; `new_size` is the caller's, passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
