//! thaw's autoscaler: scaling policies that are pure functions of a sensor [`Snapshot`] and
//! their own state (time comes in the snapshot, so every rule is testable without sleeping),
//! the reference policies of Knative, the Kubernetes HPA, KEDA, Ray Serve and beta9 built from
//! their published algorithms, and a deterministic discrete-event simulator that replays a
//! request trace through any of them. It knows nothing of containers, stores or Redis: the
//! daemon's control loop feeds it sensors and carries out its decisions.

pub mod config;
mod error;
pub mod policy;
pub mod sim;
mod snapshot;
pub mod trace;

pub use error::{AutoscaleError, ParamError, TraceError};
pub use policy::{build_policy, f as as_f64, Params, Policy, POLICY_NAMES};
pub use snapshot::{Decision, ReplicaState, ReplicaView, Snapshot};
