//! Resolving `user[:group]` (from the image's config or `--user`) to the numeric ids,
//! supplementary groups and home directory a container runs with, through the image's own
//! `/etc/passwd` and `/etc/group`, as Docker does: a name must exist there, a number need
//! not (it runs with group 0 unless one is given).

use crate::error::RunError;
use crate::rootfs::RootFs;

/// Who a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership), without the primary one.
    pub additional_gids: Vec<u32>,
    /// `HOME`, from `/etc/passwd` (`/` when the user is not listed).
    pub home: String,
}

/// One `/etc/passwd` line: name, uid, gid, home.
struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, ..] = f[..] else {
            return None;
        };
        Some(Passwd {
            name,
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            home,
        })
    })
}

/// One `/etc/group` line: name, gid, members.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let [name, _, gid, members, ..] = f[..] else {
            return None;
        };
        let members = members.split(',').filter(|m| !m.is_empty()).collect();
        Some((name, gid.parse().ok()?, members))
    })
}

/// Resolves `spec` (`""` is root; `name`, `uid`, `name:group`, `uid:gid`, mixed) in `root`.
pub fn resolve_user(root: &RootFs, spec: &str) -> Result<ResolvedUser, RunError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd = root.read_small("/etc/passwd")?.unwrap_or_default();
    let groups = root.read_small("/etc/group")?.unwrap_or_default();
    let by_name = passwd_entries(&passwd).find(|p| p.name == user);
    let (uid, mut gid, home, name) = match (by_name, user.parse::<u32>()) {
        (Some(p), _) => (p.uid, p.gid, p.home.to_string(), Some(p.name.to_string())),
        (None, Ok(uid)) => match passwd_entries(&passwd).find(|p| p.uid == uid) {
            Some(p) => (uid, p.gid, p.home.to_string(), Some(p.name.to_string())),
            None => (uid, 0, "/".to_string(), None),
        },
        (None, Err(_)) => return Err(RunError::UserNotFound { user: user.into() }),
    };
    if let Some(g) = group.filter(|g| !g.is_empty()) {
        gid = match group_entries(&groups).find(|(n, _, _)| *n == g) {
            Some((_, id, _)) => id,
            None => g
                .parse()
                .map_err(|_| RunError::GroupNotFound { group: g.into() })?,
        };
    }
    let mut additional_gids: Vec<u32> = match (&name, group) {
        // As Docker: an explicit group replaces the supplementary groups too.
        (Some(n), None) => group_entries(&groups)
            .filter(|(_, _, members)| members.contains(&n.as_str()))
            .map(|(_, id, _)| id)
            .filter(|id| *id != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(passwd: &str, group: &str) -> (tempfile::TempDir, RootFs) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), group).unwrap();
        let root = RootFs::open(dir.path()).unwrap();
        (dir, root)
    }

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbroken line\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nvideo:x:44:app,other\nstaff:x:50:app\n";

    #[test]
    fn names_and_numbers_resolve_as_docker_does() {
        let (_d, root) = root_with(PASSWD, GROUP);
        let r = resolve_user(&root, "").unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (0, 0, "/root"));
        let app = resolve_user(&root, "app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.additional_gids.clone()),
            (1000, 1000, vec![44, 50])
        );
        assert_eq!(resolve_user(&root, "1000").unwrap(), app);
        let r = resolve_user(&root, "app:video").unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids), (1000, 44, vec![]));
        let r = resolve_user(&root, "4242:77").unwrap();
        assert_eq!((r.uid, r.gid, r.home.as_str()), (4242, 77, "/"));
        let r = resolve_user(&root, "4242").unwrap();
        assert_eq!((r.uid, r.gid), (4242, 0));
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        let (_d, root) = root_with(PASSWD, GROUP);
        let e = resolve_user(&root, "nobody-here").unwrap_err();
        assert!(
            e.to_string()
                .contains("\"nobody-here\" not found in the image's /etc/passwd"),
            "{e}"
        );
        let e = resolve_user(&root, "app:nogroup").unwrap_err();
        assert!(e.to_string().contains("/etc/group"), "{e}");
    }

    #[test]
    fn an_image_symlink_resolves_inside_the_image_only() {
        let dir = tempfile::tempdir().unwrap();
        let rootdir = dir.path().join("root");
        std::fs::create_dir_all(rootdir.join("etc")).unwrap();
        std::fs::create_dir_all(rootdir.join("image-etc")).unwrap();
        std::fs::write(
            rootdir.join("image-etc/passwd"),
            "inside:x:7:7::/in:/bin/sh\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("/image-etc/passwd", rootdir.join("etc/passwd")).unwrap();
        let root = RootFs::open(&rootdir).unwrap();
        assert_eq!(resolve_user(&root, "inside").unwrap().uid, 7);
        // A file beside the root, which `..` would reach from a plain open.
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(
            dir.path().join("outside/passwd"),
            "escaped:x:9:9::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::remove_file(rootdir.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../outside/passwd", rootdir.join("etc/passwd")).unwrap();
        let e = resolve_user(&root, "escaped").unwrap_err();
        assert!(
            matches!(e, RunError::UserNotFound { .. }),
            "a file outside was read: {e}"
        );
    }
}
