//! Tests of manifest encoding and validation, including property tests over random trees.

use super::*;
use proptest::prelude::*;

fn meta(mode: u32) -> Metadata {
    Metadata {
        mode,
        uid: 0,
        gid: 0,
        mtime: Timestamp {
            sec: 1_700_000_000,
            nsec: 123,
        },
        xattrs: vec![],
    }
}

fn dir(entries: Vec<(&[u8], u32)>) -> Inode {
    Inode {
        meta: meta(0o755),
        kind: InodeKind::Directory {
            entries: entries
                .into_iter()
                .map(|(n, i)| DirEntry {
                    name: n.to_vec(),
                    inode: i,
                })
                .collect(),
        },
    }
}

fn sample() -> Manifest {
    let c = ChunkInfo {
        id: ChunkId::of(b"abc"),
        len: 3,
    };
    Manifest {
        chunks: vec![c],
        inodes: vec![
            dir(vec![(b"a", 1), (b"b", 2), (b"hard", 1), (b"sub", 3)]),
            Inode {
                meta: meta(0o4755),
                kind: InodeKind::File {
                    size: 13,
                    extents: vec![Extent::Chunk(0), Extent::Zero(10)],
                },
            },
            Inode {
                meta: meta(0o777),
                kind: InodeKind::Symlink {
                    target: b"/abs/target".to_vec(),
                },
            },
            dir(vec![(b"\xff\xfe", 4)]),
            Inode {
                meta: meta(0o600),
                kind: InodeKind::CharDevice { rdev: 0x0501 },
            },
        ],
        config: None,
    }
}

#[test]
fn a_configuration_is_kept_and_only_it_moves_the_version() {
    let plain = sample();
    assert_eq!(crate::codec::peek_version(&plain.encode()), Some(1));
    let mut configured = sample();
    configured.config = Some(crate::ImageConfig {
        cmd: Some(vec!["/bin/sh".into()]),
        env: vec!["A=1".into()],
        ..Default::default()
    });
    let bytes = configured.encode();
    assert_eq!(crate::codec::peek_version(&bytes), Some(2));
    assert_eq!(Manifest::decode(&bytes).unwrap(), configured);
    assert_ne!(Manifest::id_of(&bytes), Manifest::id_of(&plain.encode()));
    // A version 2 manifest whose configuration breaks a rule is refused on decode.
    configured.config = Some(crate::ImageConfig {
        working_dir: "relative".into(),
        ..Default::default()
    });
    let err = Manifest::decode(&configured.encode()).unwrap_err();
    assert!(err.to_string().contains("working directory"), "{err}");
}

#[test]
fn round_trip() {
    let m = sample();
    let bytes = m.encode();
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
    assert_eq!(
        Manifest::id_of(&bytes),
        Manifest::id_of(&m.encode()),
        "encoding is deterministic"
    );
    assert_eq!(m.lookup(0, b"hard"), Some(1));
    assert_eq!(m.lookup(0, b"zzz"), None);
    assert_eq!(m.link_counts(), vec![3, 2, 1, 2, 1]);
    let ext = m.file_extents(1);
    assert_eq!(
        ext[1],
        FileExtent {
            offset: 3,
            len: 10,
            chunk: None
        }
    );
}

fn rejects(m: Manifest, needle: &str) {
    let err = Manifest::decode(&m.encode()).unwrap_err().to_string();
    assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
}

