//! Wrappers around [`crate::BlobStore`]: each adds one cross-cutting behaviour and
//! forwards everything else, so they compose in any order.

mod counting;
mod crash;
mod faults;
mod meta_cache;
mod retry;
mod throttle;

pub use counting::{CountingStore, StoreCounters, StoreCountersSnapshot};
pub use crash::CrashStore;
pub use faults::{FaultConfig, FaultyStore};
pub use meta_cache::MetaCacheStore;
pub use retry::{RetryConfig, RetryStore};
pub use throttle::{ThrottleConfig, ThrottledStore};
