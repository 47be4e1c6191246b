//! The versioned envelope around every stored value: one format byte, then bincode 2 (serde, standard
//! configuration). A reader refuses a format it does not know rather than misreading it.
//!
//! Format history:
//! - 1: the first.
//! - 2: `JobRecord` gained its last field, `run_as: Option<RunAs>`. bincode writes `None` as one zero
//!   byte, so a format-1 job record becomes a format-2 one by appending that byte ([`upgrade_job`]).
//!   Other values encode as in format 1.
//! - 3: `JobSpec` gained `protocol`, `idle_timeout_ms`, `progress_regex` and `resume_rule`; `Attempt`
//!   gained `first_step` and `resume_ignored`; `JobRecord` gained `restarts_exhausted`. Job records
//!   of formats 1 and 2 decode through `legacy::JobRecordV2` (see `Store`); events are unchanged.
//! - 4: `JobSpec` gained `more`, a JSON object of the settings added since (`SpecMore`), so that
//!   adding a submission setting no longer needs a format of its own. Format-3 job records decode
//!   through `legacy::JobRecordV3`.
//! - 5: `Attempt` gained `more`, a JSON object (`AttemptMore`) holding the executor's handle of the
//!   attempt (a local shim, or a Slurm job). Format-4 job records decode through `legacy::JobRecordV4`.

use serde::{de::DeserializeOwned, Serialize};

/// The format this build writes.
pub const FORMAT: u8 = 5;

/// Why a stored value could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored value is empty")]
    Empty,
    #[error("stored value has format {0}; this trainerd reads format {FORMAT} (was the state dir written by a newer trainerd?)")]
    UnknownFormat(u8),
    #[error("stored value does not decode: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("value does not encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

/// Encodes `value` in the current format.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = vec![FORMAT];
    bytes.extend(bincode::serde::encode_to_vec(value, bincode::config::standard())?);
    Ok(bytes)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&(1..=FORMAT), payload)) => {
            let (value, _) = bincode::serde::decode_from_slice(payload, bincode::config::standard())?;
            Ok(value)
        }
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
    }
}

/// A stored job record in format 2's layout: a format-1 record gets its `run_as: None` byte.
pub fn upgrade_job(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match bytes.first() {
        Some(1) => {
            let mut upgraded = bytes.to_vec();
            upgraded.push(0);
            std::borrow::Cow::Owned(upgraded)
        }
        _ => std::borrow::Cow::Borrowed(bytes),
    }
}
