//! The cache value format: MessagePack in a small versioned envelope.
//! `docs/FORMAT.md` is the reference, for readers in any language.
//!
//! Every value StoreHaus writes is one MessagePack array of four elements,
//! readable by any MessagePack decoder:
//!
//! ```text
//! [ version: 2, fingerprint: u64, token: u64, payload ]
//! ```
//!
//! `payload` is the record in rmp-serde's compact (positional) encoding, or
//! `nil` for a cached "no such row". The fingerprint is the record type's
//! [`Cached::FINGERPRINT`](crate::Cached::FINGERPRINT), a hash of its column
//! names and field types. Manual writes
//! ([`CacheManager::set_record`](crate::CacheManager::set_record)) carry
//! fingerprint 0, which every reader accepts. The token is drawn at random
//! for every value written, so no two fills write the same bytes: a guard
//! that compares bytes (an early refresh replaces the value it read only if
//! the key still holds those bytes) compares fills, never contents.
//!
//! An envelope is one of three things to a reader ([`decode_any`]):
//! - its own: version 2 with the reader's fingerprint (or 0), or a
//!   version-1 envelope (`[1, fingerprint, payload]`, written before tokens;
//!   read, never refreshed in place);
//! - **another version's**: a well-formed envelope of another fingerprint,
//!   or of an envelope version above [`VERSION`]. It is neither served nor
//!   removed: the reader's own version lives beside it (see
//!   `cache::versions`);
//! - corrupt: anything else (not an envelope, truncated, a payload that
//!   does not decode as the reader's type). Counted, removed, refilled.
//!
//! Fill leases (see the read path, `cache::read`) are stored under the same keys; they
//! start with the byte `0xC1`, which MessagePack reserves as "never used", so
//! a lease can never be mistaken for a value.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::CacheError;

/// The envelope format version.
pub const VERSION: u8 = 2;

/// The envelope version before fill tokens: `[1, fingerprint, payload]`.
/// Still read; never written.
pub const LEGACY_VERSION: u8 = 1;

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

/// What an envelope is to a reader of one fingerprint (see [`decode_any`]).
#[derive(Debug, PartialEq)]
pub enum Found<T> {
    /// The reader's own entry, and the fill token it was written with
    /// (`None`: a version-1 envelope, written before tokens).
    Own(Entry<T>, Option<u64>),
    /// A well-formed entry of another version (another fingerprint, or a
    /// newer envelope version): not for this reader, and not corrupt.
    Foreign,
}

fn ser_err(e: impl std::fmt::Display) -> CacheError {
    CacheError::SerializationError(e.to_string().into())
}

/// Encodes a record (or `None` for "no such row") in the envelope, with a
/// fresh random fill token.
///
/// # Errors
/// [`CacheError::SerializationError`] when serde cannot serialize the value.
pub fn encode<T: Serialize + ?Sized>(fingerprint: u64, value: Option<&T>) -> Result<Vec<u8>, CacheError> {
    encode_with_token(fingerprint, rand::random::<u64>(), value)
}

