//! Alarms (NOSPACE, CORRUPT): raised and cleared through raft, kept in the meta column family.

use std::collections::BTreeSet;
use std::sync::RwLock;

use rocksdb::WriteBatch;

use crate::proto::etcdserverpb::{AlarmMember, AlarmType};
use crate::storage::{Storage, StorageError, CF_META};

const PREFIX: &[u8] = b"alarm/";

/// The start of every alarm's key in the meta column family.
pub const KEY_PREFIX: &[u8] = PREFIX;

/// (member, alarm) of an alarm's key in the meta column family; `None` for another key.
pub fn decode_key(key: &[u8]) -> Option<(u64, i32)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (member, alarm) = rest.split_at(8.min(rest.len()));
    Some((
        u64::from_be_bytes(member.try_into().ok()?),
        i32::from_be_bytes(alarm.try_into().ok()?),
    ))
}

fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(&member.to_be_bytes());
    key.extend_from_slice(&alarm.to_be_bytes());
    key
}

#[derive(Default)]
pub struct Alarms {
    active: RwLock<BTreeSet<(u64, i32)>>,
}

impl Alarms {
    pub fn load(storage: &Storage) -> Result<Self, StorageError> {
        let mut active = BTreeSet::new();
        let mut iter = storage.db().raw_iterator_cf(storage.cf(CF_META));
        iter.seek(PREFIX);
        while let Some(key) = iter.key() {
            let Some(rest) = key.strip_prefix(PREFIX) else {
                break;
            };
            let (member, alarm) = rest.split_at(8.min(rest.len()));
            match (member.try_into(), alarm.try_into()) {
                (Ok(m), Ok(a)) => {
                    active.insert((u64::from_be_bytes(m), i32::from_be_bytes(a)));
                }
                _ => return Err(StorageError::Corrupt("unreadable alarm key".into())),
            }
            iter.next();
        }
        iter.status()?;
        Ok(Self {
            active: RwLock::new(active),
        })
    }

    fn read(&self) -> BTreeSet<(u64, i32)> {
        self.active.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Active alarms of `kind`, or all of them for `NONE`.
    pub fn list(&self, kind: AlarmType) -> Vec<AlarmMember> {
        self.read()
            .into_iter()
            .filter(|(_, a)| kind == AlarmType::None || *a == kind as i32)
            .map(|(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    pub fn is_active(&self, kind: AlarmType) -> bool {
        self.read().iter().any(|(_, a)| *a == kind as i32)
    }

    /// Raises an alarm; `None` if it was already raised.
    pub fn activate(
        &self,
        batch: &mut WriteBatch,
        storage: &Storage,
        member: u64,
        alarm: i32,
    ) -> Option<AlarmMember> {
        let inserted = self.active.write().ok()?.insert((member, alarm));
        if !inserted {
            return None;
        }
        batch.put_cf(storage.cf(CF_META), alarm_key(member, alarm), []);
        Some(AlarmMember {
            member_id: member,
            alarm,
        })
    }

    /// Clears an alarm; `None` if it was not raised.
    pub fn deactivate(
        &self,
        batch: &mut WriteBatch,
        storage: &Storage,
        member: u64,
        alarm: i32,
    ) -> Option<AlarmMember> {
        let removed = self.active.write().ok()?.remove(&(member, alarm));
        if !removed {
            return None;
        }
        batch.delete_cf(storage.cf(CF_META), alarm_key(member, alarm));
        Some(AlarmMember {
            member_id: member,
            alarm,
        })
    }

    /// Status' `errors` lines, formatted as etcd formats them.
    pub fn status_lines(&self) -> Vec<String> {
        self.read()
            .into_iter()
            .map(|(member, alarm)| {
                let name = AlarmType::try_from(alarm)
                    .map(|a| a.as_str_name().to_string())
                    .unwrap_or_else(|_| alarm.to_string());
                format!("memberID:{member} alarm:{name} ")
            })
            .collect()
    }

    /// Reloads after the data underneath was replaced (snapshot install).
    pub fn reload(&self, storage: &Storage) -> Result<(), StorageError> {
        let fresh = Self::load(storage)?;
        if let (Ok(mut mine), Ok(theirs)) = (self.active.write(), fresh.active.into_inner()) {
            *mine = theirs;
        }
        Ok(())
    }
}
