//! The filters containerd sends, and malformed ones.

use super::*;
use crate::meta::Kind;
use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
    Info {
        name: name.into(),
        parent: parent.into(),
        kind,
        created: UNIX_EPOCH,
        updated: UNIX_EPOCH,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn parse(f: &str) -> Filter {
    Filter::parse(f).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_unpacker_s_target_filter() {
    // What containerd's metadata snapshotter sends after an AlreadyExists.
    let f =
        parse(r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/5/sha256:p""#);
    let l = [("containerd.io/snapshot.ref", "sha256:abc")];
    assert!(f.matches(&info(
        "sha256:abc",
        "default/5/sha256:p",
        Kind::Committed,
        &l
    )));
    assert!(!f.matches(&info("sha256:abc", "other", Kind::Committed, &l)));
    assert!(!f.matches(&info(
        "sha256:abc",
        "default/5/sha256:p",
        Kind::Committed,
        &[]
    )));
    // A first layer: containerd filters with `parent==""`, and `parent` is always
    // present in its snapshot adaptor, empty or not.
    let f = parse(r#"labels."containerd.io/snapshot.ref"==x,parent=="""#);
    assert!(f.matches(&info(
        "x",
        "",
        Kind::Committed,
        &[("containerd.io/snapshot.ref", "x")]
    )));
    assert!(!f.matches(&info(
        "x",
        "p",
        Kind::Committed,
        &[("containerd.io/snapshot.ref", "x")]
    )));
}

#[test]
fn operators_presence_and_fields() {
    let i = info("a", "p", Kind::Active, &[("k.x", "v1")]);
    assert!(parse("kind==active").matches(&i));
    assert!(parse("kind!=committed").matches(&i));
    assert!(parse("name~=^a$").matches(&i));
    assert!(!parse("name~=^b").matches(&i));
    assert!(parse("labels.k.x").matches(&i));
    assert!(parse(r#"labels."k.x"==v1"#).matches(&i));
    assert!(!parse("labels.missing").matches(&i));
    // As in containerd: `!=` and `~=` compare an absent field as "".
    assert!(parse("labels.missing!=v").matches(&i));
    assert!(parse("labels.missing~=^$").matches(&i));
    assert!(
        parse("name~=/^a$/").matches(&i),
        "a regular expression quoted with /"
    );
    assert!(parse(r#"name=='a'"#).matches(&i));
    assert!(parse(r#"name=="\x61""#).matches(&i), "a hexadecimal escape");
    assert!(parse(r#"name=="\141""#).matches(&i), "an octal escape");
    assert!(parse("").matches(&i));
    assert!(parse(" name == a , parent==p ").matches(&i));
    assert!(!parse("unknown==a").matches(&i));
}

#[test]
fn malformed_filters_are_errors() {
    for bad in [
        "name==",
        "==a",
        "name==a,",
        r#"labels."open"#,
        "name~=(",
        "name==a b",
        r#"name=="\q""#,
        "name==/a/",
        r#"name=="\x6""#,
    ] {
        assert!(Filter::parse(bad).is_err(), "{bad:?} parsed");
    }
}

proptest::proptest! {
    /// Any text (containerd passes the filters its clients send) parses or is an error,
    /// never a panic; what parses matches without panicking too.
    #[test]
    fn arbitrary_filters_never_panic(text in "([a-z.\"'/|,=!~ \\\\x0-9()*^$-]|\\PC){0,40}") {
        if let Ok(f) = Filter::parse(&text) {
            let _ = f.matches(&info("n", "p", Kind::View, &[("k", "v")]));
        }
    }
}