/// Encodes like [`encode`], with the fill token `token`.
///
/// # Errors
/// [`CacheError::SerializationError`] when serde cannot serialize the value.
pub fn encode_with_token<T: Serialize + ?Sized>(
    fingerprint: u64,
    token: u64,
    value: Option<&T>,
) -> Result<Vec<u8>, CacheError> {
    let mut buf = Vec::with_capacity(128);
    rmp::encode::write_array_len(&mut buf, 4).map_err(ser_err)?;
    rmp::encode::write_pfix(&mut buf, VERSION).map_err(ser_err)?;
    rmp::encode::write_u64(&mut buf, fingerprint).map_err(ser_err)?;
    rmp::encode::write_u64(&mut buf, token).map_err(ser_err)?;
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

/// Decodes an envelope written for `expected_fingerprint`.
///
/// # Errors
/// [`CacheError::SerializationError`] when the bytes are not our envelope,
/// are truncated, belong to another version (another fingerprint, or a
/// newer envelope version), or the payload does not decode as `T`.
pub fn decode<T: DeserializeOwned>(expected_fingerprint: u64, bytes: &[u8]) -> Result<Entry<T>, CacheError> {
    match decode_any(expected_fingerprint, bytes)? {
        Found::Own(entry, _) => Ok(entry),
        Found::Foreign => Err(ser_err(format!(
            "written by another version (envelope or schema fingerprint other than {expected_fingerprint:#x})"
        ))),
    }
}

/// Decodes an envelope and says whose it is: the reader's own entry (with
/// its fill token), or another version's ([`Found::Foreign`]).
///
/// # Errors
/// [`CacheError::SerializationError`] when the bytes are corrupt: not an
/// envelope, truncated, trailing bytes, or a payload of the reader's own
/// version that does not decode as `T`.
pub fn decode_any<T: DeserializeOwned>(expected_fingerprint: u64, bytes: &[u8]) -> Result<Found<T>, CacheError> {
    let mut rd = bytes;
    let len = rmp::decode::read_array_len(&mut rd).map_err(|e| ser_err(format!("not a StoreHaus envelope: {e}")))?;
    let version: u8 = rmp::decode::read_int(&mut rd).map_err(|e| ser_err(format!("bad envelope version: {e}")))?;
    let expected_len = match version {
        LEGACY_VERSION => 3,
        VERSION => 4,
        // A newer format: another version's entry, whatever its shape.
        v if v > VERSION && len >= 2 => return Ok(Found::Foreign),
        v => return Err(ser_err(format!("envelope version {v}, expected {VERSION}"))),
    };
    if len != expected_len {
        return Err(ser_err(format!(
            "not a StoreHaus envelope: version {version} in an array of {len}"
        )));
    }
    let fingerprint: u64 = rmp::decode::read_int(&mut rd).map_err(|e| ser_err(format!("bad fingerprint: {e}")))?;
    let token = match version {
        VERSION => Some(rmp::decode::read_int::<u64, _>(&mut rd).map_err(|e| ser_err(format!("bad fill token: {e}")))?),
        _ => None,
    };
    // Check the payload's extent first: a truncated entry is corrupt,
    // whoever wrote it.
    match value_len(rd) {
        Some(n) if n == rd.len() => {}
        Some(n) => return Err(ser_err(format!("{} trailing bytes after the payload", rd.len() - n))),
        None => return Err(ser_err("truncated or invalid MessagePack payload")),
    }
    if fingerprint != expected_fingerprint && fingerprint != ANY_FINGERPRINT && expected_fingerprint != ANY_FINGERPRINT
    {
        return Ok(Found::Foreign);
    }
    if rd == [0xc0] {
        return Ok(Found::Own(Entry::Absent, token));
    }
    // Decode the payload in place: `from_slice` borrows strings and byte
    // arrays from the slice, where a `Deserializer` over `impl Read` copies
    // each one through a buffer.
    let value = rmp_serde::from_slice::<T>(rd).map_err(ser_err)?;
    Ok(Found::Own(Entry::Record(value), token))
}

/// The name of the value layout a reader of `fingerprint` writes: the
/// envelope version and the fingerprint, `2-0123456789abcdef`. Another
/// version's entries live beside this layout's under keys ending in
/// `:v{tag}` (see `keys::side_key`).
pub fn layout_tag(fingerprint: u64) -> String {
    format!("{VERSION}-{fingerprint:016x}")
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
        let bytes = encode_with_token(42, 7, Some(&row)).unwrap();
        assert_eq!(bytes[0], 0x94);
        assert_eq!(
            decode_any::<Row>(42, &bytes).unwrap(),
            Found::Own(Entry::Record(row), Some(7))
        );
        let absent = encode::<Row>(42, None).unwrap();
        assert_eq!(decode::<Row>(42, &absent).unwrap(), Entry::Absent);
        assert_ne!(
            absent,
            encode::<Row>(42, None).unwrap(),
            "every fill writes its own bytes"
        );
    }

    #[test]
    fn the_example_of_docs_format_md_is_what_is_written() {
        let row = Row {
            id: 7,
            name: "ann".into(),
        };
        let bytes = encode_with_token(0x1122_3344_5566_7788, 0x0102_0304_0506_0708, Some(&row)).unwrap();
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex.join(" "),
            "94 02 cf 11 22 33 44 55 66 77 88 cf 01 02 03 04 05 06 07 08 92 07 a3 61 6e 6e"
        );
    }

    #[test]
    fn version_one_envelopes_are_read_without_a_token() {
        let mut legacy = vec![0x93, 0x01, 0xcf];
        legacy.extend_from_slice(&42u64.to_be_bytes());
        legacy.extend_from_slice(&rmp_serde::to_vec(&(7i64, "ann")).unwrap());
        let row = Row {
            id: 7,
            name: "ann".into(),
        };
        assert_eq!(
            decode_any::<Row>(42, &legacy).unwrap(),
            Found::Own(Entry::Record(row), None)
        );
        assert_eq!(decode_any::<Row>(43, &legacy).unwrap(), Found::Foreign);
    }

    #[test]
    fn other_versions_are_foreign_not_corrupt() {
        let row = Row {
            id: 7,
            name: "ann".into(),
        };
        let bytes = encode(42, Some(&row)).unwrap();
        assert_eq!(decode_any::<Row>(43, &bytes).unwrap(), Found::Foreign);
        // A newer envelope, whatever it holds after its version.
        assert_eq!(
            decode_any::<Row>(42, &[0x95, 0x03, 0x01, 0x02, 0x03, 0x04]).unwrap(),
            Found::Foreign
        );
        // A foreign fingerprint does not excuse a truncated entry.
        assert!(decode_any::<Row>(43, &bytes[..bytes.len() - 2]).is_err());
        assert!(decode_any::<Row>(42, &[0x92, 0x00, 0x01]).is_err(), "version 0");
        assert_eq!(layout_tag(0xab), "2-00000000000000ab");
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
        assert!(decode::<Row>(43, &bytes).is_err(), "another version is not served");
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
