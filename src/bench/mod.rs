//! `swapcast bench`: a load generator that drives a real swapcast process over loopback with real
//! HTTP and WebSocket clients, and reports what users feel — deliveries per second, messages
//! missing, and latency from the trigger's send to each receipt.
//!
//! Every workload runs against swapcast and then against [`baseline`], a minimal broadcast server
//! started the same way, and reports the ratio of the two: absolute numbers on a shared machine
//! drift between runs, ratios measured in one run much less.
//!
//! - [`stats`]    percentiles and rates
//! - [`server`]   the measured servers, started as child processes
//! - [`baseline`] the reference broadcast server

pub mod baseline;
pub mod network;
pub mod server;
pub mod stats;
pub mod writes;

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
    /// Connect to one station's feed, read the greeting, close as a browser does; opens and whole
    /// lifetimes per second.
    Churn(ChurnArgs),
    /// Concurrent REST bookings by many drivers; bookings per second with their events delivered.
    Bookings(BookingsArgs),
    /// A flood of concurrent sign-ins: server memory, and how much slower a request that needs
    /// no password hash gets meanwhile.
    Signins(SigninsArgs),
    /// A network of Gogoro's size: import it, then the all-stations snapshot for one reader and
    /// for many dashboards at once, bookings against the same on 20 stations, and the station list.
    Network(network::NetworkArgs),
    /// The write path at 64 concurrent writers: battery additions, telemetry one per request and
    /// in batches — SQLite, PostgreSQL, and two nodes on one PostgreSQL database.
    Writes(writes::WritesArgs),
    /// The reference server itself (the bench starts it; not for people).
    #[command(hide = true)]
    BaselineServe,
}

/// Whether to measure the baseline too and report ratios.
#[derive(Args, Debug, Clone, Copy)]
pub struct Compare {
    /// Measure swapcast only, without the baseline and the ratios.
    #[arg(long)]
    pub no_baseline: bool,
}

#[derive(Args, Debug)]
pub struct BookingsArgs {
    /// Booking attempts in all (the station gets this many batteries, so all can succeed).
    #[arg(long, default_value_t = 5_000)]
    pub bookings: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Drivers the bookings are spread over, each with a notifications connection.
    #[arg(long, default_value_t = 32)]
    pub drivers: usize,
    /// Stations the batteries and bookings are spread over (a network, not one giant station).
    #[arg(long, default_value_t = 100)]
    pub stations: usize,
}

#[derive(Args, Debug)]
pub struct SigninsArgs {
    /// Sign-in attempts in flight at once (wrong passwords for unknown accounts).
    #[arg(long, default_value_t = 500)]
    pub concurrency: usize,
    /// How long the flood lasts, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    #[command(flatten)]
    pub compare: Compare,
}

#[derive(Args, Debug)]
pub struct ChurnArgs {
    /// Connections in all, each opened and closed.
    #[arg(long, default_value_t = 20_000)]
    pub handshakes: usize,
    /// Connections alive at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    #[command(flatten)]
    pub compare: Compare,
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
    #[command(flatten)]
    pub compare: Compare,
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
        Workload::Bookings(args) => runtime.block_on(bookings(args)),
        Workload::Signins(args) => runtime.block_on(signins(args)),
        Workload::Network(args) => runtime.block_on(network::run(args)),
        Workload::Writes(args) => runtime.block_on(writes::run(args)),
        Workload::BaselineServe => runtime.block_on(baseline::serve()),
    }
}

/// What a workload runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Swapcast,
    Baseline,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Swapcast => "swapcast",
            Target::Baseline => "baseline",
        }
    }

    fn start(self, extra_env: &[(&str, String)]) -> anyhow::Result<BenchServer> {
        match self {
            Target::Swapcast => BenchServer::start(extra_env),
            Target::Baseline => BenchServer::start_baseline(),
        }
    }

    /// The targets of a run: swapcast, then the baseline unless it was declined.
    fn all(compare: Compare) -> Vec<Target> {
        if compare.no_baseline {
            vec![Target::Swapcast]
        } else {
            vec![Target::Swapcast, Target::Baseline]
        }
    }

    /// The station to watch and where its events are made.
    async fn station(self, server: &BenchServer, name: &str) -> anyhow::Result<(i64, TriggerTo)> {
        match self {
            Target::Swapcast => {
                let admin = Admin::with_station(server, name).await?;
                let to = TriggerTo::Rest {
                    base: admin.base,
                    token: admin.token,
                    station: admin.station,
                };
                Ok((admin.station, to))
            }
            Target::Baseline => Ok((1, TriggerTo::Socket { port: server.port })),
        }
    }
}

