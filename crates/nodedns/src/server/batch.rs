//! Batched UDP I/O (`recvmmsg(2)` / `sendmmsg(2)`): the raw syscalls live in
//! [`nodedns_sys::mmsg`], the crate that holds all of nodedns's `unsafe`.

pub use nodedns_sys::mmsg::{BATCH, BatchIo, RECV_LEN, Received, SEND_LEN};
