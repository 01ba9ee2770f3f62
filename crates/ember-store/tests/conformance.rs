//! The conformance suite (`ember_store::conformance`) on the SQLite backend, in memory and on
//! disk.

use ember_store::{SqliteStore, Stores};

async fn in_memory(_test: &str) -> Stores {
    SqliteStore::in_memory().unwrap()
}

/// A new database file for each test, in a folder of this run.
async fn on_disk(test: &str) -> Stores {
    let folder = std::env::temp_dir().join(format!("ember-conformance-{}", std::process::id()));
    let path = folder.join(format!("{test}.db"));
    for stale in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{stale}", path.display()));
    }
    SqliteStore::open(&path).unwrap()
}

mod sqlite_in_memory {
    ember_store::conformance_tests!(super::in_memory);
}

mod sqlite_on_disk {
    ember_store::conformance_tests!(super::on_disk);
}
