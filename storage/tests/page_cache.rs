//! The page-cache layer (src/page_cache.rs): in place in a process that opens the store before
//! anything else touches SQLite, and invisible to the data.

use corecast_storage::{embedded, page_cache};
use std::collections::BTreeMap;

/// Many page splits in a 1 KiB-page database (random keys, deletes, a commit every few
/// hundred changes): SQLite renames pages through the pending-byte page while balancing, the
/// layer renames it in turn, and the database stays exactly what was written, before and
/// after reopening.
#[test]
fn splits_through_the_layer_keep_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = BTreeMap::new();
    {
        let mut conn = embedded::connect(dir.path()).unwrap();
        assert!(
            page_cache::install(),
            "the layer is installed when the store opens first"
        );
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB NOT NULL)")
            .unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..40 {
            let tx = conn.transaction().unwrap();
            for _ in 0..500 {
                let k = format!("{:016x}", rng.u64(..));
                let v = vec![rng.u8(..); rng.usize(10..300)];
                tx.execute("INSERT INTO t (k, v) VALUES (?1, ?2)", (&k, &v))
                    .unwrap();
                model.insert(k, v);
            }
            let doomed: Vec<String> = model.keys().step_by(7).cloned().collect();
            for k in doomed {
                tx.execute("DELETE FROM t WHERE k = ?1", [&k]).unwrap();
                model.remove(&k);
            }
            tx.commit().unwrap();
        }
        assert!(
            page_cache::renamed() > 0,
            "the workload never made SQLite rename a page through the pending-byte page"
        );
        check(&conn, &model);
    }
    let conn = embedded::connect(dir.path()).unwrap();
    check(&conn, &model);
}

fn check(conn: &rusqlite::Connection, model: &BTreeMap<String, Vec<u8>>) {
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    let mut stmt = conn.prepare("SELECT k, v FROM t ORDER BY k").unwrap();
    let rows: BTreeMap<String, Vec<u8>> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), model.len());
    assert!(rows == *model, "the table differs from what was written");
}
