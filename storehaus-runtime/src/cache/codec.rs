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
//! Fill leases (see the read path, `cache::read`) are stored under the same keys; they
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

/// The length of a fill lease: [`LEASE_TAG`] and 16 random bytes. Anything
/// else that starts with `0xC1` is not a lease but a corrupt entry.
pub const LEASE_LEN: usize = 17;

/// A decoded cache entry.
#[derive(Debug, PartialEq)]
pub enum Entry<T> {
    /// A record.
    Record(T),
    /// A cached "no such row".
    Absent,
}

fn ser_err(e: impl std::fmt::Display) -> CacheError {
    CacheError::SerializationError(e.to_string().into())
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

/// Whether `bytes` has the shape of a fill lease rather than a value:
/// [`LEASE_LEN`] bytes starting with [`LEASE_TAG`]. (A real lease also has an
/// expiry; the read path checks that before it waits on one for long.)
#[inline]
pub fn is_lease(bytes: &[u8]) -> bool {
    bytes.len() == LEASE_LEN && bytes[0] == LEASE_TAG
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
    // Check the payload's extent first, then decode it in place:
    // `from_slice` borrows strings and byte arrays from the slice, where a
    // `Deserializer` over `impl Read` copies each one through a buffer.
    match value_len(rd) {
        Some(n) if n == rd.len() => {}
        Some(n) => return Err(ser_err(format!("{} trailing bytes after the payload", rd.len() - n))),
        None => return Err(ser_err("truncated or invalid MessagePack payload")),
    }
    let value = rmp_serde::from_slice::<T>(rd).map_err(ser_err)?;
    Ok(Entry::Record(value))
}

/// The length in bytes of the one MessagePack value at the start of `buf`;
/// `None` when it is truncated or holds the reserved byte `0xC1`. Walks the
/// markers without decoding anything.
fn value_len(buf: &[u8]) -> Option<usize> {
    fn be(buf: &[u8], at: usize, width: usize) -> Option<usize> {
        let bytes = buf.get(at..at.checked_add(width)?)?;
        Some(bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b)))
    }
    let mut pos = 0usize;
    // Values still to walk: array elements and map keys/values add to it.
    let mut pending: usize = 1;
    while pending > 0 {
        let marker = *buf.get(pos)?;
        pos += 1;
        pending -= 1;
        let (skip, items) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * usize::from(marker & 0x0f)),
            0x90..=0x9f => (0, usize::from(marker & 0x0f)),
            0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (1 + be(buf, pos, 1)?, 0),
            0xc5 | 0xda => (2 + be(buf, pos, 2)?, 0),
            0xc6 | 0xdb => (4 + be(buf, pos, 4)?, 0),
            0xc7 => (2 + be(buf, pos, 1)?, 0),
            0xc8 => (3 + be(buf, pos, 2)?, 0),
            0xc9 => (5 + be(buf, pos, 4)?, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 | 0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xd6 => (5, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, be(buf, pos, 2)?),
            0xdd => (4, be(buf, pos, 4)?),
            0xde => (2, 2 * be(buf, pos, 2)?),
            0xdf => (4, 2 * be(buf, pos, 4)?),
            0xc1 => return None,
        };
        pos = pos.checked_add(skip)?;
        pending = pending.checked_add(items)?;
        if pos > buf.len() {
            return None;
        }
    }
    Some(pos)
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
    fn value_len_walks_every_marker() {
        struct Bytes(Vec<u8>);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
        #[derive(serde::Serialize)]
        struct All {
            a: Vec<Option<i64>>,
            m: std::collections::BTreeMap<String, (u8, i16, u32, i64, f32, f64)>,
            b: Bytes,
            s: String,
            t: bool,
        }
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "k".repeat(40),
            (200u8, -300i16, 70_000u32, -5_000_000_000i64, 1.5f32, 2.5f64),
        );
        let value = All {
            a: (0..20)
                .map(|i| if i % 3 == 0 { None } else { Some(i * 1_000_003) })
                .collect(),
            m,
            b: Bytes(vec![7; 300]),
            s: "x".repeat(70_000),
            t: true,
        };
        for bytes in [
            rmp_serde::to_vec(&value).unwrap(),
            rmp_serde::to_vec_named(&value).unwrap(),
        ] {
            assert_eq!(value_len(&bytes), Some(bytes.len()));
            for cut in [1, 2, 10, bytes.len() - 1] {
                assert_eq!(value_len(&bytes[..bytes.len() - cut]), None, "truncated by {cut}");
            }
        }
        assert_eq!(value_len(&[0xc1]), None);
        assert_eq!(value_len(&[]), None);
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
