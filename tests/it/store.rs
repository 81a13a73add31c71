//! The LevelDB layer itself: reads agree with iteration after deletes are flushed.

use deltacache::db::leveldb::{dump, open_db};

/// A live key that sorts just before another key's deletion in a newer table must still be
/// found by `get` (rusty-leveldb 4.0.2 answered `None`; fixed in vendor/rusty-leveldb).
#[test]
fn get_finds_a_key_just_before_a_newer_tables_tombstone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let mut db = open_db(&path, true).unwrap();
        for i in 0..100u32 {
            db.put(format!("k{i:03}").as_bytes(), b"v").unwrap();
        }
        db.compact_range(b"", b"\xff").unwrap();
        // A newer batch: a put at the low end and a deletion further up, flushed into a
        // level-0 table when the database is reopened.
        let mut batch = rusty_leveldb::WriteBatch::default();
        batch.put(b"k000", b"v2");
        batch.delete(b"k050");
        db.write(batch, true).unwrap();
        db.close().unwrap();
    }
    let mut db = open_db(&path, false).unwrap();
    let all = dump(&mut db).unwrap();
    assert_eq!(all.len(), 99);
    for (key, value) in &all {
        assert_eq!(
            db.get(key).as_deref(),
            Some(value.as_slice()),
            "get {:?}",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(db.get(b"k050"), None);
}
