//! trainerd's library: everything the `trainerd` binary is made of, so tests can reach the parts.
//!
//! - [`policy`]: the restart-or-fail decision at the end of an attempt (pure).
//! - [`store`]: the durable job records in sled; the only module that touches sled.

pub mod policy;
pub mod store;