/// Where one addition's events are made: a REST call on swapcast, a message on the baseline.
#[derive(Clone)]
enum TriggerTo {
    Rest { base: String, token: String, station: i64 },
    Socket { port: u16 },
}

/// A connected trigger.
enum Trigger {
    Rest {
        http: reqwest::Client,
        url: String,
        token: String,
        /// Paced requests in flight, awaited at the end so none fails unseen; each gives how long
        /// it took to be answered (microseconds).
        pending: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
    },
    Socket(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>>),
}

impl Trigger {
    async fn connect(to: TriggerTo) -> anyhow::Result<Trigger> {
        Ok(match to {
            TriggerTo::Rest { base, token, station } => Trigger::Rest {
                http: reqwest::Client::new(),
                url: format!("{base}/api/stations/{station}/batteries"),
                token,
                pending: Vec::new(),
            },
            TriggerTo::Socket { port } => {
                let url = format!("ws://127.0.0.1:{port}/publish");
                let (ws, _) = tokio_tungstenite::connect_async(url).await?;
                Trigger::Socket(Box::new(ws))
            }
        })
    }

    /// Fires addition `k`. Paced, a REST call is not awaited: the deliveries are what is measured.
    async fn fire(&mut self, k: usize, paced: bool) -> anyhow::Result<()> {
        match self {
            Trigger::Rest {
                http,
                url,
                token,
                pending,
            } => {
                let request = http
                    .post(url.as_str())
                    .bearer_auth(token.as_str())
                    .json(&json!({"serial": format!("BENCH-{k}"), "model": "Bench Battery"}))
                    .send();
                let sent = Instant::now();
                let request = async move {
                    request.await?.error_for_status()?;
                    Ok(sent.elapsed().as_micros() as u64)
                };
                if paced {
                    pending.push(tokio::spawn(request));
                } else {
                    request.await?;
                }
            }
            Trigger::Socket(ws) => {
                futures_util::SinkExt::send(&mut **ws, Message::text(k.to_string())).await?;
                if !paced {
                    // One at a time, as swapcast's REST calls are: wait for the answer.
                    ws.next().await.context("the baseline closed its trigger")??;
                }
            }
        }
        Ok(())
    }

    /// Waits for paced requests still in flight; how long each took to be answered.
    async fn settle(self) -> anyhow::Result<Vec<u64>> {
        let mut answered = Vec::new();
        if let Trigger::Rest { pending, .. } = self {
            for request in pending {
                answered.push(request.await??);
            }
        }
        Ok(answered)
    }
}

/// Fires the additions from a thread and runtime of its own, so that a trigger's answer is not
/// queued behind the thousands of subscriber tasks of the generator itself (the same for both
/// targets). Returns when the first addition was sent, and how long each took to be answered
/// (microseconds; a paced trigger on the baseline is not answered).
fn fire_all(
    to: TriggerTo,
    events: usize,
    pace: Option<Duration>,
    sent_at: Arc<Mutex<Vec<Instant>>>,
) -> std::thread::JoinHandle<anyhow::Result<(Instant, Vec<u64>)>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let mut trigger = Trigger::connect(to).await?;
            let started = Instant::now();
            let mut answered = Vec::with_capacity(events);
            for k in 0..events {
                if let Some(pace) = pace {
                    tokio::time::sleep_until((started + pace * k as u32).into()).await;
                }
                let sent = Instant::now();
                sent_at.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(sent);
                trigger.fire(k, pace.is_some()).await?;
                if pace.is_none() {
                    answered.push(sent.elapsed().as_micros() as u64);
                }
            }
            answered.extend(trigger.settle().await?);
            Ok((started, answered))
        })
    })
}

