//! `thaw autoscale`: the daemon with autoscaled deployments (`run`), the worker each
//! replica runs (`worker`), the loops' status (`status`), and the trace-driven simulator
//! of the scaling policies (`simulate`).

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use thaw_autoscale::sim::{compare, simulate, Comparison, Report, SimConfig};
use thaw_autoscale::{trace, Params, POLICY_NAMES};

/// `thaw autoscale ...`.
#[derive(Subcommand, Debug)]
pub enum AutoscaleCommand {
    /// Run the node daemon (`thaw serve`) with the deployments of a configuration file
    /// autoscaled, in the foreground.
    Run(Box<AutoscaleRunArgs>),
    /// The worker a replica runs: takes tasks from the queue one at a time and runs
    /// COMMAND for each, with the task in THAW_TASK (started by the daemon in each replica).
    Worker(WorkerArgs),
    /// What each deployment's control loop last saw and decided.
    Status(StatusArgs),
    /// Push a gateway's signals for a deployment with `push = true` (what a gateway
    /// does every second); prints the deployment's replicas.
    Signal(SignalArgs),
    /// Replay a request trace through a scaling policy (or all of them, with --compare)
    /// and report cost (replica-seconds), latency, SLO attainment and cold starts.
    Simulate(SimulateArgs),
}

/// `thaw autoscale run`.
#[derive(Args, Debug)]
pub struct AutoscaleRunArgs {
    /// The deployments (TOML).
    #[arg(long)]
    pub config: std::path::PathBuf,
    #[command(flatten)]
    pub serve: crate::serve_cmd::ServeArgs,
}

/// `thaw autoscale status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    server: crate::client_cmd::ServerArgs,
    /// Print the daemon's JSON (with every measured start time).
    #[arg(long)]
    json: bool,
}

/// `thaw autoscale signal`.
#[derive(Args, Debug)]
pub struct SignalArgs {
    #[command(flatten)]
    server: crate::client_cmd::ServerArgs,
    /// The deployment.
    deployment: String,
    /// Requests waiting.
    #[arg(long)]
    queued: u64,
    /// Requests being served.
    #[arg(long, default_value_t = 0)]
    in_flight: u64,
    /// Requests completed so far (a counter).
    #[arg(long)]
    completed: Option<u64>,
    /// Mean service time, seconds.
    #[arg(long)]
    service_seconds: Option<f64>,
    /// Requests in flight on one replica, REPLICA=N (repeatable).
    #[arg(long = "replica", value_name = "REPLICA=N")]
    replicas: Vec<String>,
}

/// `thaw autoscale worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The Redis URL.
    #[arg(long)]
    redis: String,
    /// The queue's key.
    #[arg(long)]
    queue: String,
    /// This replica's name.
    #[arg(long)]
    replica: String,
    /// The command run for each task.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `thaw autoscale simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// The trace: a file (the Azure LLM CSV, or `arrival,service` seconds per line) or
    /// `synthetic:NAME[:SEED]` (poisson, bursty, diurnal, spike, sparse).
    #[arg(long)]
    trace: String,
    /// The policy (thaw, thaw-depth, knative, hpa, keda, ray-serve, beta9).
    #[arg(long, default_value = "thaw")]
    policy: String,
    /// A policy parameter, KEY=VALUE (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Seconds from the decision to start a replica to its readiness; a comma-separated
    /// list runs one comparison per value (a sweep).
    #[arg(long, default_value = "15", value_delimiter = ',')]
    cold_start: Vec<f64>,
    /// The latency (waiting plus service) a request should stay within, seconds; thaw's
    /// latency policy aims at it unless `--param target_latency=` says otherwise.
    #[arg(long, default_value_t = 5.0)]
    slo: f64,
    /// Requests one replica serves at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// The most replicas.
    #[arg(long, default_value_t = 20)]
    max_replicas: u32,
    /// Seconds a request may wait before it is dropped.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Only the first SECONDS of the trace.
    #[arg(long)]
    duration: Option<f64>,
    /// Run every policy and print one table.
    #[arg(long)]
    compare: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Write each policy's replicas and queue over time to this CSV file.
    #[arg(long)]
    timeline: Option<std::path::PathBuf>,
}

