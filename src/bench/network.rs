//! A made-up network of real size, written as the CSV files `swapcast import` reads: Gogoro's by
//! default (12,000 stations, 1.1 million batteries). Deterministic, so two runs load the same
//! network.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::server::BenchServer;
use super::stats::{ms, rate, summarize, Summary};
use super::{book_once, connect_from, count_until_quiet, driver, rss_kib, subscribe_all, Admin, DRAIN_TIMEOUT};

const DISTRICTS: [&str; 12] = [
    "Zhongzheng",
    "Da'an",
    "Xinyi",
    "Songshan",
    "Neihu",
    "Shilin",
    "Beitou",
    "Wanhua",
    "Banqiao",
    "Sanchong",
    "Taoyuan",
    "Hsinchu",
];
const STREETS: [&str; 8] = [
    "Zhongxiao E. Rd",
    "Xinyi Rd",
    "Heping E. Rd",
    "Roosevelt Rd",
    "Nanjing E. Rd",
    "Minsheng Rd",
    "Wenhua Rd",
    "Zhongshan N. Rd",
];
const MODELS: [&str; 3] = [
    "Gogoro Smartscooter Battery V2",
    "Gogoro Smartscooter Battery V3",
    "GoShare Pack",
];

/// The name of the `i`th station (unique, so batteries can name it).
pub fn station_name(i: usize) -> String {
    format!("GoStation {:05} {}", i + 1, DISTRICTS[i % DISTRICTS.len()])
}

/// Writes `stations.csv` and `batteries.csv` into `dir`; returns their paths.
pub fn generate(dir: &Path, stations: usize, batteries: usize) -> anyhow::Result<(PathBuf, PathBuf)> {
    anyhow::ensure!(stations > 0 || batteries == 0, "batteries need a station to be at");
    std::fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(12_000);
    let stations_path = dir.join("stations.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&stations_path)?);
    writeln!(out, "name,address,status")?;
    for i in 0..stations {
        // Most stations are up; a few are offline or in maintenance, as in a real network.
        let status = match rng.random_range(0..100) {
            0..=2 => "offline",
            3..=4 => "maintenance",
            _ => "online",
        };
        let street = STREETS[rng.random_range(0..STREETS.len())];
        writeln!(
            out,
            "{},\"{} {}, {}\",{status}",
            station_name(i),
            rng.random_range(1..400),
            street,
            DISTRICTS[i % DISTRICTS.len()]
        )?;
    }
    out.flush()?;
    let batteries_path = dir.join("batteries.csv");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&batteries_path)?);
    writeln!(out, "station,serial,model,soc,soh")?;
    for b in 0..batteries {
        // Round-robin, so every station gets its share (about 92 each at Gogoro's size).
        let station = b % stations;
        writeln!(
            out,
            "{},GG{:08},{},{},{}",
            station_name(station),
            b + 1,
            MODELS[rng.random_range(0..MODELS.len())],
            rng.random_range(5..=100),
            rng.random_range(70..=100)
        )?;
    }
    out.flush()?;
    Ok((stations_path, batteries_path))
}

#[derive(clap::Args, Debug)]
pub struct NetworkArgs {
    #[arg(long, default_value_t = 12_000)]
    pub stations: usize,
    #[arg(long, default_value_t = 1_100_000)]
    pub batteries: usize,
    /// Dashboards that open the all-stations feed at once.
    #[arg(long, default_value_t = 100)]
    pub dashboards: usize,
    /// Bookings made on each network (the big one and the 20-station one).
    #[arg(long, default_value_t = 6_000)]
    pub bookings: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Bookings made on each network afterwards at a steady rate (open loop), for the latency a
    /// driver sees when the server is not saturated.
    #[arg(long, default_value_t = 2_000)]
    pub paced: usize,
    /// The steady rate, bookings per second: by default ten times the average of Gogoro's network
    /// (400,000 swaps a day are 4.6 a second).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
}

/// One network's booking run: latencies, and the events that reached the watchers.
struct Booked {
    /// Latencies at `concurrency` in flight: the server saturated, so they measure its throughput.
    latency: Summary,
    /// Latencies at the steady rate, from when each booking was due (not when it was sent), so a
    /// stall counts for every booking it delayed.
    paced: Summary,
    booked: usize,
    delivered: usize,
    confirmed: usize,
    per_sec: f64,
}

