//! The one source of trainerd's wire types.
//!
//! - [`v1`]: the gRPC API generated from `proto/trainerd.proto` (messages, enums, client and server).
//! - [`state`]: the job state machine over the generated [`v1::JobState`], its legal transitions in one table.
//! - [`trainer`]: the trainer protocol v1, the contract between trainerd and any training process
//!   (environment, progress file, exit codes), specified in `docs/trainer-protocol.md`.
//! - [`json`]: the stable JSON forms (jobs, health, reconciliation) of trainctl --json and the control socket.
//! - [`units`]: byte counts and other quantities in words.
//! - [`atomic`]: the write-temp-fsync-rename helper that every durable file in the project goes through.

pub mod atomic;
pub mod json;
pub mod state;
pub mod trainer;
pub mod units;

/// The gRPC API, package `trainerd.v1`, generated at build time.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("trainerd.v1");
}
