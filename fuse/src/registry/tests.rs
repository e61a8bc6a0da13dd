//! The registry's records: encoding, and which are cleaned when.

use super::*;

fn record(mp: &str, owner: ProcessId) -> MountRecord {
    MountRecord {
        id: "0123456789abcdef".into(),
        image: "ab".repeat(32),
        mountpoint: PathBuf::from(mp),
        fuse_dir: PathBuf::from(format!("{mp}-lower")),
        upper: Some(PathBuf::from("/var/lib/thaw/uppers/x")),
        owner,
        requested_by: "thaw mount (uid 0)".into(),
        daemon: Some("http://127.0.0.1:7411".into()),
        created: 1_700_000_000,
        holder: None,
        passthrough: false,
    }
}

#[test]
fn records_round_trip_and_bad_ones_are_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = MountRegistry::new(tmp.path().join("mounts"));
    let r = record("/mnt/a b", ProcessId::current());
    reg.write(&r).expect("write");
    assert_eq!(
        reg.find(Path::new("/mnt/a b")).expect("read"),
        Some(r.clone())
    );
    assert_eq!(reg.list(), vec![r]);
    std::fs::write(reg.path_for(Path::new("/mnt/bad")), "hello\n").expect("write");
    assert!(reg.find(Path::new("/mnt/bad")).is_err());
    assert_eq!(reg.list().len(), 1, "the bad file is skipped");
    reg.remove(Path::new("/mnt/a b"));
    assert_eq!(reg.find(Path::new("/mnt/a b")).expect("read"), None);
}

#[test]
fn only_records_of_dead_processes_are_cleaned() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = MountRegistry::new(tmp.path());
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let dead = ProcessId {
        pid: child.id(),
        start: 0,
    };
    child.wait().expect("wait");
    let reused = ProcessId {
        start: ProcessId::current().start + 1,
        ..ProcessId::current()
    };
    assert!(ProcessId::current().is_alive());
    assert!(
        !dead.is_alive() && !reused.is_alive(),
        "a reused pid is not alive"
    );
    reg.write(&record("/mnt/live", ProcessId::current()))
        .expect("write");
    reg.write(&record("/mnt/dead", dead)).expect("write");
    reg.write(&record("/mnt/reused", reused)).expect("write");
    let cleaned: Vec<PathBuf> = reg.clean_dead().into_iter().map(|r| r.mountpoint).collect();
    assert_eq!(cleaned.len(), 2);
    assert!(!cleaned.contains(&PathBuf::from("/mnt/live")));
    assert_eq!(reg.list().len(), 1);
}

#[test]
fn held_records_wait_for_a_successor_until_it_cleans_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let reg = MountRegistry::new(tmp.path());
    let mut gone = std::process::Command::new("true").spawn().expect("spawn");
    let dead = ProcessId::of(gone.id());
    gone.wait().expect("wait");
    let mut holder = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .expect("spawn");
    let held = MountRecord {
        id: "held".into(),
        holder: Some(ProcessId::of(holder.id())),
        passthrough: true,
        ..record("/mnt/held", dead)
    };
    let unheld = MountRecord {
        id: "unheld".into(),
        holder: Some(dead),
        ..record("/mnt/unheld", dead)
    };
    reg.write(&held).expect("write");
    reg.write(&unheld).expect("write");
    assert_eq!(
        reg.find(Path::new("/mnt/held")).expect("read"),
        Some(held.clone())
    );
    assert!(held.adoptable() && !unheld.adoptable());
    let cleaned: Vec<String> = reg.clean_dead().into_iter().map(|r| r.id).collect();
    assert_eq!(cleaned, ["unheld"], "a held record waits");
    assert_eq!(reg.adoptable_ids(), ["held".to_string()].into());
    let cleaned: Vec<String> = reg
        .clean_orphans(Some("unix:/run/another-daemon.sock"))
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(
        cleaned.is_empty(),
        "another daemon's held mount waits for its successor"
    );
    let cleaned: Vec<String> = reg
        .clean_orphans(held.daemon.as_deref())
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(cleaned, ["held"]);
    assert!(reg.list().is_empty());
    // Its holder was stopped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while holder.try_wait().expect("try_wait").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder still runs"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
