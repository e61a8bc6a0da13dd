//! `GET /metrics`: the node's counters in the Prometheus text format (version 0.0.4).
//!
//! The counters live as atomics in the store and FUSE crates, which stay free of any
//! metrics dependency; this module only renders them (see ARCHITECTURE.md).

use crate::Node;
use std::fmt::Write;
use thaw_store::read::histogram::{HistogramSnapshot, LATENCY_BUCKETS};

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

impl Out {
    /// One family, its name written once, with a sample per label set.
    fn labelled<L: AsRef<str>, V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &[(L, V)],
    ) {
        self.family(name, kind, help);
        for (labels, value) in samples {
            self.sample(name, labels.as_ref(), value);
        }
    }
}

/// Renders every metric of the node.
pub fn render(node: &Node) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    caches(&mut o, node);
    store(&mut o, node);
    prefetch(&mut o, node);
    mounts(&mut o, node);
    whole_files(&mut o, node);
    autoscale(&mut o, node);
    resident_weights(&mut o, node);
    let http: Vec<(String, u64)> = node
        .http
        .snapshot()
        .into_iter()
        .map(|(class, n)| (format!("code=\"{class}\""), n))
        .collect();
    o.labelled(
        "thaw_http_requests_total",
        "counter",
        "HTTP requests answered, by status class.",
        &http,
    );
    let uptime = node.started.elapsed().as_secs_f64();
    o.one(
        "thaw_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        uptime,
    );
    o.0
}

/// The resident weights tier, when the daemon keeps one.
fn resident_weights(o: &mut Out, node: &Node) {
    let Some(tier) = &node.resident else { return };
    let u = tier.usage();
    let gauges = [
        (
            "thaw_weights_resident_bytes",
            "gauge",
            "Bytes of weights held in shared memory.",
            u.bytes,
        ),
        (
            "thaw_weights_resident_capacity_bytes",
            "gauge",
            "The resident tier's bound.",
            u.capacity,
        ),
        (
            "thaw_weights_resident_models",
            "gauge",
            "Models (files or checkpoints) held.",
            u.models,
        ),
        (
            "thaw_weights_resident_hits_total",
            "counter",
            "Requests served from the tier.",
            u.hits,
        ),
        (
            "thaw_weights_resident_loads_total",
            "counter",
            "Models loaded into the tier.",
            u.loads,
        ),
        (
            "thaw_weights_resident_evictions_total",
            "counter",
            "Models let go to make room.",
            u.evictions,
        ),
    ];
    for (name, kind, help, value) in gauges {
        o.one(name, kind, help, value);
    }
}

const MEMORY: &str = "tier=\"memory\"";
const DISK: &str = "tier=\"disk\"";
const ON_DEMAND: &str = "class=\"on_demand\"";
const PREFETCH: &str = "class=\"prefetch\"";

/// The memory and disk tiers: hits, misses, bytes held and capacity.
fn caches(o: &mut Out, node: &Node) {
    let (r, u) = (node.reader.stats(), node.reader.cache_usage());
    o.labelled(
        "thaw_cache_hits_total",
        "counter",
        "Chunk reads served by a cache tier.",
        &[(MEMORY, r.memory_hits), (DISK, r.disk_hits)],
    );
    o.labelled(
        "thaw_cache_misses_total",
        "counter",
        "Chunk lookups a cache tier could not serve.",
        &[(MEMORY, r.memory_misses), (DISK, r.disk_misses)],
    );
    o.labelled(
        "thaw_cache_bytes",
        "gauge",
        "Bytes held by a cache tier.",
        &[(MEMORY, u.memory_bytes), (DISK, u.disk_bytes)],
    );
    o.labelled(
        "thaw_cache_capacity_bytes",
        "gauge",
        "Capacity of a cache tier.",
        &[(MEMORY, u.memory_capacity), (DISK, u.disk_capacity)],
    );
    o.labelled(
        "thaw_cache_write_errors_total",
        "counter",
        "Disk cache writes that failed; each chunk was still served.",
        &[(DISK, u.disk_write_errors)],
    );
    o.labelled(
        "thaw_cache_full",
        "gauge",
        "1 while the disk cache's file system is full (its last write failed with ENOSPC).",
        &[(DISK, u64::from(u.disk_full))],
    );
}