/// `swapcast / baseline`, for a line of ratios.
fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}", ours / theirs)
    } else {
        "n/a".into()
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
    async fn another_station(&self, name: &str) -> anyhow::Result<i64> {
        let station: Value = self
            .http
            .post(format!("{}/api/stations", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"name": name}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        station["id"].as_i64().context("station id")
    }

    async fn with_station(server: &BenchServer, name: &str) -> anyhow::Result<Admin> {
        let mut admin = Admin::sign_in(server).await?;
        admin.station = admin.another_station(name).await?;
        Ok(admin)
    }

    /// Signed in, with no station of its own yet.
    async fn sign_in(server: &BenchServer) -> anyhow::Result<Admin> {
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
        Ok(Admin {
            http,
            base,
            token,
            station: 0,
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
    println!("idle: {} connections held", args.connections);
    let mut per = Vec::new();
    for target in Target::all(args.compare) {
        let server = target.start(&[])?;
        let (station, _trigger) = target.station(&server, "Idle Station").await?;
        // Warm the server up with a few connections so the baseline includes its steady state.
        let mut warm = Vec::new();
        for i in 0..CONNECT_CONCURRENCY {
            warm.push(subscribe(server.port, station, i).await?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(server.pid())?;
        let held = subscribe_many(server.port, station, args.connections).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(server.pid())?;
        let kib = (after.saturating_sub(before)) as f64 / args.connections as f64;
        println!(
            "  {:<9} RSS {before} KiB before, {after} KiB after ({} held, {} warm-up): {kib:.2} KiB per connection",
            target.name(),
            held.len(),
            warm.len()
        );
        per.push(kib);
    }
    if let [ours, theirs] = per[..] {
        println!("  ratio     memory per connection {}", ratio(ours, theirs));
    }
    Ok(())
}

async fn churn(args: ChurnArgs) -> anyhow::Result<()> {
    if args.handshakes == 0 || args.handshakes > 1_000_000 || args.concurrency == 0 || args.concurrency > 1024 {
        bail!("handshakes must be 1..=1000000 and concurrency 1..=1024");
    }
    println!(
        "churn: {} connections at concurrency {}, each to one station's feed: open, read the greeting, \
         close as a browser does (send Close, wait for the server's Close and the end of TCP)",
        args.handshakes, args.concurrency
    );
    let mut rates = Vec::new();
    for target in Target::all(args.compare) {
        let server = target.start(&[])?;
        let (station, _) = target.station(&server, "Churn Station").await?;
        let url = format!("ws://127.0.0.1:{}/ws/stations/{station}/", server.port);
        let result = churn_on(&url, server.port, &args).await;
        println!(
            "  {:<9} {} completed ({} failed)  whole lifetimes/s {:.0}",
            target.name(),
            result.opened.count,
            result.failed,
            result.lifetimes_per_sec(),
        );
        for (what, summary) in [("open", &result.opened), ("lifetime", &result.lifetime)] {
            println!(
                "            {what:<8} latency (ms) p50 {:.1}  p99 {:.1}  max {:.1}",
                ms(summary.p50),
                ms(summary.p99),
                ms(summary.max)
            );
        }
        rates.push(result.lifetimes_per_sec());
    }
    if let [ours, theirs] = rates[..] {
        println!("  ratio     whole lifetimes/s {}", ratio(ours, theirs));
    }
    Ok(())
}

/// One target's churn: how long each connection took to open (to its greeting) and to live its
/// whole life (to the end of TCP after the close handshake).
struct ChurnResult {
    opened: stats::Summary,
    lifetime: stats::Summary,
    failed: usize,
    span: Duration,
}

impl ChurnResult {
    fn lifetimes_per_sec(&self) -> f64 {
        rate(self.lifetime.count, self.span)
    }
}

async fn churn_on(url: &str, port: u16, args: &ChurnArgs) -> ChurnResult {
    let started = Instant::now();
    let mut opened = Vec::with_capacity(args.handshakes);
    let mut lifetime = Vec::with_capacity(args.handshakes);
    let mut failed = 0usize;
    let mut attempts = futures_util::stream::iter((0..args.handshakes).map(|i| lifecycle(url, port, i)))
        .buffer_unordered(args.concurrency);
    while let Some(result) = attempts.next().await {
        match result {
            Ok((open, whole)) => {
                opened.push(open.as_micros() as u64);
                lifetime.push(whole.as_micros() as u64);
            }
            Err(_) => failed += 1,
        }
    }
    ChurnResult {
        opened: summarize(opened),
        lifetime: summarize(lifetime),
        failed,
        span: started.elapsed(),
    }
}

/// One connection's life as a browser lives it: the upgrade, the greeting, then Close — and the
/// connection counts as done only when the server's Close has come and the server has ended TCP
/// (a server that is slow to let go costs the client a socket, and is measured).
async fn lifecycle(url: &str, port: u16, i: usize) -> anyhow::Result<(Duration, Duration)> {
    use tokio::io::AsyncReadExt;
    let began = Instant::now();
    let stream = connect_from(i, port).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    ws.next().await.context("closed before the greeting")??;
    let opened = began.elapsed();
    ws.close(None).await?;
    // Frames sent before the server saw the Close (the snapshot) may come first.
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("the connection ended without the server's Close"),
        }
    }
    let mut rest = [0u8; 64];
    if ws.get_mut().read(&mut rest).await? != 0 {
        bail!("bytes after the server's Close");
    }
    Ok((opened, began.elapsed()))
}

/// A TCP connection to the server from the `i`-th loopback source address.
async fn connect_from(i: usize, port: u16) -> anyhow::Result<tokio::net::TcpStream> {
    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCE_ADDRESSES) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    Ok(socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?)
}

/// Opens one subscriber from the `i`-th loopback source address and reads its greeting and snapshot.
async fn subscribe(
    port: u16,
    station: i64,
    i: usize,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let stream = connect_from(i, port).await?;
    let url = format!("ws://127.0.0.1:{port}/ws/stations/{station}/");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    for _ in 0..2 {
        ws.next().await.context("closed during the greeting")??;
    }
    Ok(ws)
}

/// Opens `n` subscribers of `station`, [`CONNECT_CONCURRENCY`] at a time.
async fn subscribe_many(
    port: u16,
    station: i64,
    n: usize,
) -> anyhow::Result<Vec<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>> {
    futures_util::stream::iter((0..n).map(|i| subscribe(port, station, i)))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One target's fan-out.
struct FanoutResult {
    received: usize,
    total: usize,
    span: Duration,
    latency: stats::Summary,
    /// How long each trigger took to be answered.
    answered: stats::Summary,
}

impl FanoutResult {
    fn deliveries_per_sec(&self) -> f64 {
        rate(self.received, self.span)
    }
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    if args.subscribers == 0 || args.subscribers > MAX_SUBSCRIBERS || args.events == 0 || args.events > MAX_EVENTS {
        bail!("subscribers must be 1..={MAX_SUBSCRIBERS} and events 1..={MAX_EVENTS}");
    }
    println!(
        "fanout: {} subscribers × {} additions ({} events){}",
        args.subscribers,
        args.events,
        args.events * 2,
        args.rate.map(|r| format!(" at {r} additions/s")).unwrap_or_default()
    );
    let mut results = Vec::new();
    for target in Target::all(args.compare) {
        let result = fanout_on(target, &args).await?;
        println!(
            "  {:<9} delivered {} of {} ({} missing) in {:.2} s: {:.0} deliveries/s",
            target.name(),
            result.received,
            result.total,
            result.total - result.received,
            result.span.as_secs_f64(),
            result.deliveries_per_sec()
        );
        let l = &result.latency;
        println!(
            "  {:<9} latency (ms) p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  (trigger sent → battery_added received, {} samples)",
            "",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.max),
            l.count
        );
        let a = &result.answered;
        if a.count > 0 {
            println!(
                "  {:<9} trigger answered (ms) p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
                "",
                ms(a.p50),
                ms(a.p90),
                ms(a.p99),
                ms(a.max)
            );
        }
        results.push(result);
    }
    if let [ours, theirs] = &results[..] {
        println!(
            "  ratio     deliveries/s {}  p99 latency {}",
            ratio(ours.deliveries_per_sec(), theirs.deliveries_per_sec()),
            ratio(ours.latency.p99 as f64, theirs.latency.p99 as f64)
        );
    }
    Ok(())
}

async fn fanout_on(target: Target, args: &FanoutArgs) -> anyhow::Result<FanoutResult> {
    let server = target.start(&[("SWAPCAST_RATE_LIMIT", "1000".into())])?;
    let (station, trigger) = target.station(&server, "Bench Station").await?;

    let sockets = subscribe_many(server.port, station, args.subscribers).await?;

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
                    let text = match next {
                        Ok(Some(Ok(Message::Text(text)))) => text,
                        // The server's heartbeat pings (answered by the client library).
                        Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
                        _ => break,
                    };
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
                // The socket is kept open until every subscriber is done: a reader that hung up
                // early would load the server while the last events still go out to the others.
                (me, ws)
            })
        })
        .collect();

    let pace = args.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(1.0 / r));
    let trigger = fire_all(trigger, args.events, pace, sent_at.clone());

    let mut readers_done = Vec::with_capacity(readers.len());
    let mut sockets = Vec::with_capacity(readers.len());
    for reader in readers {
        let (me, ws) = reader.await?;
        readers_done.push(me);
        sockets.push(ws);
    }
    drop(sockets);
    let (started, answered) = trigger
        .join()
        .map_err(|_| anyhow::anyhow!("the trigger thread panicked"))??;
    let mut latencies = Vec::new();
    let (mut received, mut last) = (0usize, started);
    for me in readers_done {
        received += me.received;
        latencies.extend(me.latencies);
        last = last.max(me.last_receipt.unwrap_or(started));
    }
    Ok(FanoutResult {
        received,
        total: args.subscribers * expected,
        span: last - started,
        latency: summarize(latencies),
        answered: summarize(answered),
    })
}

