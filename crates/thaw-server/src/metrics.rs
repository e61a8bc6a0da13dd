//! `GET /metrics`: the node's counters in the Prometheus text format (version 0.0.4).
//!
//! The counters live as atomics in the store and FUSE crates, which stay free of any
//! metrics dependency; this module only renders them (see ARCHITECTURE.md).

use crate::Node;
use std::fmt::Write;
use thaw_store::read::schedule::{HistogramSnapshot, LATENCY_BUCKETS};

/// Writes `# HELP` and `# TYPE` once per metric family.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    /// One histogram series; `labels` is empty or ends without a comma.
    fn histogram(&mut self, name: &str, labels: &str, h: &HistogramSnapshot) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += h.counts.get(i).copied().unwrap_or(0);
            self.sample(
                &format!("{name}_bucket"),
                &format!("{labels}{sep}le=\"{bound}\""),
                cumulative,
            );
        }
        let total = h.total();
        self.sample(
            &format!("{name}_bucket"),
            &format!("{labels}{sep}le=\"+Inf\""),
            total,
        );
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, total);
    }
}

/// Renders every metric of the node.
pub fn render(node: &Node) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    let r = node.reader.stats();
    let usage = node.reader.cache_usage();
    let sched = node.reader.scheduler_stats();

    o.family(
        "thaw_cache_hits_total",
        "counter",
        "Chunk reads served by a cache tier.",
    );
    o.sample("thaw_cache_hits_total", "tier=\"memory\"", r.memory_hits);
    o.sample("thaw_cache_hits_total", "tier=\"disk\"", r.disk_hits);
    o.family(
        "thaw_cache_misses_total",
        "counter",
        "Chunk lookups a cache tier could not serve.",
    );
    o.sample(
        "thaw_cache_misses_total",
        "tier=\"memory\"",
        r.memory_misses,
    );
    o.sample("thaw_cache_misses_total", "tier=\"disk\"", r.disk_misses);
    o.family("thaw_cache_bytes", "gauge", "Bytes held by a cache tier.");
    o.sample("thaw_cache_bytes", "tier=\"memory\"", usage.memory_bytes);
    o.sample("thaw_cache_bytes", "tier=\"disk\"", usage.disk_bytes);
    o.family(
        "thaw_cache_capacity_bytes",
        "gauge",
        "Capacity of a cache tier.",
    );
    o.sample(
        "thaw_cache_capacity_bytes",
        "tier=\"memory\"",
        usage.memory_capacity,
    );
    o.sample(
        "thaw_cache_capacity_bytes",
        "tier=\"disk\"",
        usage.disk_capacity,
    );

    o.family(
        "thaw_store_fetches_total",
        "counter",
        "Ranged GETs of chunk data, by priority class.",
    );
    o.sample(
        "thaw_store_fetches_total",
        "class=\"on_demand\"",
        sched.on_demand_fetches,
    );
    o.sample(
        "thaw_store_fetches_total",
        "class=\"prefetch\"",
        sched.prefetch_fetches,
    );
    o.family(
        "thaw_store_fetched_bytes_total",
        "counter",
        "Stored bytes fetched from the object store, by priority class.",
    );
    o.sample(
        "thaw_store_fetched_bytes_total",
        "class=\"on_demand\"",
        sched.on_demand_bytes,
    );
    o.sample(
        "thaw_store_fetched_bytes_total",
        "class=\"prefetch\"",
        sched.prefetch_bytes,
    );
    o.one(
        "thaw_store_fetched_chunks_total",
        "counter",
        "Chunks fetched from the object store and verified.",
        r.fetched_chunks,
    );
    o.one(
        "thaw_prefetch_promoted_total",
        "counter",
        "Prefetches promoted because a reader waited for them.",
        sched.promoted,
    );
    o.family(
        "thaw_fetch_latency_seconds",
        "histogram",
        "Time of one ranged GET, from slot granted to bytes received.",
    );
    o.histogram("thaw_fetch_latency_seconds", "", &sched.fetch_latency);
    o.family(
        "thaw_fetch_waiting",
        "gauge",
        "GETs waiting for a scheduler slot, by class.",
    );
    o.sample(
        "thaw_fetch_waiting",
        "class=\"on_demand\"",
        sched.waiting_on_demand,
    );
    o.sample(
        "thaw_fetch_waiting",
        "class=\"prefetch\"",
        sched.waiting_prefetch,
    );

    let (queued_chunks, queued_bytes) = node.jobs.queued();
    o.one(
        "thaw_prefetch_queue_chunks",
        "gauge",
        "Chunks running prewarm jobs still have to warm.",
        queued_chunks,
    );
    o.one(
        "thaw_prefetch_queue_bytes",
        "gauge",
        "Uncompressed bytes running prewarm jobs still have to warm.",
        queued_bytes,
    );
    o.one(
        "thaw_prefetch_bytes_total",
        "counter",
        "Uncompressed bytes fetched by prefetch.",
        r.prefetched_bytes,
    );
    o.one(
        "thaw_integrity_failures_total",
        "counter",
        "Chunks from the store that failed verification (never served).",
        r.integrity_failures,
    );

    let jobs = node.jobs.list();
    o.family("thaw_jobs", "gauge", "Prewarm jobs by state.");
    for state in ["running", "done", "failed", "cancelled"] {
        let n = jobs.iter().filter(|j| j.state().as_str() == state).count();
        o.sample("thaw_jobs", &format!("state=\"{state}\""), n);
    }

    let mounts = node.mounts.list();
    o.one("thaw_mounts", "gauge", "Images mounted.", mounts.len());
    let snaps: Vec<(String, thaw_fuse::StatsSnapshot)> = mounts
        .iter()
        .filter_map(|m| m.stats().map(|s| (m.id.clone(), s)))
        .collect();
    o.family(
        "thaw_fuse_operations_total",
        "counter",
        "FUSE operations served, by mount and operation.",
    );
    for (id, s) in &snaps {
        for (op, n) in &s.ops {
            o.sample(
                "thaw_fuse_operations_total",
                &format!("mount=\"{id}\",op=\"{op}\""),
                n,
            );
        }
    }
    o.family(
        "thaw_fuse_operation_seconds",
        "histogram",
        "Time from a FUSE request to its reply, by mount and operation.",
    );
    for (id, s) in &snaps {
        for (op, h) in &s.op_latency {
            if h.total() > 0 {
                o.histogram(
                    "thaw_fuse_operation_seconds",
                    &format!("mount=\"{id}\",op=\"{op}\""),
                    h,
                );
            }
        }
    }
    o.family(
        "thaw_fuse_bytes_served_total",
        "counter",
        "Bytes returned by FUSE reads, by mount.",
    );
    for (id, s) in &snaps {
        o.sample(
            "thaw_fuse_bytes_served_total",
            &format!("mount=\"{id}\""),
            s.bytes_served,
        );
    }

    o.family(
        "thaw_http_requests_total",
        "counter",
        "HTTP requests answered, by status class.",
    );
    for (class, n) in node.http.snapshot() {
        o.sample("thaw_http_requests_total", &format!("code=\"{class}\""), n);
    }
    o.one(
        "thaw_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        node.started.elapsed().as_secs_f64(),
    );
    o.0
}