/// GETs of chunk data from the object store, by priority class, and their latency.
fn store(o: &mut Out, node: &Node) {
    let (r, s) = (node.reader.stats(), node.reader.scheduler_stats());
    o.labelled(
        "thaw_store_fetches_total",
        "counter",
        "Ranged GETs of chunk data, by priority class.",
        &[
            (ON_DEMAND, s.on_demand_fetches),
            (PREFETCH, s.prefetch_fetches),
        ],
    );
    o.labelled(
        "thaw_store_fetched_bytes_total",
        "counter",
        "Stored bytes fetched from the object store, by priority class.",
        &[(ON_DEMAND, s.on_demand_bytes), (PREFETCH, s.prefetch_bytes)],
    );
    o.one(
        "thaw_store_fetched_chunks_total",
        "counter",
        "Chunks fetched from the object store and verified.",
        r.fetched_chunks,
    );
    o.one(
        "thaw_integrity_failures_total",
        "counter",
        "Chunks from the store that failed verification (never served).",
        r.integrity_failures,
    );
    o.family(
        "thaw_fetch_latency_seconds",
        "histogram",
        "Time of one ranged GET, from slot granted to bytes received.",
    );
    o.histogram("thaw_fetch_latency_seconds", "", &s.fetch_latency);
    fetch_policy(o, &r);
    o.labelled(
        "thaw_fetch_waiting",
        "gauge",
        "GETs waiting for a scheduler slot, by class.",
        &[
            (ON_DEMAND, s.waiting_on_demand),
            (PREFETCH, s.waiting_prefetch),
        ],
    );
}

/// What the fetch policy measured of the store, and the fetch-around it chose from that.
fn fetch_policy(o: &mut Out, r: &thaw_store::ReaderStats) {
    o.one(
        "thaw_fetch_around_bytes",
        "gauge",
        "Stored bytes fetched around a miss now (chosen from the store's latency and bandwidth unless fixed).",
        r.fetch_around_bytes,
    );
    o.one(
        "thaw_store_latency_seconds",
        "gauge",
        "The store's latency per GET, as the fetch policy measured it (0: not yet).",
        r.store_latency_us as f64 / 1e6,
    );
    o.one(
        "thaw_store_bandwidth_bytes_per_second",
        "gauge",
        "The store's bandwidth, as the fetch policy measured it (0: not yet).",
        r.store_bytes_per_second,
    );
    o.one(
        "thaw_decode_bytes_per_second",
        "gauge",
        "Decompression and verification on one core, as measured (0: not yet).",
        r.decode_bytes_per_second,
    );
    o.labelled(
        "thaw_fetch_around_chunks_total",
        "counter",
        "Chunks fetched around a miss, and those of them not decoded because on-demand work was waiting.",
        &[
            ("outcome=\"fetched\"", r.fetched_around),
            ("outcome=\"dropped\"", r.dropped_around),
        ],
    );
}

