//! A made-up network of real size, written as the CSV files `swapcast import` reads: Gogoro's by
//! default (12,000 stations, 1.1 million batteries). Deterministic, so two runs load the same
//! network.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

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
