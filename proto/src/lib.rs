//! The one source of trainerd's wire types.
//!
//! - [`v1`]: the gRPC API generated from `proto/trainerd.proto` (messages, enums, client and server).
//! - [`state`]: the job state machine over the generated [`v1::JobState`], its legal transitions in one table.
//! - [`trainer`]: the trainer protocol v1, the contract between trainerd and any training process
//!   (environment, progress file, exit codes), specified in `docs/trainer-protocol.md`.
//! - [`json`]: the stable JSON forms (jobs, health, reconciliation) of trainctl --json and the control socket.
//! - [`units`]: byte counts and other quantities in words.
//! - [`descriptor`]: the API as its descriptor lists it, for the compatibility check and field coverage.
//! - [`atomic`]: the write-temp-fsync-rename helper that every durable file in the project goes through.

pub mod atomic;
pub mod descriptor;
pub mod json;
pub mod state;
pub mod trainer;
pub mod units;

/// The gRPC API, package `trainerd.v1`, generated at build time.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("trainerd.v1");
}

/// The encoded `FileDescriptorSet` of `trainerd.proto`: what gRPC reflection serves, and what the
/// API compatibility test reads.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("trainerd_descriptor");

/// The API's version, `MAJOR.MINOR`: the major is the proto package's (`trainerd.v1`), the minor
/// counts compatible additions (docs/api.md, "Compatibility"). DaemonInfo reports it.
pub const API_VERSION: &str = "1.7";
