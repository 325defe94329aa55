//! `swapcast bench`: a load generator that drives a real swapcast process over loopback with real
//! HTTP and WebSocket clients, and reports what users feel — deliveries per second, messages
//! missing, and latency from the trigger's send to each receipt.
//!
//! - [`stats`]  percentiles and rates
//! - [`server`] the measured server, started as a child process

pub mod server;
pub mod stats;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

use server::{BenchServer, ADMIN_EMAIL, ADMIN_PASSWORD};
use stats::{ms, rate, summarize};

#[derive(Subcommand, Debug)]
pub enum Workload {
    /// N subscribers of one station; K battery additions through the REST API as an admin.
    Fanout(FanoutArgs),
    /// C idle connections held open; the server's memory per connection.
    Idle(IdleArgs),
    /// Connect, read the first message, close — at a concurrency; handshakes per second.
    Churn(ChurnArgs),
}

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
}

#[derive(Args, Debug)]
pub struct ChurnArgs {
    /// Handshakes in all.
    #[arg(long, default_value_t = 20_000)]
    pub handshakes: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// WebSocket subscribers of the station.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Battery additions (each produces two events: battery_added and inventory_update).
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    /// Additions per second; without it, one at a time as fast as the API answers.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// Upper bounds so every loop ends: connections, events, and how long to wait for stragglers.
const MAX_SUBSCRIBERS: usize = 19_000;
const MAX_EVENTS: usize = 100_000;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Sockets are spread over this many loopback source addresses (one address runs out of
/// ephemeral ports near 28,000 connections).
const SOURCE_ADDRESSES: usize = 200;
const CONNECT_CONCURRENCY: usize = 64;

pub fn run(workload: Workload) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match workload {
        Workload::Fanout(args) => runtime.block_on(fanout(args)),
        Workload::Idle(args) => runtime.block_on(idle(args)),
        Workload::Churn(args) => runtime.block_on(churn(args)),
    }
}

struct Subscriber {
    /// Latencies of `battery_added` receipts, microseconds.
    latencies: Vec<u64>,
    received: usize,
    last_receipt: Option<Instant>,
}

/// The bench's admin, signed in, and the station the workload uses.
struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
    station: i64,
}

