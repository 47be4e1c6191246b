//! trainerd's library: everything the `trainerd` binary is made of, so tests can reach the parts.
//!
//! - [`policy`]: the restart-or-fail decision at the end of an attempt (pure).
//! - [`process`]: process identity, process-group signals and liveness, from the kernel.
//! - [`store`]: the durable job records in sled; the only module that touches sled.

pub mod policy;
pub mod process;
pub mod store;
