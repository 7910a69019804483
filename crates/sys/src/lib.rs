//! nodedns-sys: the only crate of nodedns with `unsafe` code. Every other crate is built with
//! `unsafe_code` forbidden (root Cargo.toml, `[workspace.lints]`), so a reviewer reads every
//! raw syscall, pointer and `SAFETY:` argument in this one place. Each module puts a safe API
//! over one kernel interface:
//!
//! - [`mmsg`]: batched UDP receive and send (`recvmmsg(2)` / `sendmmsg(2)`), the cache-hit path.
//! - [`caps`]: dropping capabilities in every thread of the process (capget/capset, a signal
//!   handler run in each thread). Its signal handler and the statics it reads are the one piece of
//!   process-wide mutable state nodedns has: the kernel offers no other way to reach another
//!   thread's credentials.
//! - [`fdpass`]: taking ownership of descriptors received with `SCM_RIGHTS`.
//! - `alloc` (feature `counting-alloc`, tests only): an allocator that counts allocations.
//!
//! What nix or std already wraps safely (rlimits, sending descriptors, errno, gettid) is used from
//! there instead of being wrapped again here.

#[cfg(feature = "counting-alloc")]
pub mod alloc;
pub mod caps;
pub mod fdpass;
pub mod mmsg;
