//! End-to-end tests: the real trainerd, real trainer processes, real gRPC over a real unix socket.
//! One test binary (one link) with a module per area.

mod bad_input;
mod browser;
mod clients;
mod full_disk;
mod hostile;
mod interfaces;
mod lifecycle;
mod metrics;
mod pause_queue;
mod python;
mod reconcile;
mod restart;
mod scripts;
mod security;
mod supervisor;
mod systemd;
mod trainctl;