/// Runs the `thaw autoscale` commands that need no store (all but `run`); `None` for `run`.
pub async fn without_store(command: &AutoscaleCommand) -> Option<Result<()>> {
    Some(match command {
        AutoscaleCommand::Simulate(args) => simulate_cmd(args),
        AutoscaleCommand::Worker(args) => worker(args).await,
        AutoscaleCommand::Status(server) => status(server).await,
        AutoscaleCommand::Signal(args) => signal(args).await,
        AutoscaleCommand::Run(_) => return None,
    })
}

/// `thaw autoscale run`: the daemon with the configuration's deployments.
pub async fn run(repo: thaw_store::Repository, args: &AutoscaleRunArgs) -> Result<()> {
    let config = thaw_autoscale::config::load(&args.config)?;
    crate::serve_cmd::serve(repo, &args.serve, config).await
}

async fn worker(args: &WorkerArgs) -> Result<()> {
    use thaw_server::autoscale::worker::{run, WorkerConfig};
    let config = WorkerConfig {
        redis: args.redis.clone(),
        queue: args.queue.clone(),
        replica: args.replica.clone(),
        command: args.command.clone(),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let ran = run(&config, shutdown).await?;
    eprintln!("worker {}: ran {ran} tasks", args.replica);
    Ok(())
}

async fn status(args: &StatusArgs) -> Result<()> {
    let all = args.server.client()?.autoscale().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:>7} {:>6} {:>8} {:>8} {:>7} {:>8} {:>9} {:>7} {:>10}  REASON",
        "DEPLOYMENT",
        "POLICY",
        "DESIRED",
        "READY",
        "STARTING",
        "DRAINING",
        "QUEUED",
        "INFLIGHT",
        "COMPLETED",
        "STARTS",
        "COLDSTART"
    );
    for d in all {
        println!(
            "{:<16} {:<10} {:>7} {:>6} {:>8} {:>8} {:>7} {:>8} {:>9} {:>7} {:>9.2}s  {}",
            d.name,
            d.policy,
            d.desired,
            d.ready,
            d.starting,
            d.draining,
            d.queued,
            d.in_flight,
            d.completed,
            d.starts,
            d.cold_start_seconds,
            d.reason
        );
    }
    Ok(())
}

async fn signal(args: &SignalArgs) -> Result<()> {
    let mut replicas = std::collections::BTreeMap::new();
    for r in &args.replicas {
        let (name, n) = r
            .split_once('=')
            .with_context(|| format!("--replica {r}: expected REPLICA=N"))?;
        let n: u64 = n
            .parse()
            .with_context(|| format!("--replica {r}: {n:?} is not a count"))?;
        replicas.insert(name.to_owned(), n);
    }
    let signals = thaw_api::api::Signals {
        queued: args.queued,
        in_flight: args.in_flight,
        completed: args.completed,
        service_seconds: args.service_seconds,
        replicas,
    };
    let status = args
        .server
        .client()?
        .push_signals(&args.deployment, &signals)
        .await?;
    println!("desired {} ({})", status.desired, status.reason);
    for r in &status.replicas {
        let port = r.port.map_or_else(|| "-".to_string(), |p| p.to_string());
        println!(
            "{:<32} {:<9} port {port:<6} active {}",
            r.name, r.state, r.active
        );
    }
    Ok(())
}

