//! The value stored for one version of a key.
//!
//! Layout: one kind byte, then for a put `create_revision`, `version`, `lease` (big-endian
//! i64s) and the value bytes; a tombstone is the kind byte alone. The mod revision is not
//! stored: it is the revision in the version key.

use bytes::Bytes;

use crate::proto::mvccpb::KeyValue;
use crate::storage::StorageError;

const KIND_PUT: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const PUT_HEADER_LEN: usize = 1 + 8 * 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Put {
        create_revision: i64,
        version: i64,
        lease: i64,
        value: Bytes,
    },
    Tombstone,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Record::Put {
                create_revision,
                version,
                lease,
                value,
            } => {
                let mut out = Vec::with_capacity(PUT_HEADER_LEN + value.len());
                out.push(KIND_PUT);
                out.extend_from_slice(&create_revision.to_be_bytes());
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&lease.to_be_bytes());
                out.extend_from_slice(value);
                out
            }
            Record::Tombstone => vec![KIND_TOMBSTONE],
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        match bytes.first() {
            Some(&KIND_TOMBSTONE) => Ok(Record::Tombstone),
            Some(&KIND_PUT) if bytes.len() >= PUT_HEADER_LEN => Ok(Record::Put {
                create_revision: read_i64(&bytes[1..9]),
                version: read_i64(&bytes[9..17]),
                lease: read_i64(&bytes[17..25]),
                value: Bytes::copy_from_slice(&bytes[PUT_HEADER_LEN..]),
            }),
            _ => Err(StorageError::Corrupt("unreadable kv record".into())),
        }
    }

    /// Whether the encoded record is a tombstone, without decoding it.
    pub fn is_tombstone(bytes: &[u8]) -> bool {
        bytes.first() == Some(&KIND_TOMBSTONE)
    }

    /// Builds the client-visible pair; `None` for a tombstone.
    pub fn into_key_value(self, key: Bytes, mod_revision: i64) -> Option<KeyValue> {
        match self {
            Record::Put {
                create_revision,
                version,
                lease,
                value,
            } => Some(KeyValue {
                key,
                create_revision,
                mod_revision,
                version,
                value,
                lease,
            }),
            Record::Tombstone => None,
        }
    }
}

fn read_i64(b: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&b[..8]);
    i64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let put = Record::Put {
            create_revision: 5,
            version: 2,
            lease: -7,
            value: Bytes::from_static(b"v"),
        };
        assert_eq!(Record::decode(&put.encode()).expect("decodes"), put);
        assert_eq!(
            Record::decode(&Record::Tombstone.encode()).expect("decodes"),
            Record::Tombstone
        );
        assert!(Record::decode(&[KIND_PUT, 1]).is_err());
        assert!(Record::decode(&[]).is_err());
    }
}