#[test]
fn invalid_manifests_are_rejected() {
    let mut m = sample();
    m.inodes[0] = dir(vec![(b"b", 2), (b"a", 1), (b"hard", 1), (b"sub", 3)]);
    rejects(m, "sorted");

    let mut m = sample();
    m.inodes[0] = dir(vec![
        (b"a", 1),
        (b"b", 2),
        (b"hard", 1),
        (b"sub", 3),
        (b"sub2", 3),
    ]);
    rejects(m, "parents");

    let mut m = sample();
    m.inodes[3] = dir(vec![(b"..", 4)]);
    rejects(m, "'.' or '..'");

    let mut m = sample();
    m.inodes[3] = dir(vec![(b"a/b", 4)]);
    rejects(m, "contains '/'");

    let mut m = sample();
    m.inodes[1].kind = InodeKind::File {
        size: 14,
        extents: vec![Extent::Chunk(0), Extent::Zero(10)],
    };
    rejects(m, "add up");

    let mut m = sample();
    m.inodes[1].kind = InodeKind::File {
        size: 3,
        extents: vec![Extent::Chunk(7)],
    };
    rejects(m, "chunk table");

    let mut m = sample();
    m.inodes[3] = dir(vec![(b"loop", 3)]);
    m.inodes[0] = dir(vec![(b"a", 1), (b"b", 2), (b"dev", 4), (b"hard", 1)]);
    rejects(m, "not reachable");

    let mut m = sample();
    m.inodes[1].meta.mode = 0o170000;
    rejects(m, "mode");

    let mut m = sample();
    m.inodes[1].kind = InodeKind::File {
        size: u64::MAX,
        extents: vec![Extent::Zero(u64::MAX), Extent::Zero(1)],
    };
    rejects(m, "overflow");
}

#[test]
fn envelope_errors() {
    let bytes = sample().encode();
    assert!(matches!(
        Manifest::decode(&bytes[..10]),
        Err(FormatError::Truncated { .. })
    ));
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(
        Manifest::decode(&b),
        Err(FormatError::BadMagic { .. })
    ));
    let mut b = bytes.clone();
    b[8] = 9;
    assert!(matches!(
        Manifest::decode(&b),
        Err(FormatError::UnsupportedVersion { .. })
    ));
    let mut b = bytes.clone();
    b.push(0);
    assert!(matches!(
        Manifest::decode(&b),
        Err(FormatError::LengthMismatch { .. })
    ));
    let mut b = bytes.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    assert!(matches!(
        Manifest::decode(&b),
        Err(FormatError::ChecksumMismatch { .. })
    ));
}

#[test]
fn huge_length_fields_do_not_allocate() {
    // A well-formed envelope whose body claims a vector of 2^60 entries.
    let mut body = Vec::new();
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]); // varint
    let env = crate::codec::Envelope {
        what: "manifest",
        magic: *b"THAWMAN\0",
        version: 1,
    };
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&env.magic);
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    let sum = blake3::hash(&bytes);
    bytes.extend_from_slice(sum.as_bytes());
    assert!(matches!(
        Manifest::decode(&bytes),
        Err(FormatError::Malformed { .. })
    ));
}

/// One inode kind of a random tree, from its choice and two random numbers.
fn arb_kind(kind: u8, chunks: &[ChunkInfo], name: &[u8], a: u32, b: u32) -> InodeKind {
    match kind {
        0 => InodeKind::Directory { entries: vec![] },
        1 => {
            let i = a % chunks.len() as u32;
            let len = u64::from(chunks[i as usize].len) + u64::from(b % 100) + 1;
            InodeKind::File {
                size: len,
                extents: vec![
                    Extent::Chunk(i),
                    Extent::Zero(len - u64::from(chunks[i as usize].len)),
                ],
            }
        }
        2 => InodeKind::Symlink {
            target: name.to_vec(),
        },
        3 => InodeKind::CharDevice { rdev: u64::from(a) },
        4 => InodeKind::Fifo,
        _ => InodeKind::File {
            size: 0,
            extents: vec![],
        },
    }
}

