use std::io::Write;

use super::*;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn write(path: &std::path::Path, buckets: &[(&str, Pairs)]) {
    let mut w = BoltWriter::create(path).expect("create");
    for (name, pairs) in buckets {
        w.begin_bucket(name.as_bytes()).expect("bucket");
        for (k, v) in pairs {
            w.put(k, v).expect("put");
        }
    }
    w.finish().expect("finish");
}

fn read_all(r: &BoltReader, name: &str) -> Pairs {
    r.bucket(name.as_bytes())
        .expect("bucket")
        .expect("exists")
        .map(|e| {
            let e = e.expect("entry");
            (e.key, e.value)
        })
        .collect()
}

fn pairs(n: usize, value_len: usize) -> Pairs {
    (0..n)
        .map(|i| {
            (
                format!("key-{i:08}").into_bytes(),
                vec![(i % 251) as u8; value_len],
            )
        })
        .collect()
}

#[test]
fn round_trip_small_large_and_empty_buckets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let big = pairs(20_000, 40); // several branch levels
    let huge = vec![
        (b"a".to_vec(), vec![7u8; 3 * DEFAULT_PAGE_SIZE + 5]), // overflow pages
        (b"b".to_vec(), b"small".to_vec()),
    ];
    write(
        &path,
        &[
            ("alarm", vec![]),
            ("key", big.clone()),
            ("meta", huge.clone()),
        ],
    );
    let r = BoltReader::open(&path).expect("open");
    assert_eq!(read_all(&r, "key"), big);
    assert_eq!(read_all(&r, "meta"), huge);
    assert!(read_all(&r, "alarm").is_empty());
    assert!(r.bucket(b"nope").expect("lookup").is_none());
    let names: Vec<_> = r.root().expect("root").map(|e| e.expect("e").key).collect();
    assert_eq!(
        names,
        vec![b"alarm".to_vec(), b"key".to_vec(), b"meta".to_vec()]
    );
    let len = std::fs::metadata(&path).expect("stat").len();
    assert_eq!(r.size(), len, "the file is exactly its pages");
    assert_eq!(
        len % 512,
        0,
        "etcdctl finds the sha256 trailer by size modulo 512"
    );
}

#[test]
fn writer_refuses_unordered_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = BoltWriter::create(&dir.path().join("db")).expect("create");
    w.begin_bucket(b"b").expect("bucket");
    w.put(b"2", b"").expect("put");
    assert!(w.put(b"1", b"").is_err());
    assert!(w.put(b"2", b"").is_err());
    assert!(w.begin_bucket(b"a").is_err());
}

#[test]
fn damaged_files_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    write(&path, &[("key", pairs(2000, 10))]);
    let good = std::fs::read(&path).expect("read");

    let check = |bytes: &[u8]| -> Result<usize, BoltError> {
        let p = dir.path().join("bad");
        std::fs::File::create(&p)
            .and_then(|mut f| f.write_all(bytes))
            .expect("write");
        let r = BoltReader::open(&p)?;
        let mut n = 0;
        for bucket in r.root()? {
            let bucket = bucket?;
            for e in r.nested(&bucket.value)? {
                e?;
                n += 1;
            }
        }
        Ok(n)
    };
    assert_eq!(check(&good).expect("good file"), 2000);
    assert!(matches!(check(b"hello"), Err(BoltError::NotBolt(_))));
    assert!(matches!(
        check(&vec![0u8; 16384]),
        Err(BoltError::NotBolt(_))
    ));
    assert!(check(&good[..good.len() / 2]).is_err(), "truncated");
    // Both meta pages damaged.
    let mut bad = good.clone();
    bad[16 + 20] ^= 1;
    bad[DEFAULT_PAGE_SIZE + 16 + 20] ^= 1;
    assert!(matches!(check(&bad), Err(BoltError::Corrupt(_))));
    // One meta page damaged: the other one is used, as bbolt does.
    let mut one = good.clone();
    one[16 + 20] ^= 1;
    assert_eq!(check(&one).expect("meta 1 still valid"), 2000);
    // Garbage in every data page header: an error, whatever it decodes to.
    for page in 2..good.len() / DEFAULT_PAGE_SIZE {
        let mut bad = good.clone();
        for b in &mut bad[page * DEFAULT_PAGE_SIZE + 8..page * DEFAULT_PAGE_SIZE + 16] {
            *b = 0xff;
        }
        assert!(check(&bad).is_err(), "page {page} damaged");
    }
}

#[test]
fn branches_sharing_a_page_are_an_error_not_an_endless_walk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    write(&path, &[("key", pairs(5000, 30))]);
    let mut bytes = std::fs::read(&path).expect("read");
    let r = BoltReader::open(&path).expect("open");
    let root = {
        let entry = r
            .root()
            .expect("root")
            .next()
            .expect("one bucket")
            .expect("entry");
        le_u64(&entry.value, 0)
    };
    // Point every child of the root branch at the root itself.
    let at = root as usize * DEFAULT_PAGE_SIZE;
    assert_eq!(
        le_u16(&bytes, at + 8),
        FLAG_BRANCH,
        "5000 pairs need a branch root"
    );
    let count = usize::from(le_u16(&bytes, at + 10));
    for i in 0..count {
        let child = at + PAGE_HEADER + i * ELEMENT + 8;
        bytes[child..child + 8].copy_from_slice(&root.to_le_bytes());
    }
    std::fs::write(&path, &bytes).expect("write");
    let r = BoltReader::open(&path).expect("open");
    let result: Result<Vec<_>, _> = r.bucket(b"key").expect("bucket").expect("exists").collect();
    assert!(matches!(result, Err(BoltError::Corrupt(_))));
}
