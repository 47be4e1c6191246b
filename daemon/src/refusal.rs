//! Why the actors refuse a request: outcomes in the job domain, which the Supervisor and the JobActors
//! reply with. The interfaces turn them into their own errors (`api::ApiError`, then a gRPC status or
//! a JSON error object); the actors never know those, so no actor imports the API.

use crate::store::records::JobId;
use crate::store::StoreError;
use trainerd_proto::state::state_word;
use trainerd_proto::v1::JobState;

/// A request the job domain refused, and why, in words a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No such job.
    #[error("{0}")]
    NotFound(String),
    /// The job's state does not allow it now (cancel a finished job, pause a paused one).
    #[error("{0}")]
    NotNow(String),
    /// The store refused: a full disk, or a record it cannot read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something that should not happen.
    #[error("{0}")]
    Internal(String),
}

/// The refusal for pausing job `id` in `state`.
pub fn not_pausable(id: JobId, state: JobState) -> Refusal {
    let what = match state {
        JobState::Paused => "is already paused".to_string(),
        JobState::Pausing => "is already pausing".to_string(),
        other => format!("is {}", state_word(other)),
    };
    Refusal::NotNow(format!("job {id} {what}; only a queued, starting, running or backing-off job can be paused"))
}
