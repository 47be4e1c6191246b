//! End-to-end tests: the real trainerd, real trainer processes, real gRPC over a real unix socket.
//! One test binary (one link) with a module per area.

mod interfaces;
mod pause_queue;
mod python;
mod restart;
mod supervisor;
mod systemd;
mod trainctl;
