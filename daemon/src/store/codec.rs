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

/// Values encoded one at a time and stored together: what [`Sequence::value`] makes decodes with
/// [`decode`] as a `Vec<T>` (a length, then the values back to back: bincode's layout of a sequence).
/// A writer that gathers values over time keeps them encoded, a few bytes each, not as `T`.
#[derive(Debug, Default)]
pub struct Sequence {
    count: u64,
    bytes: Vec<u8>,
}

impl Sequence {
    /// Adds `value` at the end.
    pub fn push<T: Serialize>(&mut self, value: &T) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(value, &mut self.bytes, bincode::config::standard())?;
        self.count += 1;
        Ok(())
    }

    /// How many values it holds.
    pub fn len(&self) -> usize {
        usize::try_from(self.count).unwrap_or(usize::MAX)
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The stored value: the current format, the count, the values.
    pub fn value(&self) -> Result<Vec<u8>, CodecError> {
        let mut value = vec![FORMAT];
        bincode::serde::encode_into_std_write(self.count, &mut value, bincode::config::standard())?;
        value.extend_from_slice(&self.bytes);
        Ok(value)
    }

    /// Its values, decoded.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<Vec<T>, CodecError> {
        decode(&self.value()?)
    }
}

/// The count of a stored sequence, read without decoding its values.
pub fn sequence_len(bytes: &[u8]) -> Result<usize, CodecError> {
    let count: u64 = decode(bytes)?;
    Ok(usize::try_from(count).unwrap_or(usize::MAX))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_is_stored_as_a_vec_of_its_values_and_its_count_reads_alone() {
        let mut sequence = Sequence::default();
        let values: Vec<(u64, String)> = (0..300).map(|i| (i * 1_000, format!("v{i}"))).collect();
        for value in &values {
            sequence.push(value).unwrap();
        }
        let stored = sequence.value().unwrap();
        assert_eq!(stored, encode(&values).unwrap(), "the layout of a Vec");
        assert_eq!(decode::<Vec<(u64, String)>>(&stored).unwrap(), values);
        assert_eq!(sequence_len(&stored).unwrap(), 300);
        assert_eq!(sequence_len(&Sequence::default().value().unwrap()).unwrap(), 0);
    }
}
