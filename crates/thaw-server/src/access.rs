//! The daemon's door: who a request comes from ([`Caller`]), whether they may come in at
//! all, and how fast. One `Access` per daemon, built from its configuration.

use crate::auth::{local_user_allowed, Caller, Peer, Tokens};
use crate::error::ApiError;
use axum::http::{header, HeaderMap};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use thaw_api::api::ErrorCode;

/// Distinct callers the rate limiter tracks before it forgets idle ones.
const MAX_TRACKED_CALLERS: usize = 10_000;

/// Who may call, and how often.
#[derive(Debug)]
pub struct Access {
    tokens: Tokens,
    socket_group: Option<u32>,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl Access {
    /// Tokens for TCP callers, the group whose members may use the socket, and the
    /// requests per second each caller may make (bursts of twice that; `None`: no limit).
    pub fn new(tokens: Tokens, socket_group: Option<u32>, per_second: Option<NonZeroU32>) -> Self {
        let limiter = per_second.map(|n| {
            let burst = n.saturating_mul(NonZeroU32::MIN.saturating_add(1));
            RateLimiter::keyed(Quota::per_second(n).allow_burst(burst))
        });
        Access {
            tokens,
            socket_group,
            limiter,
        }
    }

    /// Who is calling: a local user the socket admits, or the holder of a token.
    pub fn caller(&self, peer: &Peer, headers: &HeaderMap) -> Result<Caller, ApiError> {
        match peer {
            Peer::Unix { uid, gid, pid } => {
                if local_user_allowed(*uid, *gid, *pid, self.socket_group) {
                    Ok(Caller::Local {
                        uid: *uid,
                        pid: *pid,
                    })
                } else {
                    tracing::warn!(target: "thaw::audit", uid, "refused a local user outside the daemon's group");
                    Err(ApiError::forbidden(format!(
                        "uid {uid} may not use this daemon (root, or a member of its socket group)"
                    )))
                }
            }
            Peer::Tcp(_) => {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                match given.and_then(|g| self.tokens.find(g.as_bytes())) {
                    Some(t) => Ok(Caller::Token {
                        name: t.name.clone(),
                        scopes: t.scopes.clone(),
                    }),
                    None => Err(ApiError::new(
                        ErrorCode::Unauthorized,
                        "missing or wrong bearer token (Authorization: Bearer <token>)",
                    )),
                }
            }
        }
    }

    /// Counts a request against its peer's budget (a local uid, or a remote address, so
    /// guessing tokens is limited too).
    pub fn limit(&self, peer: &Peer) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let key = match peer {
            Peer::Unix { uid, .. } => format!("uid:{uid}"),
            Peer::Tcp(addr) => format!("ip:{}", addr.ip()),
        };
        if limiter.len() > MAX_TRACKED_CALLERS {
            limiter.retain_recent();
        }
        limiter.check_key(&key).map_err(|_| {
            ApiError::new(
                ErrorCode::TooManyRequests,
                format!("rate limit for {key}: slow down"),
            )
        })
    }
}
