//! The metadata file: a damaged or oversized one is a clear error, never a panic.

use super::*;

#[test]
fn damaged_metadata_is_an_error_that_names_the_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("metadata.json");
    for bad in [&b"{not json"[..], b"{\"next_id\":0,\"snapshots\":{\"a\":{\"id\":3,\"kind\":\"view\",\"parent\":null,\"labels\":{},\"created_ns\":0,\"updated_ns\":0}}}"] {
        std::fs::write(&path, bad).unwrap_or_else(|e| panic!("{e}"));
        let err = Meta::load(&path).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("metadata.json"), "{err}");
    }
    assert!(Meta::load(&dir.path().join("missing.json")).is_ok_and(|m| m.snapshots.is_empty()));
}

#[test]
fn saved_metadata_loads_back() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("metadata.json");
    let mut meta = Meta {
        next_id: 1,
        ..Meta::default()
    };
    meta.snapshots.insert(
        "k".into(),
        Record {
            id: 0,
            kind: Kind::Active,
            parent: None,
            labels: [("l".to_string(), "v".to_string())].into(),
            created_ns: 1,
            updated_ns: 2,
            remote: None,
            usage: None,
        },
    );
    meta.save(&path).unwrap_or_else(|e| panic!("{e}"));
    let back = Meta::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.next_id, 1);
    assert_eq!(back.snapshots["k"].info("k"), meta.snapshots["k"].info("k"));
    assert!(
        !dir.path().join("metadata.json.tmp").exists(),
        "no temporary file left"
    );
}