impl Admin {
    async fn with_station(server: &BenchServer, name: &str) -> anyhow::Result<Admin> {
        let base = format!("http://127.0.0.1:{}", server.port);
        let http = reqwest::Client::new();
        let session: Value = http
            .post(format!("{base}/api/auth/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = session["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("no access token")?;
        let station: Value = http
            .post(format!("{base}/api/stations"))
            .bearer_auth(&token)
            .json(&json!({"name": name}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let station = station["id"].as_i64().context("station id")?;
        Ok(Admin {
            http,
            base,
            token,
            station,
        })
    }
}

/// The resident memory of a process in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.connections > MAX_SUBSCRIBERS {
        bail!("connections must be 1..={MAX_SUBSCRIBERS}");
    }
    let server = BenchServer::start(&[])?;
    let Admin { station, .. } = Admin::with_station(&server, "Idle Station").await?;
    // Warm the server up with a few connections so the baseline includes its steady state.
    let mut warm = Vec::new();
    for i in 0..CONNECT_CONCURRENCY {
        warm.push(subscribe(server.port, station, i).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(server.pid())?;
    let mut held = Vec::with_capacity(args.connections);
    let mut pending = futures_util::stream::iter((0..args.connections).map(|i| subscribe(server.port, station, i)))
        .buffer_unordered(CONNECT_CONCURRENCY);
    while let Some(socket) = pending.next().await {
        held.push(socket?);
    }
    drop(pending);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(server.pid())?;
    let per = (after.saturating_sub(before)) as f64 / args.connections as f64;
    println!("idle: {} connections held (plus {} warm-up)", held.len(), warm.len());
    println!("  server RSS     {before} KiB before, {after} KiB after");
    println!("  per connection {per:.2} KiB");
    Ok(())
}

async fn churn(args: ChurnArgs) -> anyhow::Result<()> {
    if args.handshakes == 0 || args.handshakes > 1_000_000 || args.concurrency == 0 || args.concurrency > 1024 {
        bail!("handshakes must be 1..=1000000 and concurrency 1..=1024");
    }
    let server = BenchServer::start(&[])?;
    let port = server.port;
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(args.handshakes);
    let mut failed = 0usize;
    let mut attempts = futures_util::stream::iter((0..args.handshakes).map(|i| async move {
        let began = Instant::now();
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCE_ADDRESSES) as u8);
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        let stream = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        let (mut ws, _) =
            tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/ws/stations/"), stream).await?;
        ws.next().await.context("closed before the greeting")??;
        let elapsed = began.elapsed();
        // The measurement is the handshake; how the close goes does not change it.
        let _ = ws.close(None).await;
        Ok::<_, anyhow::Error>(elapsed)
    }))
    .buffer_unordered(args.concurrency);
    while let Some(result) = attempts.next().await {
        match result {
            Ok(elapsed) => latencies.push(elapsed.as_micros() as u64),
            Err(_) => failed += 1,
        }
    }
    let span = started.elapsed();
    let summary = summarize(latencies);
    println!(
        "churn: {} handshakes at concurrency {}",
        args.handshakes, args.concurrency
    );
    println!("  succeeded      {} ({failed} failed)", summary.count);
    println!("  handshakes/s   {:.0}", rate(summary.count, span));
    println!(
        "  latency (ms)   p50 {:.1}  p99 {:.1}  max {:.1}",
        ms(summary.p50),
        ms(summary.p99),
        ms(summary.max)
    );
    Ok(())
}

/// Opens one subscriber from the `i`-th loopback source address and reads its greeting and snapshot.
async fn subscribe(
    port: u16,
    station: i64,
    i: usize,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCE_ADDRESSES) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let url = format!("ws://127.0.0.1:{port}/ws/stations/{station}/");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    for _ in 0..2 {
        ws.next().await.context("closed during the greeting")??;
    }
    Ok(ws)
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    if args.subscribers == 0 || args.subscribers > MAX_SUBSCRIBERS || args.events == 0 || args.events > MAX_EVENTS {
        bail!("subscribers must be 1..={MAX_SUBSCRIBERS} and events 1..={MAX_EVENTS}");
    }
    let server = BenchServer::start(&[("SWAPCAST_RATE_LIMIT", "1000".into())])?;
    let Admin {
        http,
        base,
        token,
        station,
    } = Admin::with_station(&server, "Bench Station").await?;

    let mut sockets = Vec::with_capacity(args.subscribers);
    let mut pending = futures_util::stream::iter((0..args.subscribers).map(|i| subscribe(server.port, station, i)))
        .buffer_unordered(CONNECT_CONCURRENCY);
    while let Some(socket) = pending.next().await {
        sockets.push(socket?);
    }
    drop(pending);

    let sent_at: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::with_capacity(args.events)));
    let expected = args.events * 2;
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let sent_at = sent_at.clone();
            tokio::spawn(async move {
                let mut me = Subscriber {
                    latencies: Vec::new(),
                    received: 0,
                    last_receipt: None,
                };
                let mut added = 0usize;
                while me.received < expected {
                    let next = tokio::time::timeout(DRAIN_TIMEOUT, ws.next()).await;
                    let Ok(Some(Ok(Message::Text(text)))) = next else { break };
                    let now = Instant::now();
                    me.received += 1;
                    me.last_receipt = Some(now);
                    if text.contains("\"battery_added\"") {
                        // A poisoned lock means the trigger loop panicked; the sample is lost, not the count.
                        let sent = sent_at.lock().ok().and_then(|s| s.get(added).copied());
                        if let Some(sent) = sent {
                            me.latencies.push(now.duration_since(sent).as_micros() as u64);
                        }
                        added += 1;
                    }
                }
                me
            })
        })
        .collect();

    let started = Instant::now();
    let pace = args.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
    for k in 0..args.events {
        if let Some(pace) = pace {
            let due = started + pace * k as u32;
            tokio::time::sleep_until(due.into()).await;
        }
        sent_at
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .push(Instant::now());
        let request = http
            .post(format!("{base}/api/stations/{station}/batteries"))
            .bearer_auth(&token)
            .json(&json!({"serial": format!("BENCH-{k}"), "model": "Bench Battery"}))
            .send();
        if pace.is_some() {
            // Paced: fire and go on; the response is not what is measured, the deliveries are.
            drop(tokio::spawn(request));
        } else {
            request.await?.error_for_status()?;
        }
    }

    let mut latencies = Vec::new();
    let (mut received, mut last) = (0usize, started);
    for reader in readers {
        let me = reader.await?;
        received += me.received;
        latencies.extend(me.latencies);
        last = last.max(me.last_receipt.unwrap_or(started));
    }
    let total = args.subscribers * expected;
    let summary = summarize(latencies);
    println!(
        "fanout: {} subscribers × {} additions ({} events)",
        args.subscribers, args.events, expected
    );
    println!("  delivered      {received} of {total} ({} missing)", total - received);
    println!("  span           {:.2} s", (last - started).as_secs_f64());
    println!("  deliveries/s   {:.0}", rate(received, last - started));
    println!(
        "  latency (ms)   p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  (trigger sent → battery_added received, {} samples)",
        ms(summary.p50),
        ms(summary.p90),
        ms(summary.p99),
        ms(summary.max),
        summary.count
    );
    println!("  server pid     {}", server.pid());
    Ok(())
}