fn simulate_cmd(args: &SimulateArgs) -> Result<()> {
    let mut trace = trace::load(&args.trace, args.concurrency)
        .with_context(|| format!("loading the trace {}", args.trace))?;
    if let Some(d) = args.duration {
        trace = trace.truncated(d);
    }
    let mut params = Params::new();
    for p in &args.params {
        params.parse_pair(p)?;
    }
    if args.compare || args.policy == "thaw" {
        params.set_default("target_latency", args.slo);
    }
    let names: Vec<&str> = if args.compare {
        POLICY_NAMES.to_vec()
    } else {
        vec![args.policy.as_str()]
    };
    if !args.compare && !POLICY_NAMES.contains(&args.policy.as_str()) {
        bail!(
            "unknown policy {:?} (known: {})",
            args.policy,
            POLICY_NAMES.join(", ")
        );
    }
    let mut out = std::io::stdout().lock();
    let mut results = Vec::new();
    for &cold_start in &args.cold_start {
        if !(cold_start.is_finite() && cold_start >= 0.0) {
            bail!("--cold-start {cold_start}: must be a non-negative number of seconds");
        }
        let cfg = SimConfig {
            cold_start,
            concurrency: args.concurrency.max(1),
            max_replicas: args.max_replicas.max(1),
            slo: args.slo,
            timeout: args.timeout,
            ..SimConfig::default()
        };
        let comparison = if args.compare {
            compare(&trace, &names, &params, &cfg)?
        } else {
            let report = simulate(&trace, &args.policy, &params, &cfg)?;
            Comparison {
                trace: trace.name.clone(),
                cold_start_s: cold_start,
                slo_s: args.slo,
                policies: vec![report],
            }
        };
        if !args.json {
            print_table(&mut out, &comparison, trace.len())?;
        }
        results.push(comparison);
    }
    if let Some(path) = &args.timeline {
        write_timeline(path, &results)?;
    }
    if args.json {
        let value = if results.len() == 1 {
            serde_json::to_value(&results[0])?
        } else {
            serde_json::to_value(&results)?
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    }
    Ok(())
}

fn print_table(out: &mut impl Write, c: &Comparison, requests: usize) -> Result<()> {
    writeln!(
        out,
        "trace {} ({requests} requests), cold start {} s, SLO {} s",
        c.trace, c.cold_start_s, c.slo_s
    )?;
    writeln!(
        out,
        "{:<11} {:>11} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10}",
        "policy",
        "replica-s",
        "SLO",
        "p50 s",
        "p95 s",
        "p99 s",
        "starts",
        "events",
        "served",
        "dropped",
        "thaw/this"
    )?;
    let thaw = c
        .policies
        .iter()
        .find(|r| r.name == "thaw")
        .map(|r| r.replica_seconds);
    for r in &c.policies {
        let ratio = thaw
            .filter(|_| r.replica_seconds > 0.0)
            .map_or_else(|| "-".into(), |t| format!("{:.3}", t / r.replica_seconds));
        writeln!(
            out,
            "{:<11} {:>11.0} {:>8.2}% {:>7.2} {:>7.2} {:>7.2} {:>7} {:>7} {:>7} {:>7} {:>10}",
            r.name,
            r.replica_seconds,
            r.slo_attainment * 100.0,
            r.p50_s,
            r.p95_s,
            r.p99_s,
            r.cold_starts,
            r.scale_events,
            r.served,
            r.dropped,
            ratio
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// `cold_start,policy,at,replicas,ready,queued` per sample.
fn write_timeline(path: &std::path::Path, results: &[Comparison]) -> Result<()> {
    let mut text = String::from("cold_start,policy,at,replicas,ready,queued\n");
    for c in results {
        for r in &c.policies {
            append_samples(&mut text, c.cold_start_s, r);
        }
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn append_samples(text: &mut String, cold_start: f64, r: &Report) {
    use std::fmt::Write as _;
    for s in &r.timeline {
        let _ = writeln!(
            text,
            "{cold_start},{},{},{},{},{}",
            r.name, s.at, s.replicas, s.ready, s.queued
        );
    }
}