/// Prefetch and prewarm jobs: promotions, the queue, bytes, jobs by state.
fn prefetch(o: &mut Out, node: &Node) {
    let (r, s) = (node.reader.stats(), node.reader.scheduler_stats());
    o.one(
        "thaw_prefetch_promoted_total",
        "counter",
        "Prefetches promoted because a reader waited for them.",
        s.promoted,
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
    let jobs = node.jobs.list();
    let by_state = ["running", "done", "failed", "cancelled"].map(|state| {
        let n = jobs.iter().filter(|j| j.state().as_str() == state).count();
        (format!("state=\"{state}\""), n)
    });
    o.labelled("thaw_jobs", "gauge", "Prewarm jobs by state.", &by_state);
}

/// Mounts and their FUSE operations, latencies and bytes served.
fn mounts(o: &mut Out, node: &Node) {
    let mounts = node.mounts.list();
    o.one("thaw_mounts", "gauge", "Images mounted.", mounts.len());
    let snaps: Vec<(String, thaw_fuse::StatsSnapshot)> = mounts
        .iter()
        .filter_map(|m| m.stats().map(|s| (m.id.clone(), s)))
        .collect();
    let ops = "thaw_fuse_operations_total";
    o.family(
        ops,
        "counter",
        "FUSE operations served, by mount and operation.",
    );
    for (id, s) in &snaps {
        for (op, n) in &s.ops {
            o.sample(ops, &format!("mount=\"{id}\",op=\"{op}\""), n);
        }
    }
    let seconds = "thaw_fuse_operation_seconds";
    o.family(
        seconds,
        "histogram",
        "Time from a FUSE request to its reply, by mount and operation.",
    );
    for (id, s) in &snaps {
        for (op, h) in s.op_latency.iter().filter(|(_, h)| h.total() > 0) {
            o.histogram(seconds, &format!("mount=\"{id}\",op=\"{op}\""), h);
        }
    }
    let served = "thaw_fuse_bytes_served_total";
    o.family(served, "counter", "Bytes returned by FUSE reads, by mount.");
    for (id, s) in &snaps {
        o.sample(served, &format!("mount=\"{id}\""), s.bytes_served);
    }
    let passed: Vec<_> = snaps
        .iter()
        .map(|(id, s)| (format!("mount=\"{id}\""), s.passthrough.opens))
        .collect();
    o.labelled(
        "thaw_fuse_passthrough_opens_total",
        "counter",
        "Opens answered with FUSE passthrough (the kernel reads the whole file), by mount.",
        &passed,
    );
}

/// The whole-file cache behind FUSE passthrough.
fn whole_files(o: &mut Out, node: &Node) {
    let Some(f) = node.reader.files().map(|f| f.stats()) else {
        return;
    };
    o.one(
        "thaw_whole_file_cache_bytes",
        "gauge",
        "Bytes held by the whole-file cache.",
        f.bytes,
    );
    o.one(
        "thaw_whole_file_cache_capacity_bytes",
        "gauge",
        "Capacity of the whole-file cache.",
        f.capacity,
    );
    o.labelled(
        "thaw_whole_files_total",
        "counter",
        "Whole files written, verified after a restart, rejected as damaged, evicted, or not written.",
        &[
            ("event=\"written\"", f.materialised),
            ("event=\"verified\"", f.verified),
            ("event=\"rejected\"", f.rejected),
            ("event=\"evicted\"", f.evicted),
            ("event=\"failed\"", f.failed),
        ],
    );
}

/// Each autoscaled deployment's last decision and what it was based on.
fn autoscale(o: &mut Out, node: &Node) {
    let all = node.autoscale.all();
    if all.is_empty() {
        return;
    }
    type Field = fn(&thaw_api::api::DeploymentStatus) -> f64;
    let families: [(&str, &str, &str, Field); 10] = [
        (
            "thaw_autoscale_desired_replicas",
            "gauge",
            "The replica count last decided.",
            |d| f64::from(d.desired),
        ),
        (
            "thaw_autoscale_ready_replicas",
            "gauge",
            "Replicas ready.",
            |d| f64::from(d.ready),
        ),
        (
            "thaw_autoscale_starting_replicas",
            "gauge",
            "Replicas starting.",
            |d| f64::from(d.starting),
        ),
        (
            "thaw_autoscale_draining_replicas",
            "gauge",
            "Replicas draining.",
            |d| f64::from(d.draining),
        ),
        (
            "thaw_autoscale_queued_tasks",
            "gauge",
            "Tasks waiting, at the last decision.",
            |d| thaw_autoscale::as_f64(d.queued),
        ),
        (
            "thaw_autoscale_in_flight_tasks",
            "gauge",
            "Tasks being worked on, at the last decision.",
            |d| thaw_autoscale::as_f64(d.in_flight),
        ),
        (
            "thaw_autoscale_cold_start_seconds",
            "gauge",
            "The cold start the policy uses (measured moving average).",
            |d| d.cold_start_seconds,
        ),
        (
            "thaw_autoscale_decisions_total",
            "counter",
            "Decisions taken.",
            |d| thaw_autoscale::as_f64(d.decisions),
        ),
        (
            "thaw_autoscale_starts_total",
            "counter",
            "Replicas started.",
            |d| thaw_autoscale::as_f64(d.starts),
        ),
        (
            "thaw_autoscale_requeued_total",
            "counter",
            "Tasks moved back to the queue from replicas that died.",
            |d| thaw_autoscale::as_f64(d.requeued),
        ),
    ];
    for (name, kind, help, field) in families {
        let samples: Vec<(String, f64)> = all
            .iter()
            .map(|d| (format!("deployment=\"{}\"", d.name), field(d)))
            .collect();
        o.labelled(name, kind, help, &samples);
    }
}