/// A subscriber of every station: reads the greeting and one snapshot per station.
async fn subscribe_all(
    port: u16,
    stations: usize,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let stream = connect_from(0, port).await?;
    let url = format!("ws://127.0.0.1:{port}/ws/stations/");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    for _ in 0..=stations {
        ws.next().await.context("closed during the greeting")??;
    }
    Ok(ws)
}

/// A driver of the bookings workload: signed in, with a notifications connection.
struct Driver {
    token: String,
    notifications: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
}

async fn bookings(args: BookingsArgs) -> anyhow::Result<()> {
    if !(1..=100_000).contains(&args.bookings)
        || !(1..=1024).contains(&args.concurrency)
        || !(1..=1000).contains(&args.drivers)
        || !(1..=1000).contains(&args.stations)
    {
        bail!("bookings must be 1..=100000, concurrency 1..=1024, drivers and stations 1..=1000");
    }
    let server = BenchServer::start(&[
        ("SWAPCAST_RATE_LIMIT", "1000".into()),
        // A few drivers make thousands of bookings: the per-driver limit is not what is measured.
        ("SWAPCAST_MAX_ACTIVE_BOOKINGS", "0".into()),
    ])?;
    let admin = Admin::with_station(&server, "Bookings Station 0").await?;
    let mut stations = vec![admin.station];
    for n in 1..args.stations {
        stations.push(admin.another_station(&format!("Bookings Station {n}")).await?);
    }

    // The stock: one battery per attempt, spread over the stations, added concurrently.
    let added = futures_util::stream::iter((0..args.bookings).map(|k| {
        let (admin, station) = (&admin, stations[k % stations.len()]);
        async move {
            admin
                .http
                .post(format!("{}/api/stations/{station}/batteries", admin.base))
                .bearer_auth(&admin.token)
                .json(&json!({"serial": format!("STOCK-{k}"), "model": "Bench Battery"}))
                .send()
                .await?
                .error_for_status()?;
            Ok::<_, anyhow::Error>(())
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<_>>()
    .await;
    added.into_iter().collect::<anyhow::Result<Vec<_>>>()?;

    let mut drivers = Vec::with_capacity(args.drivers);
    for d in 0..args.drivers {
        drivers.push(driver(&admin, server.port, d).await?);
    }
    // Read while booking, as a dashboard and the drivers' phones would: a reader that waits
    // until the end is a slow consumer, and the server closes it (1013).
    let watcher = tokio::spawn(count_until_quiet(
        subscribe_all(server.port, stations.len()).await?,
        "\"battery_booked\"",
    ));
    let (tokens, phones): (Vec<String>, Vec<_>) = drivers
        .into_iter()
        .map(|d| {
            (
                d.token,
                tokio::spawn(count_until_quiet(d.notifications, "\"booking_confirmed\"")),
            )
        })
        .unzip();

    eprintln!(
        "bookings: {} batteries and {} drivers ready; booking",
        args.bookings, args.drivers
    );
    let started = Instant::now();
    let outcomes: Vec<(u16, Duration)> = futures_util::stream::iter((0..args.bookings).map(|i| {
        let (admin, token, station) = (&admin, &tokens[i % tokens.len()], stations[i % stations.len()]);
        async move {
            let began = Instant::now();
            (book_once(admin, token, station).await, began.elapsed())
        }
    }))
    .buffer_unordered(args.concurrency)
    .collect()
    .await;
    let span = started.elapsed();

    let booked = outcomes.iter().filter(|(status, _)| *status == 201).count();
    let mut statuses = std::collections::BTreeMap::new();
    for (status, _) in &outcomes {
        *statuses.entry(*status).or_insert(0usize) += 1;
    }
    let latency = summarize(outcomes.iter().map(|(_, d)| d.as_micros() as u64).collect());

    // Their events: battery_booked to the stations' watcher, booking_confirmed to each driver.
    let station_events = watcher.await?;
    let mut confirmations = 0;
    for phone in phones {
        confirmations += phone.await?;
    }

    println!(
        "bookings: {} attempts at concurrency {} by {} drivers at {} stations",
        args.bookings, args.concurrency, args.drivers, args.stations
    );
    println!(
        "  booked         {booked} in {:.2} s: {:.0} bookings/s",
        span.as_secs_f64(),
        rate(booked, span)
    );
    println!("  statuses       {statuses:?}");
    println!(
        "  latency (ms)   p50 {:.1}  p99 {:.1}  max {:.1}",
        ms(latency.p50),
        ms(latency.p99),
        ms(latency.max)
    );
    println!(
        "  delivered      battery_booked {station_events} of {booked}, booking_confirmed {confirmations} of {booked}"
    );
    Ok(())
}

async fn driver(admin: &Admin, port: u16, d: usize) -> anyhow::Result<Driver> {
    let email = format!("driver{d}@bench.local");
    let password = "bench-driver-password";
    admin
        .http
        .post(format!("{}/api/auth/register", admin.base))
        .json(&json!({"email": email, "password": password, "display_name": format!("Driver {d}")}))
        .send()
        .await?
        .error_for_status()?;
    let session: Value = admin
        .http
        .post(format!("{}/api/auth/login", admin.base))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = session["access_token"].as_str().context("no access token")?.to_owned();
    let stream = connect_from(d + 1, port).await?;
    let url = format!("ws://127.0.0.1:{port}/ws/notifications/?token={token}");
    let (mut notifications, _) = tokio_tungstenite::client_async(url, stream).await?;
    notifications.next().await.context("closed before the greeting")??;
    Ok(Driver { token, notifications })
}

/// Counts messages containing `marker` until the stream closes or stays quiet for 5 s.
async fn count_until_quiet(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    marker: &'static str,
) -> usize {
    let mut seen = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains(marker) => seen += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                // A watcher the server closed missed what followed: say why.
                eprintln!("a watcher was closed after {seen} {marker}: {frame:?}");
                return seen;
            }
            Ok(Some(Ok(_))) => {}
            _ => return seen,
        }
    }
}

/// One booking by the driver holding `token` at `station`: the answer's status, or 0 for none.
async fn book_once(admin: &Admin, token: &str, station: i64) -> u16 {
    admin
        .http
        .post(format!("{}/api/bookings", admin.base))
        .bearer_auth(token)
        .json(&json!({"station_id": station}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// `GET /api/stations` latencies (µs) until `stop`, one request after another.
async fn read_latencies(http: reqwest::Client, url: String, stop: Instant) -> anyhow::Result<Vec<u64>> {
    let mut samples = Vec::new();
    while Instant::now() < stop {
        let started = Instant::now();
        http.get(&url).send().await?.error_for_status()?.bytes().await?;
        samples.push(started.elapsed().as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(samples)
}

async fn signins(args: SigninsArgs) -> anyhow::Result<()> {
    if !(1..=5_000).contains(&args.concurrency) || !(1..=600).contains(&args.seconds) {
        bail!("concurrency must be 1..=5000, seconds 1..=600");
    }
    // No throttle: every attempt is for another unknown account, so each costs a hash.
    let server = BenchServer::start(&[("SWAPCAST_LOGIN_ATTEMPTS", "0".into())])?;
    let base = format!("http://127.0.0.1:{}", server.port);
    let stations = format!("{base}/api/stations");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let rss_idle = rss_kib(server.pid())?;
    let idle =
        summarize(read_latencies(http.clone(), stations.clone(), Instant::now() + Duration::from_secs(3)).await?);

    let stop = Instant::now() + Duration::from_secs(args.seconds);
    let peak = Arc::new(Mutex::new(rss_idle));
    let sampler = {
        let (peak, pid) = (peak.clone(), server.pid());
        tokio::spawn(async move {
            while Instant::now() < stop {
                if let Ok(rss) = rss_kib(pid) {
                    let mut peak = peak.lock().unwrap_or_else(|p| p.into_inner());
                    *peak = (*peak).max(rss);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let answers = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, usize>::new()));
    let flood = (0..args.concurrency).map(|i| {
        let (http, base, answers) = (http.clone(), base.clone(), answers.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let body = json!({"email": format!("flood{i}-{n}@bench.local"), "password": "not the password"});
                n += 1;
                let status = match http.post(format!("{base}/api/auth/login")).json(&body).send().await {
                    Ok(reply) => reply.status().as_u16(),
                    Err(_) => 0,
                };
                *answers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(status)
                    .or_default() += 1;
            }
        })
    });
    let flood: Vec<_> = flood.collect();
    let during = summarize(read_latencies(http.clone(), stations, stop).await?);
    for task in flood {
        task.await?;
    }
    sampler.await?;
    let peak = *peak.lock().unwrap_or_else(|p| p.into_inner());
    let answers = answers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "signins: {} concurrent for {} s; answers by status {answers:?} (0 = no answer within 30 s)",
        args.concurrency, args.seconds
    );
    println!(
        "  server RSS     idle {} KiB, peak during the flood {} KiB",
        rss_idle, peak
    );
    println!(
        "  GET /api/stations  idle p50 {:.2} ms p99 {:.2} ms; during p50 {:.2} ms p99 {:.2} ms ({} requests)",
        ms(idle.p50),
        ms(idle.p99),
        ms(during.p50),
        ms(during.p99),
        during.count
    );
    println!(
        "  ratio (during / idle)  p50 {:.2}  p99 {:.2}   target: within 2x",
        during.p50 as f64 / idle.p50.max(1) as f64,
        during.p99 as f64 / idle.p99.max(1) as f64
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_ours_over_theirs() {
        assert_eq!(ratio(80.0, 100.0), "0.80");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }

    #[test]
    fn the_baseline_can_be_declined() {
        assert_eq!(Target::all(Compare { no_baseline: true }), vec![Target::Swapcast]);
        assert_eq!(
            Target::all(Compare { no_baseline: false }),
            vec![Target::Swapcast, Target::Baseline]
        );
    }
}
