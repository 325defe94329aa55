//! `swapcast bench writes`: the write path at 64 concurrent writers, every guarantee on (durable
//! commits, exclusive transitions, the event log, delivery) — battery additions, telemetry one
//! battery per request, and telemetry in batches of a thousand readings — on SQLite, on
//! PostgreSQL, and on two nodes sharing one PostgreSQL database, side by side in one run. A watcher
//! of the all-stations feed counts the events, so a write counts only with its events delivered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use diesel::{Connection, RunQueryDsl};
use serde_json::{json, Value};

use super::server::{create_admin, BenchServer};
use super::stats::{ms, rate, summarize};
use super::{count_until_quiet, subscribe_all, Admin};

#[derive(Args, Debug)]
pub struct WritesArgs {
    /// How long each workload runs, seconds.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Stations the writes are spread over.
    #[arg(long, default_value_t = 100)]
    pub stations: usize,
    /// The PostgreSQL server of the PostgreSQL runs (a fresh database is created there and dropped
    /// after); `none` measures SQLite only.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pub postgres: String,
    /// The NATS server that joins the two PostgreSQL nodes into one cluster.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// Readings per `POST /api/telemetry`.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

/// One deployment measured: its name, and the base URLs of its nodes.
struct Deployment {
    name: &'static str,
    servers: Vec<BenchServer>,
    /// Dropped after the servers.
    _database: Option<PgDatabase>,
}

/// What one workload achieved.
struct Outcome {
    done: usize,
    others: std::collections::BTreeMap<u16, usize>,
    span: Duration,
    latencies: Vec<u64>,
    delivered: usize,
    expected: usize,
}

pub async fn run(args: WritesArgs) -> anyhow::Result<()> {
    if !(1..=120).contains(&args.seconds)
        || !(1..=1024).contains(&args.concurrency)
        || !(1..=10_000).contains(&args.stations)
        || !(1..=1000).contains(&args.batch)
    {
        bail!("seconds must be 1..=120, concurrency 1..=1024, stations 1..=10000, batch 1..=1000");
    }
    let mut table = Vec::new();
    for deployment in ["SQLite", "PostgreSQL", "PostgreSQL, two nodes"] {
        if deployment != "SQLite" && args.postgres == "none" {
            continue;
        }
        let deployment = start(deployment, &args)?;
        let rows = measure(&deployment, &args).await?;
        table.push((deployment.name, rows));
        drop(deployment);
    }
    println!(
        "\nwrites: {} s each, {} writers in flight, {} stations",
        args.seconds, args.concurrency, args.stations
    );
    for (name, rows) in &table {
        println!("  {name}");
        for (workload, outcome) in rows {
            let latency = summarize(outcome.latencies.clone());
            println!(
                "    {workload:<22} {:>8.0}/s  ({} in {:.1} s; other statuses {:?}; p50 {:.1} ms, p99 {:.1} ms; events delivered {} of {})",
                rate(outcome.done, outcome.span),
                outcome.done,
                outcome.span.as_secs_f64(),
                outcome.others,
                ms(latency.p50),
                ms(latency.p99),
                outcome.delivered,
                outcome.expected,
            );
        }
    }
    Ok(())
}

fn start(name: &'static str, args: &WritesArgs) -> anyhow::Result<Deployment> {
    // Writes in flight are what is measured, not the per-connection message limit.
    let mut env = vec![("SWAPCAST_RATE_LIMIT", "100000".to_owned())];
    if name == "SQLite" {
        let server = BenchServer::start(&env)?;
        return Ok(Deployment {
            name,
            servers: vec![server],
            _database: None,
        });
    }
    let database = PgDatabase::create(&args.postgres)?;
    create_admin(&database.url)?;
    let nodes = if name == "PostgreSQL" { 1 } else { 2 };
    env.push(("SWAPCAST_JWT_SECRET", crate::auth::tokens::random_secret()));
    if nodes > 1 {
        env.push(("SWAPCAST_NATS_URL", args.nats.clone()));
    }
    let mut servers = Vec::new();
    for node in 0..nodes {
        let mut env = env.clone();
        env.push(("SWAPCAST_NODE_ID", format!("bench-{node}")));
        servers.push(BenchServer::serve(&database.url, &env, None)?);
    }
    Ok(Deployment {
        name,
        servers,
        _database: Some(database),
    })
}

async fn measure(deployment: &Deployment, args: &WritesArgs) -> anyhow::Result<Vec<(&'static str, Outcome)>> {
    let first = &deployment.servers[0];
    let admin = Admin::with_station(first, "Writes Station 0").await?;
    let mut stations = vec![admin.station];
    for n in 1..args.stations {
        stations.push(admin.another_station(&format!("Writes Station {n}")).await?);
    }
    let bases: Vec<String> = deployment
        .servers
        .iter()
        .map(|s| format!("http://127.0.0.1:{}", s.port))
        .collect();
    eprintln!("writes: {} ready; adding batteries", deployment.name);
    let mut rows = Vec::new();

    // Battery additions: each one battery_added and one inventory_update.
    let watcher = tokio::spawn(count_until_quiet(
        subscribe_all(first.port, stations.len()).await?,
        "\"battery_added\"",
    ));
    let mut serials: Vec<(i64, String)> = Vec::new();
    let (outcome, added) = flood(args, &bases, |worker, k, base| {
        let station = stations[(worker * 7919 + k) % stations.len()];
        let serial = format!("W-{worker}-{k}");
        let request = admin
            .http
            .post(format!("{base}/api/stations/{station}/batteries"))
            .bearer_auth(&admin.token)
            .json(&json!({"serial": serial, "model": "Bench Battery"}));
        (request, 201)
    })
    .await?;
    for body in added {
        serials.push((
            body["id"].as_i64().context("battery id")?,
            body["serial"].as_str().context("serial")?.to_owned(),
        ));
    }
    let delivered = watcher.await?;
    rows.push((
        "battery additions",
        Outcome {
            delivered,
            expected: outcome.done,
            ..outcome
        },
    ));

    // Telemetry one battery per request: each one battery_updated and one inventory_update.
    eprintln!("writes: {}: telemetry, one reading per request", deployment.name);
    let watcher = tokio::spawn(count_until_quiet(
        subscribe_all(first.port, stations.len()).await?,
        "\"battery_updated\"",
    ));
    let (outcome, _) = flood(args, &bases, |worker, k, base| {
        let (id, _) = &serials[(worker * 7919 + k * 31) % serials.len()];
        // Below the charged threshold, and a new value each time (an unchanged reading is no change).
        let soc = 1 + (k % 90);
        let request = admin
            .http
            .patch(format!("{base}/api/batteries/{id}"))
            .bearer_auth(&admin.token)
            .json(&json!({"soc": soc}));
        (request, 200)
    })
    .await?;
    let delivered = watcher.await?;
    rows.push((
        "telemetry, 1 per request",
        Outcome {
            delivered,
            expected: outcome.done,
            ..outcome
        },
    ));

    // Telemetry in batches: one battery_updated per battery that changed.
    eprintln!(
        "writes: {}: telemetry, {} readings per request",
        deployment.name, args.batch
    );
    let watcher = tokio::spawn(count_until_quiet(
        subscribe_all(first.port, stations.len()).await?,
        "\"battery_updated\"",
    ));
    let batch = args.batch;
    // Each battery's readings count up, so that every reading changes its battery (an unchanged
    // reading is applied and writes nothing: a workload where some readings repeat would measure
    // less work, and how many repeat would depend on how many batteries the additions made).
    let readings_of: Vec<AtomicUsize> = serials.iter().map(|_| AtomicUsize::new(0)).collect();
    let (outcome, answers) = flood(args, &bases, |worker, k, base| {
        let start = (worker * 7919 + k * batch) % serials.len();
        let readings: Vec<Value> = (0..batch)
            .map(|i| {
                let at = (start + i) % serials.len();
                let (_, serial) = &serials[at];
                let nth = readings_of[at].fetch_add(1, Ordering::Relaxed);
                json!({"serial": serial, "soc": 1 + (nth % 90)})
            })
            .collect();
        let request = admin
            .http
            .post(format!("{base}/api/telemetry"))
            .bearer_auth(&admin.token)
            .json(&json!({"readings": readings}));
        (request, 200)
    })
    .await?;
    let sum = |field: &str| answers.iter().filter_map(|a| a[field].as_u64()).sum::<u64>() as usize;
    let delivered = watcher.await?;
    rows.push((
        "telemetry, batched",
        Outcome {
            done: sum("accepted"),
            delivered,
            expected: sum("changed"),
            ..outcome
        },
    ));
    Ok(rows)
}

/// `args.concurrency` workers, each sending one request after another for `args.seconds` (worker
/// w to node w mod nodes); the bodies of the answers with the wanted status are returned.
async fn flood<'a>(
    args: &WritesArgs,
    bases: &'a [String],
    request: impl Fn(usize, usize, &'a str) -> (reqwest::RequestBuilder, u16) + Sync,
) -> anyhow::Result<(Outcome, Vec<Value>)> {
    let stop = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let request = &request;
    let workers = (0..args.concurrency).map(|worker| async move {
        let base = bases[worker % bases.len()].as_str();
        let mut mine = (0usize, std::collections::BTreeMap::new(), Vec::new(), Vec::new());
        let mut k = 0;
        while Instant::now() < stop {
            let (builder, wanted) = request(worker, k, base);
            k += 1;
            let began = Instant::now();
            let status = match builder.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if status == wanted {
                        mine.3.push(response.json::<Value>().await.unwrap_or(Value::Null));
                    }
                    status
                }
                Err(_) => 0,
            };
            mine.2.push(began.elapsed().as_micros() as u64);
            if status == wanted {
                mine.0 += 1;
            } else {
                *mine.1.entry(status).or_insert(0usize) += 1;
            }
        }
        mine
    });
    let results = futures_util::future::join_all(workers).await;
    let span = started.elapsed();
    let mut outcome = Outcome {
        done: 0,
        others: Default::default(),
        span,
        latencies: Vec::new(),
        delivered: 0,
        expected: 0,
    };
    let mut bodies = Vec::new();
    for (done, others, latencies, mut answers) in results {
        outcome.done += done;
        for (status, n) in others {
            *outcome.others.entry(status).or_insert(0) += n;
        }
        outcome.latencies.extend(latencies);
        bodies.append(&mut answers);
    }
    Ok((outcome, bodies))
}

/// A fresh PostgreSQL database for one run, dropped afterwards.
struct PgDatabase {
    server: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(server: &str) -> anyhow::Result<PgDatabase> {
        let server = server.trim_end_matches('/').to_owned();
        let mut conn = diesel::PgConnection::establish(&format!("{server}/postgres")).with_context(|| {
            format!(
                "PostgreSQL at {} (give --postgres none to skip)",
                crate::db::redact(&server)
            )
        })?;
        let name = format!(
            "swapcast_bench_{}",
            &crate::auth::tokens::random_secret()[..12].to_lowercase()
        );
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn)?;
        let url = format!("{server}/{name}");
        Ok(PgDatabase { server, name, url })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut conn) = diesel::PgConnection::establish(&format!("{}/postgres", self.server)) {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).execute(&mut conn);
        }
    }
}
