//! The cache value format: MessagePack in a small versioned envelope.
//!
//! Every value StoreHaus writes is one MessagePack array of three elements,
//! readable by any MessagePack decoder:
//!
//! ```text
//! [ version: 1, fingerprint: u64, payload ]
//! ```
//!
//! `payload` is the record in rmp-serde's compact (positional) encoding, or
//! `nil` for a cached "no such row". The fingerprint is the record type's
//! [`Cached::FINGERPRINT`](crate::Cached::FINGERPRINT), a hash of its column
//! names and field types, so an entry written by another version of the
//! struct is detected and treated as a miss instead of being misread.
//! Manual writes ([`CacheManager::set_record`](crate::CacheManager::set_record))
//! carry fingerprint 0, which every reader accepts.
//!
//! Fill leases (see [`crate::lease`]) are stored under the same keys; they
//! start with the byte `0xC1`, which MessagePack reserves as "never used", so
//! a lease can never be mistaken for a value.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CacheError;

/// The envelope format version.
pub const VERSION: u8 = 1;

/// The fingerprint of manual writes: accepted by every reader.
pub const ANY_FINGERPRINT: u64 = 0;

/// The first byte of a fill lease: MessagePack's reserved "never used" byte.
pub const LEASE_TAG: u8 = 0xC1;

/// A decoded cache entry.
#[derive(Debug, PartialEq)]
pub enum Entry<T> {
    /// A record.
    Record(T),
    /// A cached "no such row".
    Absent,
}

fn ser_err(e: impl std::fmt::Display) -> CacheError {
    CacheError::SerializationError(e.to_string())
}

/// Encodes a record (or `None` for "no such row") in the envelope.
///
/// # Errors
/// [`CacheError::SerializationError`] when serde cannot serialize the value.
pub fn encode<T: Serialize + ?Sized>(fingerprint: u64, value: Option<&T>) -> Result<Vec<u8>, CacheError> {
    let mut buf = Vec::with_capacity(128);
    rmp::encode::write_array_len(&mut buf, 3).map_err(ser_err)?;
    rmp::encode::write_pfix(&mut buf, VERSION).map_err(ser_err)?;
    rmp::encode::write_u64(&mut buf, fingerprint).map_err(ser_err)?;
    match value {
        Some(v) => rmp_serde::encode::write(&mut buf, v).map_err(ser_err)?,
        None => rmp::encode::write_nil(&mut buf).map_err(ser_err)?,
    }
    Ok(buf)
}

/// Whether `bytes` is a fill lease rather than a value.
#[inline]
pub fn is_lease(bytes: &[u8]) -> bool {
    bytes.first() == Some(&LEASE_TAG)
}

/// Decodes an envelope, checking version and fingerprint.
///
/// # Errors
/// [`CacheError::SerializationError`] when the bytes are not our envelope,
/// are truncated, carry another version or fingerprint, or the payload does
/// not decode as `T`.
pub fn decode<T: DeserializeOwned>(expected_fingerprint: u64, bytes: &[u8]) -> Result<Entry<T>, CacheError> {
    let mut rd = bytes;
    let len = rmp::decode::read_array_len(&mut rd).map_err(|e| ser_err(format!("not a StoreHaus envelope: {e}")))?;
    if len != 3 {
        return Err(ser_err(format!("not a StoreHaus envelope: array of {len}")));
    }
    let version: u8 = rmp::decode::read_int(&mut rd).map_err(|e| ser_err(format!("bad envelope version: {e}")))?;
    if version != VERSION {
        return Err(ser_err(format!("envelope version {version}, expected {VERSION}")));
    }
    let fingerprint: u64 = rmp::decode::read_int(&mut rd).map_err(|e| ser_err(format!("bad fingerprint: {e}")))?;
    if fingerprint != expected_fingerprint && fingerprint != ANY_FINGERPRINT && expected_fingerprint != ANY_FINGERPRINT
    {
        return Err(ser_err(format!(
            "schema fingerprint {fingerprint:#x} does not match {expected_fingerprint:#x} (written by another version of the struct)"
        )));
    }
    if rd == [0xc0] {
        return Ok(Entry::Absent);
    }
    let mut de = rmp_serde::Deserializer::new(&mut rd);
    let value = T::deserialize(&mut de).map_err(ser_err)?;
    if !rd.is_empty() {
        return Err(ser_err(format!("{} trailing bytes after the payload", rd.len())));
    }
    Ok(Entry::Record(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Row {
        id: i64,
        name: String,
    }

    #[test]
    fn round_trip() {
        let row = Row {
            id: 7,
            name: "ann".into(),
        };
        let bytes = encode(42, Some(&row)).unwrap();
        assert_eq!(bytes[0], 0x93);
        assert_eq!(decode::<Row>(42, &bytes).unwrap(), Entry::Record(row));
        let absent = encode::<Row>(42, None).unwrap();
        assert_eq!(decode::<Row>(42, &absent).unwrap(), Entry::Absent);
    }

    #[test]
    fn garbage_and_mismatches_are_errors() {
        let row = Row {
            id: 7,
            name: "ann".into(),
        };
        let bytes = encode(42, Some(&row)).unwrap();
        assert!(decode::<Row>(43, &bytes).is_err());
        assert!(decode::<Row>(42, &bytes[..bytes.len() - 2]).is_err());
        assert!(decode::<Row>(42, b"hello world").is_err());
        assert!(decode::<Row>(42, b"").is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<Row>(42, &trailing).is_err());
        // Manual writes (fingerprint 0) are accepted by typed readers.
        let manual = encode(ANY_FINGERPRINT, Some(&row)).unwrap();
        assert!(decode::<Row>(42, &manual).is_ok());
    }
}