/// Random valid trees: a list of (parent choice, kind choice, name) turned into a manifest.
fn arb_manifest() -> impl Strategy<Value = Manifest> {
    let node = (
        any::<u16>(),
        0u8..6,
        proptest::collection::vec(1u8..=255, 1..12),
        any::<u32>(),
        any::<u32>(),
    );
    (
        proptest::collection::vec(node, 0..40),
        proptest::collection::vec(any::<u8>(), 1..8),
    )
        .prop_map(|(nodes, chunk_seed)| {
            let chunks: Vec<ChunkInfo> = chunk_seed
                .iter()
                .enumerate()
                .map(|(i, s)| ChunkInfo {
                    id: ChunkId::of(&[*s, i as u8]),
                    len: 1 + u32::from(*s),
                })
                .collect();
            let mut inodes = vec![Inode {
                meta: meta(0o755),
                kind: InodeKind::Directory { entries: vec![] },
            }];
            let mut dirs = vec![0u32];
            for (parent, kind, name, a, b) in nodes {
                let name: Vec<u8> = name
                    .into_iter()
                    .map(|c| if c == b'/' { b'_' } else { c })
                    .collect();
                if name == b"." || name == b".." {
                    continue;
                }
                let p = dirs[parent as usize % dirs.len()];
                let InodeKind::Directory { entries } = &inodes[p as usize].kind else {
                    unreachable!()
                };
                if entries.iter().any(|e| e.name == name) {
                    continue;
                }
                let kind = arb_kind(kind, &chunks, &name, a, b);
                let is_dir = matches!(kind, InodeKind::Directory { .. });
                let ino = inodes.len() as u32;
                inodes.push(Inode {
                    meta: Metadata {
                        mode: a & 0o7777,
                        uid: a,
                        gid: b,
                        mtime: Timestamp {
                            sec: i64::from(b),
                            nsec: a % 1_000_000_000,
                        },
                        xattrs: vec![],
                    },
                    kind,
                });
                if is_dir {
                    dirs.push(ino);
                }
                let InodeKind::Directory { entries } = &mut inodes[p as usize].kind else {
                    unreachable!()
                };
                entries.push(DirEntry { name, inode: ino });
                entries.sort_by(|x, y| x.name.cmp(&y.name));
            }
            Manifest {
                chunks,
                inodes,
                config: None,
            }
        })
}

/// Random valid run configurations.
fn arb_config() -> impl Strategy<Value = crate::ImageConfig> {
    let words = || proptest::collection::vec("[a-z/ .-]{0,8}", 0..4);
    (
        proptest::option::of(words()),
        proptest::option::of(words()),
        proptest::collection::vec("[A-Z_]{1,6}=[^\\x00]{0,8}", 0..4),
        "(/[a-z]{1,5}){0,2}",
        "[a-z0-9:]{0,8}",
        proptest::collection::btree_set((1u16.., prop_oneof!["tcp", "udp"]), 0..3),
        proptest::collection::btree_map("[a-z.]{1,6}", "[^\\x00]{0,6}", 0..3),
        proptest::option::of(prop_oneof!["SIGTERM", "SIGQUIT", "9"]),
    )
        .prop_map(
            |(entrypoint, cmd, env, working_dir, user, ports, labels, stop)| {
                let mut exposed_ports: Vec<String> = ports
                    .into_iter()
                    .map(|(p, proto)| format!("{p}/{proto}"))
                    .collect();
                exposed_ports.sort();
                exposed_ports.dedup();
                crate::ImageConfig {
                    entrypoint,
                    cmd,
                    env,
                    working_dir,
                    user,
                    exposed_ports,
                    labels: labels.into_iter().collect(),
                    stop_signal: stop,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn manifests_with_a_configuration_round_trip(m in arb_manifest(), config in proptest::option::of(arb_config())) {
        let m = Manifest { config, ..m };
        prop_assert!(m.validate().is_ok());
        prop_assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn encode_decode_round_trips(m in arb_manifest()) {
        prop_assert!(m.validate().is_ok());
        prop_assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn truncated_or_flipped_bytes_never_panic(m in arb_manifest(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>()) {
        let bytes = m.encode();
        let _ = Manifest::decode(&bytes[..cut.index(bytes.len())]);
        let mut b = bytes.clone();
        let i = flip.index(b.len());
        b[i] ^= 0x5a;
        prop_assert!(Manifest::decode(&b).is_err());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Manifest::decode(&bytes);
        let _ = crate::PackIndex::decode(&bytes);
    }

    #[test]
    fn random_bodies_in_a_valid_envelope_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Bypass the checksum so the decoder's body and validation paths see garbage.
        let env = crate::codec::Envelope { what: "manifest", magic: *b"THAWMAN\0", version: 1 };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&env.magic);
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&body);
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes());
        let _ = Manifest::decode(&bytes);
    }
}