pub async fn run(args: NetworkArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (20..=100_000).contains(&args.stations)
            && (1..=5_000_000).contains(&args.batteries)
            && (1..=1_000).contains(&args.dashboards)
            && (1..=100_000).contains(&args.bookings)
            && (1..=1_024).contains(&args.concurrency)
            && args.paced <= 100_000
            && (1..=10_000).contains(&args.rate),
        "stations 20..=100000, batteries ..=5000000, dashboards ..=1000, bookings ..=100000, concurrency ..=1024, \
         paced ..=100000, rate 1..=10000"
    );
    let dir = tempfile_dir("network")?;
    let started = Instant::now();
    let (stations_csv, batteries_csv) = generate(&dir, args.stations, args.batteries)?;
    eprintln!(
        "network: generated in {:.1} s; importing",
        started.elapsed().as_secs_f64()
    );
    let env = [
        ("SWAPCAST_RATE_LIMIT", "1000".to_owned()),
        ("SWAPCAST_MAX_ACTIVE_BOOKINGS", "0".to_owned()),
    ];
    let (server, report) = BenchServer::start_loaded(&env, Some((&stations_csv, &batteries_csv)))?;
    let admin = Admin::sign_in(&server).await?;
    println!("network: {} stations, {} batteries", args.stations, args.batteries);
    for line in report.lines() {
        println!("  import         {}", line.rsplit(": ").next().unwrap_or(line));
    }

    // One reader, then many at once: greeting to the last snapshot message.
    let one = read_whole_snapshot(server.port, 0, args.stations).await?;
    println!(
        "  one reader     all {} snapshots in {:.0} ms",
        args.stations,
        one.as_secs_f64() * 1e3
    );
    let rss_before = rss_kib(server.pid())?;
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_before));
    let sampler = {
        let (peak, pid) = (peak.clone(), server.pid());
        tokio::spawn(async move {
            loop {
                if let Ok(now) = rss_kib(pid) {
                    peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let began = Instant::now();
    let readers = (0..args.dashboards).map(|i| read_whole_snapshot(server.port, i + 1, args.stations));
    let outcomes = futures_util::future::join_all(readers).await;
    let all = began.elapsed();
    sampler.abort();
    let complete = outcomes.iter().filter(|o| o.is_ok()).count();
    let times = summarize(
        outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .map(|d| d.as_micros() as u64)
            .collect(),
    );
    println!(
        "  {} dashboards  {complete} of {} complete in {:.2} s (each: p50 {:.0} ms, max {:.0} ms)",
        args.dashboards,
        args.dashboards,
        all.as_secs_f64(),
        ms(times.p50),
        ms(times.max)
    );
    println!(
        "  server RSS     {:.0} MiB before, {:.0} MiB at most while they read",
        rss_before as f64 / 1024.0,
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    );
    if let Some(Err(e)) = outcomes.into_iter().find(|o| o.is_err()) {
        println!("  a dashboard failed: {e:#}");
    }

    // The station list an operator opens first.
    let url = format!("{}/api/stations?sort=-available&available_min=1", admin.base);
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let began = Instant::now();
        let page: Value = admin.http.get(&url).send().await?.error_for_status()?.json().await?;
        samples.push(began.elapsed().as_micros() as u64);
        anyhow::ensure!(
            page["items"].as_array().is_some_and(|i| !i.is_empty()),
            "an empty first page"
        );
    }
    let list = summarize(samples);
    println!(
        "  station list   first page of sort=-available&available_min=1: p50 {:.2} ms, p99 {:.2} ms (200 requests)",
        ms(list.p50),
        ms(list.p99)
    );

    let big = book(&server, &admin, &args).await?;
    drop(server);
    // The same bookings on a network of 20 stations, each with at least as many batteries as
    // the big network's stations have on average.
    let per_station = (args.batteries / args.stations).max(1);
    // Twice the bookings, so no station runs out (some of the 20 are offline or in maintenance).
    let small_batteries = (20 * per_station).max((args.bookings + args.paced) * 2);
    let small_dir = tempfile_dir("network-small")?;
    let (s, b) = generate(&small_dir, 20, small_batteries)?;
    let (small_server, _) = BenchServer::start_loaded(&env, Some((&s, &b)))?;
    let small_admin = Admin::sign_in(&small_server).await?;
    let small = book(&small_server, &small_admin, &NetworkArgs { stations: 20, ..args }).await?;
    for (name, run) in [("big network", &big), ("20 stations", &small)] {
        println!(
            "  bookings       {name}: {} booked in all; at {} in flight {:.0}/s, p50 {:.1} ms, p99 {:.1} ms; delivered battery_booked {} of {}, booking_confirmed {} of {}",
            run.booked,
            args.concurrency,
            run.per_sec,
            ms(run.latency.p50),
            ms(run.latency.p99),
            run.delivered,
            run.booked,
            run.confirmed,
            run.booked
        );
    }
    println!(
        "  p99 ratio      big / 20 stations = {:.2} at {} in flight (saturated: the ratio of throughputs)",
        big.latency.p99 as f64 / small.latency.p99.max(1) as f64,
        args.concurrency
    );
    if args.paced > 0 {
        for (name, run) in [("big network", &big), ("20 stations", &small)] {
            println!(
                "  paced          {name}: {} bookings at {}/s, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
                run.paced.count,
                args.rate,
                ms(run.paced.p50),
                ms(run.paced.p90),
                ms(run.paced.p99)
            );
        }
        println!(
            "  p99 ratio      big / 20 stations = {:.2} at {}/s (target ≤ 1.2)",
            big.paced.p99 as f64 / small.paced.p99.max(1) as f64,
            args.rate
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&small_dir);
    Ok(())
}

fn tempfile_dir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("swapcast-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Connects to `/ws/stations/` and reads until the last of `stations` snapshots.
async fn read_whole_snapshot(port: u16, i: usize, stations: usize) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let stream = connect_from(i, port).await?;
    let url = format!("ws://127.0.0.1:{port}/ws/stations/");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await?;
    let mut snapshots = 0;
    while snapshots < stations {
        match tokio::time::timeout(DRAIN_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.contains("\"snapshot\"") => snapshots += 1,
            Ok(Some(Ok(Message::Close(frame)))) => anyhow::bail!("closed after {snapshots} snapshots: {frame:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => anyhow::bail!("after {snapshots} snapshots: {e}"),
            Ok(None) => anyhow::bail!("ended after {snapshots} snapshots"),
            Err(_) => anyhow::bail!("silent after {snapshots} snapshots"),
        }
    }
    let elapsed = began.elapsed();
    // As a browser does: Close, and wait for the server's.
    let _ = ws.close(None).await;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    Ok(elapsed)
}

/// Bookings at stations that have batteries, by 32 drivers, while a dashboard watches the whole
/// network and each driver's phone its notifications: `args.bookings` at `args.concurrency` in
/// flight, then `args.paced` at `args.rate` a second.
async fn book(server: &BenchServer, admin: &Admin, args: &NetworkArgs) -> anyhow::Result<Booked> {
    // Stations to book at: those with batteries, spread over the network.
    let mut stations = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/api/stations?status=online&available_min=1&limit=500", admin.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = admin.http.get(&url).send().await?.error_for_status()?.json().await?;
        stations.extend(
            page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["id"].as_i64()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    anyhow::ensure!(!stations.is_empty(), "no station has a battery");
    let mut drivers = Vec::new();
    for d in 0..32 {
        drivers.push(driver(admin, server.port, d).await?);
    }
    let watcher = tokio::spawn(count_until_quiet(
        subscribe_all(server.port, args.stations).await?,
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
    let began = Instant::now();
    // Spread so that no station runs out: booking i goes to a station chosen by a stride.
    let outcomes: Vec<(u16, Duration)> = futures_util::stream::iter((0..args.bookings).map(|i| {
        let (token, station) = (&tokens[i % tokens.len()], stations[(i * 7919) % stations.len()]);
        async move {
            let began = Instant::now();
            (book_once(admin, token, station).await, began.elapsed())
        }
    }))
    .buffer_unordered(args.concurrency)
    .collect()
    .await;
    let span = began.elapsed();
    // A failed booking would be a fast sample: none may hide among the latencies.
    let failed = outcomes.iter().filter(|(status, _)| *status != 201).count();
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} bookings at {} in flight failed",
        outcomes.len(),
        args.concurrency
    );
    let mut booked = outcomes.len();
    let per_sec = rate(booked, span);

    // The same at a steady rate: booking j is due at start + j / rate, sent then whatever the
    // others are doing, and timed from when it was due.
    let start = tokio::time::Instant::now();
    let every = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let paced: Vec<(u16, Duration)> = futures_util::future::join_all((0..args.paced).map(|j| {
        let i = args.bookings + j;
        let (token, station) = (&tokens[i % tokens.len()], stations[(i * 7919) % stations.len()]);
        let due = start + every * j as u32;
        async move {
            tokio::time::sleep_until(due).await;
            (book_once(admin, token, station).await, due.elapsed())
        }
    }))
    .await;
    let failed = paced.iter().filter(|(status, _)| *status != 201).count();
    anyhow::ensure!(failed == 0, "{failed} of {} paced bookings failed", paced.len());
    booked += paced.len();
    let delivered = watcher.await?;
    let mut confirmed = 0;
    for phone in phones {
        confirmed += phone.await?;
    }
    Ok(Booked {
        latency: summarize(outcomes.iter().map(|(_, d)| d.as_micros() as u64).collect()),
        paced: summarize(paced.iter().map(|(_, d)| d.as_micros() as u64).collect()),
        booked,
        delivered,
        confirmed,
        per_sec,
    })
}
