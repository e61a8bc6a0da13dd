//! The node daemon's HTTP API as a client sees it: the wire format ([`api`]: request and
//! response bodies, stable error codes, the route table `docs/openapi.yaml` must match)
//! and the [`Client`]. The CLI's client commands use this crate alone, without linking
//! the server.

pub mod api;
pub mod client;

pub use client::{Client, ClientError};
