//! `keelson snapshot status FILE`: what `etcdctl snapshot status` prints for a snapshot file.
//!
//! etcdctl's hash is a CRC-32C over every bucket's name and then every key and value in it,
//! buckets in name order; the revision is the main revision of the last `key` bucket entry;
//! total keys counts the pairs of every bucket; the size is bbolt's (pages in use).

use std::path::Path;

use super::bbolt::BoltReader;
use super::etcd::{parse_revision_key, BUCKET_KEY};
use super::SnapshotError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    pub total_keys: u64,
    pub total_size: u64,
}

/// Reads the snapshot (or backend file) at `path`.
pub fn read(path: &Path) -> Result<Status, SnapshotError> {
    let reader = BoltReader::open(path)?;
    let mut hash = 0u32;
    let mut status = Status {
        hash: 0,
        revision: 0,
        total_keys: 0,
        total_size: reader.size(),
    };
    for bucket in reader.root()? {
        let bucket = bucket?;
        if !bucket.is_bucket {
            return Err(SnapshotError::File(format!(
                "top-level entry {:?} is not a bucket",
                String::from_utf8_lossy(&bucket.key)
            )));
        }
        hash = crc32c::crc32c_append(hash, &bucket.key);
        let is_key_bucket = bucket.key == BUCKET_KEY;
        for entry in reader.nested(&bucket.value)? {
            let entry = entry?;
            hash = crc32c::crc32c_append(hash, &entry.key);
            if !entry.is_bucket {
                hash = crc32c::crc32c_append(hash, &entry.value);
            }
            if is_key_bucket {
                let (rev, _) = parse_revision_key(&entry.key).ok_or_else(|| {
                    SnapshotError::File("a key bucket entry is not a revision".into())
                })?;
                status.revision = rev.main;
            }
            status.total_keys += 1;
        }
    }
    status.hash = hash;
    Ok(status)
}

/// etcdctl's output formats for `snapshot status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Simple,
    Table,
    Json,
}

impl Format {
    pub fn parse(name: &str) -> Result<Self, SnapshotError> {
        match name {
            "simple" => Ok(Self::Simple),
            "table" => Ok(Self::Table),
            "json" => Ok(Self::Json),
            other => Err(SnapshotError::Usage(format!(
                "unknown output format {other:?} (expected simple, table or json)"
            ))),
        }
    }
}

pub fn render(status: &Status, format: Format) -> String {
    let cells = [
        format!("{:x}", status.hash),
        status.revision.to_string(),
        status.total_keys.to_string(),
        human_bytes(status.total_size),
    ];
    match format {
        Format::Simple => format!("{}\n", cells.join(", ")),
        Format::Json => format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            status.hash, status.revision, status.total_keys, status.total_size
        ),
        Format::Table => table(&["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], &cells),
    }
}

/// etcdctl's table: centred headers, cells right-aligned, one space of padding.
fn table(headers: &[&str; 4], cells: &[String; 4]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .zip(cells)
        .map(|(h, c)| h.len().max(c.len()))
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let header: String = headers
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let left = (w - h.len()) / 2;
            let right = w - h.len() - left;
            format!("| {}{}{} ", " ".repeat(left), h, " ".repeat(right))
        })
        .collect::<String>()
        + "|\n";
    let row: String = cells
        .iter()
        .zip(&widths)
        .map(|(c, w)| format!("| {c:>w$} "))
        .collect::<String>()
        + "|\n";
    format!("{rule}{header}{rule}{row}{rule}")
}

/// go-humanize's `Bytes` (SI units), which etcdctl prints sizes with.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let b = bytes as f64;
    let exp = (b.ln() / 1000f64.ln()).floor() as usize;
    let exp = exp.min(UNITS.len() - 1);
    let value = (b / 1000f64.powi(exp as i32) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exp])
    } else {
        format!("{value:.0} {}", UNITS[exp])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcdctl_prints_them() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(20480), "20 kB");
        assert_eq!(human_bytes(2_117_632), "2.1 MB");
        assert_eq!(human_bytes(999), "999 B");
    }
}
