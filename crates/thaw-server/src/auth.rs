//! Who may call the daemon, and what they may do. Local callers come through the unix
//! socket and are known by the kernel's `SO_PEERCRED` (root, the daemon's own user, or a
//! member of the configured group may do everything). Remote callers come over TCP with a
//! bearer token, each token named and scoped. Tokens are compared in constant time and
//! never printed.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read: images, cache, jobs, mounts, metrics.
    Read,
    /// Start prewarm jobs.
    Prewarm,
    /// Push autoscaling signals (for gateways).
    Signals,
    /// Everything: mounts, cancellations, deletes.
    Admin,
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "prewarm" => Ok(Scope::Prewarm),
            "signals" => Ok(Scope::Signals),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?} (read, prewarm, signals, admin)"
            )),
        }
    }
}

/// A bearer secret: compared in constant time, shown nowhere.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Shortest secret accepted: a guessable token is no protection.
    pub const MIN_LEN: usize = 16;

    /// A secret, if long enough.
    pub fn new(s: &str) -> Result<Self, String> {
        if s.len() < Self::MIN_LEN {
            return Err(format!(
                "a token must have at least {} characters",
                Self::MIN_LEN
            ));
        }
        Ok(Secret(s.to_string()))
    }

    /// Whether `given` is this secret; takes the same time wherever they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        mine.len() == given.len()
            && mine
                .iter()
                .zip(given)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y))
                == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One named, scoped token.
#[derive(Debug, Clone)]
pub struct Token {
    /// Its name, which the audit log shows.
    pub name: String,
    /// The secret.
    pub secret: Secret,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
}

/// The tokens TCP callers may present.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<Token>);

impl Tokens {
    /// One token with every scope (`THAW_TOKEN`, `--token-file`).
    pub fn admin(secret: &str) -> Result<Self, String> {
        Ok(Tokens(vec![Token {
            name: "admin".into(),
            secret: Secret::new(secret.trim())?,
            scopes: [Scope::Admin].into(),
        }]))
    }

    /// A tokens file: one token a line, `NAME SCOPE[,SCOPE...] SECRET`; `#` starts a
    /// comment.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, scopes, secret] = fields[..] else {
                return Err(format!("line {}: expected NAME SCOPES SECRET", n + 1));
            };
            let scopes = scopes
                .split(',')
                .map(Scope::from_str)
                .collect::<Result<BTreeSet<_>, _>>()
                .map_err(|e| format!("line {}: {e}", n + 1))?;
            let secret = Secret::new(secret).map_err(|e| format!("line {}: {e}", n + 1))?;
            if out.iter().any(|t: &Token| t.name == name) {
                return Err(format!("line {}: token {name:?} named twice", n + 1));
            }
            out.push(Token {
                name: name.to_string(),
                secret,
                scopes,
            });
        }
        Ok(Tokens(out))
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds the tokens of `other`.
    pub fn extend(&mut self, other: Tokens) {
        self.0.extend(other.0);
    }

    /// The token `given` is, checking every token in full whatever matches.
    pub fn find(&self, given: &[u8]) -> Option<&Token> {
        self.0.iter().fold(None, |found, t| {
            if t.secret.matches(given) {
                Some(t)
            } else {
                found
            }
        })
    }
}

/// Where a connection came from: axum's connect info for both listeners.
#[derive(Debug, Clone)]
pub enum Peer {
    /// The unix socket, with the kernel's word on who is calling.
    Unix {
        /// The caller's user.
        uid: u32,
        /// The caller's primary group.
        gid: u32,
        /// The caller's process, if the kernel says.
        pid: Option<i32>,
    },
    /// TCP.
    Tcp(SocketAddr),
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(c) => Peer::Unix {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            // Unknown credentials get nothing: u32::MAX is nobody's uid.
            Err(_) => Peer::Unix {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
        }
    }
}

impl
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer::Tcp(*stream.remote_addr())
    }
}

/// Who is calling, once let in.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A local user allowed on the socket.
    Local {
        /// Their uid.
        uid: u32,
        /// Their process.
        pid: Option<i32>,
    },
    /// A TCP caller with a token.
    Token {
        /// The token's name.
        name: String,
        /// Its scopes.
        scopes: BTreeSet<Scope>,
    },
}

impl Caller {
    /// Whether the caller may act with `scope`.
    pub fn may(&self, scope: Scope) -> bool {
        match self {
            Caller::Local { .. } => true,
            Caller::Token { scopes, .. } => {
                scopes.contains(&Scope::Admin) || scopes.contains(&scope)
            }
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Local { uid, pid: Some(p) } => write!(f, "uid:{uid} pid:{p}"),
            Caller::Local { uid, pid: None } => write!(f, "uid:{uid}"),
            Caller::Token { name, .. } => write!(f, "token:{name}"),
        }
    }
}

/// Whether a local user may use the socket: root, the daemon's user, or a member of
/// `group` (primary, or supplementary as `/proc/PID/status` lists them).
pub fn local_user_allowed(uid: u32, gid: u32, pid: Option<i32>, group: Option<u32>) -> bool {
    if uid == 0 || uid == rustix::process::geteuid().as_raw() {
        return true;
    }
    let Some(group) = group else {
        return false;
    };
    gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group))
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A group by name (from `/etc/group`) or number.
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("/etc/group: {e}"))?;
    groups
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then(|| f.nth(1)?.parse().ok())?
        })
        .ok_or_else(|| format!("no group {name:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole_and_never_show() {
        let s = Secret::new("secret-secret-secret").unwrap();
        assert!(s.matches(b"secret-secret-secret"));
        assert!(!s.matches(b"secret-secret-secreT"));
        assert!(!s.matches(b"secret-secret-secret2"));
        assert!(!s.matches(b""));
        assert!(!format!("{s:?}").contains("secret-"));
        assert!(Secret::new("short").is_err());
    }

    #[test]
    fn token_files_parse_with_scopes() {
        let t = Tokens::parse(
            "# comment\nreader read 0123456789abcdef0\ngateway signals,prewarm 0123456789abcdef1\n",
        )
        .unwrap();
        let r = t.find(b"0123456789abcdef0").unwrap();
        assert_eq!(r.name, "reader");
        let caller = Caller::Token {
            name: r.name.clone(),
            scopes: r.scopes.clone(),
        };
        assert!(
            caller.may(Scope::Read) && !caller.may(Scope::Admin) && !caller.may(Scope::Prewarm)
        );
        assert!(t.find(b"nope-nope-nope-nope").is_none());
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
        for bad in [
            "a read",
            "a write 0123456789abcdef0",
            "a read short",
            "a read 0123456789abcdef0\na read 0123456789abcdef1",
        ] {
            assert!(Tokens::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn groups_resolve() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        assert!(group_id("no-such-group-here").is_err());
        assert!(local_user_allowed(0, 0, None, None));
        assert!(!local_user_allowed(65534, 65534, None, None));
        assert!(local_user_allowed(65534, 65534, None, Some(65534)));
    }
}
