//! `swapcast import`: a network loaded from the CSV files an operator has (CONTRACT §5 v2). Each
//! file is one transaction — all of it or nothing — and a bad row is refused with its line number
//! before anything is written. Rows go in as multi-row inserts, and each station's counts move once
//! for all its new batteries, so a million batteries load in seconds, not hours.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::rc::Rc;

use diesel::prelude::*;

use super::ids::StationId;
use super::values::{Address, BatteryModel, BatteryStatus, Percent, Serial, StationName, StationStatus};
use super::{transition, Change};
use crate::db::models::{NewBattery, NewStation, Station};
use crate::db::schema::{batteries, stations};
use crate::db::DbConn;
use crate::error::{Error, Result};
use crate::events::{Audience, InventoryAction};

/// Rows per INSERT: well under either backend's limit on bound parameters.
const BATCH: usize = 1_000;

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("line {line}: {problem}")]
    BadRow { line: u64, problem: String },
    #[error("{0}")]
    Failed(#[from] Error),
}

impl From<diesel::result::Error> for ImportError {
    fn from(error: diesel::result::Error) -> Self {
        ImportError::Failed(error.into())
    }
}

/// Multi-row inserts are written per backend: diesel's connection over both backends does not
/// offer them.
macro_rules! insert_many {
    ($conn:expr, $table:expr, $rows:expr) => {
        match $conn {
            DbConn::Sqlite(c) => diesel::insert_into($table).values($rows).execute(c),
            DbConn::Pg(c) => diesel::insert_into($table).values($rows).execute(c),
        }
    };
}

/// At the command line's boundary a bad row reads as a validation error naming its line.
impl From<ImportError> for Error {
    fn from(error: ImportError) -> Self {
        match error {
            ImportError::BadRow { line, problem } => Error::field(&format!("line {line}"), problem),
            ImportError::Failed(error) => error,
        }
    }
}

fn bad(line: u64, problem: impl Into<String>) -> ImportError {
    ImportError::BadRow {
        line,
        problem: problem.into(),
    }
}

/// The problem an input rule found, as a sentence about the field.
fn problem(error: Error) -> String {
    match error {
        Error::Validation(fields) => fields
            .into_iter()
            .map(|(field, message)| format!("{field} {message}"))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// Reads the header and checks it names `wanted` (in any order); returns each one's column.
fn columns(
    reader: &mut csv::Reader<impl Read>,
    wanted: &[&str],
    required: &[&str],
) -> Result<Vec<Option<usize>>, ImportError> {
    let header = reader
        .headers()
        .map_err(|e| bad(1, format!("unreadable header: {e}")))?;
    let names: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
    if let Some(unknown) = names.iter().find(|n| !wanted.contains(&n.as_str())) {
        return Err(bad(
            1,
            format!("unknown column {unknown:?}; the columns are {}", wanted.join(",")),
        ));
    }
    let found: Vec<Option<usize>> = wanted.iter().map(|w| names.iter().position(|n| n == w)).collect();
    if let Some(missing) = required.iter().find(|r| !names.iter().any(|n| n == *r)) {
        return Err(bad(1, format!("missing column {missing:?}")));
    }
    Ok(found)
}

/// The line ends of the file: each `\r` or `\n` byte's offset, with the number of `\n`s up to
/// and including it. The CSV reader places a row where it began to read it — on the end of the
/// line before (CRLF) or on blank lines — so a row's line is counted here: the newlines before
/// that place, and those of the line ends that follow it.
#[derive(Clone, Default)]
struct Newlines(Rc<RefCell<Vec<(u64, u64)>>>);

impl Newlines {
    /// The line (from 1) of the first byte at or after `offset` that ends no line.
    fn line_of(&self, offset: u64) -> u64 {
        let ends = self.0.borrow();
        let first = ends.partition_point(|&(at, _)| at < offset);
        let mut last = first;
        while last < ends.len() && ends[last].0 == offset + (last - first) as u64 {
            last += 1;
        }
        1 + last.checked_sub(1).map_or(0, |i| ends[i].1)
    }
}

/// The file as read, noting each newline's offset on the way.
struct Counted<R> {
    input: R,
    read: u64,
    newlines: Newlines,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        let mut ends = self.newlines.0.borrow_mut();
        let mut seen = ends.last().map_or(0, |&(_, count)| count);
        for (i, byte) in buf[..n].iter().enumerate() {
            if matches!(byte, b'\r' | b'\n') {
                seen += u64::from(*byte == b'\n');
                ends.push((self.read + i as u64, seen));
            }
        }
        self.read += n as u64;
        Ok(n)
    }
}

/// Each row with its line number, trimmed cells by column.
fn rows(
    reader: csv::Reader<impl Read>,
    newlines: Newlines,
) -> impl Iterator<Item = Result<(u64, csv::StringRecord), ImportError>> {
    reader.into_records().map(move |record| {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| newlines.line_of(p.byte()));
            bad(line, format!("unreadable row: {e}"))
        })?;
        let line = record.position().map_or(0, |p| newlines.line_of(p.byte()));
        Ok((line, record))
    })
}

fn cell(record: &csv::StringRecord, column: Option<usize>) -> &str {
    column.and_then(|c| record.get(c)).map_or("", str::trim)
}

fn reader(input: impl Read) -> (csv::Reader<impl Read>, Newlines) {
    let newlines = Newlines::default();
    let counted = Counted {
        input,
        read: 0,
        newlines: newlines.clone(),
    };
    let reader = csv::ReaderBuilder::new()
        .flexible(false)
        .trim(csv::Trim::None)
        .from_reader(counted);
    (reader, newlines)
}

/// Stations from `name,address,status` (status empty: `online`). Returns how many.
pub fn stations(ch: &mut Change, input: impl Read) -> Result<usize, ImportError> {
    let (mut reader, newlines) = reader(input);
    let at = columns(&mut reader, &["name", "address", "status"], &["name"])?;
    let mut parsed = Vec::new();
    for row in rows(reader, newlines) {
        let (line, record) = row?;
        let name = StationName::parse(cell(&record, at[0])).map_err(|e| bad(line, problem(e)))?;
        let address = match cell(&record, at[1]) {
            "" => None,
            raw => Some(Address::parse(raw).map_err(|e| bad(line, problem(e)))?),
        };
        let status = match cell(&record, at[2]) {
            "" => StationStatus::Online,
            raw => StationStatus::from_db(raw)
                .map_err(|_| bad(line, format!("status {raw:?} is not online, offline or maintenance")))?,
        };
        parsed.push((name, address, status));
    }
    for batch in parsed.chunks(BATCH) {
        let rows: Vec<NewStation> = batch
            .iter()
            .map(|(name, address, status)| NewStation {
                name,
                address: address.as_deref(),
                status: status.as_str(),
                operator_id: None,
                created_at: ch.now,
                updated_at: ch.now,
            })
            .collect();
        insert_many!(ch.conn, stations::table, &rows)?;
    }
    super::stations::touched(ch.conn)?;
    Ok(parsed.len())
}

/// Batteries from `station,serial,model,soc,soh`: `station` names one station (a name that
/// matches none, or several, is a bad row); soc and soh default to 100. Each battery arrives
/// `available`, as one added through the API does, and each station that received some announces
/// its new counts with one `inventory_update` — not one event per battery.
pub fn batteries(ch: &mut Change, input: impl Read) -> Result<usize, ImportError> {
    let (mut reader, newlines) = reader(input);
    let at = columns(
        &mut reader,
        &["station", "serial", "model", "soc", "soh"],
        &["station", "serial", "model"],
    )?;
    let mut by_name: HashMap<String, Option<Station>> = HashMap::new();
    let all: Vec<Station> = stations::table.select(Station::as_select()).load(ch.conn)?;
    for station in all {
        by_name
            .entry(station.name.clone())
            .and_modify(|seen| *seen = None)
            .or_insert(Some(station));
    }
    let percent = |line: u64, field: &str, raw: &str| -> Result<Percent, ImportError> {
        if raw.is_empty() {
            return Percent::parse(field, 100).map_err(|e| bad(line, problem(e)));
        }
        let n: i64 = raw
            .parse()
            .map_err(|_| bad(line, format!("{field} {raw:?} is not a whole number")))?;
        Percent::parse(field, n).map_err(|e| bad(line, problem(e)))
    };
    // Rows go in a batch at a time as they are read, so memory stays flat however long the file;
    // a bad row later on rolls the whole transaction back.
    let mut added: HashMap<i64, i32> = HashMap::new();
    let mut batch: Vec<Row> = Vec::with_capacity(BATCH);
    let mut count = 0;
    for row in rows(reader, newlines) {
        let (line, record) = row?;
        let name = cell(&record, at[0]);
        let station = match by_name.get(name) {
            Some(Some(station)) => station.id,
            Some(None) => return Err(bad(line, format!("station {name:?} names more than one station"))),
            None => return Err(bad(line, format!("station {name:?} names no station"))),
        };
        batch.push(Row {
            line,
            station,
            serial: Serial::parse(cell(&record, at[1])).map_err(|e| bad(line, problem(e)))?,
            model: BatteryModel::parse(cell(&record, at[2])).map_err(|e| bad(line, problem(e)))?,
            soc: percent(line, "soc", cell(&record, at[3]))?,
            soh: percent(line, "soh", cell(&record, at[4]))?,
        });
        if batch.len() == BATCH {
            count += insert_batteries(ch, &mut batch, &mut added)?;
        }
    }
    count += insert_batteries(ch, &mut batch, &mut added)?;
    let mut touched: Vec<(i64, i32)> = added.into_iter().collect();
    touched.sort_unstable();
    for (station, n) in touched {
        transition::shift_counts(
            ch,
            station,
            transition::Counts::of(BatteryStatus::Available.as_str(), n),
        )?;
        let station = super::stations::load(ch.conn, StationId(station))?;
        let (_, event) = super::stations::inventory_event(ch, &station, InventoryAction::Add)?;
        ch.emit(Audience::Station(StationId(station.id)), event);
    }
    Ok(count)
}

/// One battery row, checked.
struct Row {
    line: u64,
    station: i64,
    serial: Serial,
    model: String,
    soc: Percent,
    soh: Percent,
}

/// Inserts a batch (and empties it): a serial that is already there — in the database, earlier in
/// the file, or earlier in the batch — is a bad row, named by its line.
fn insert_batteries(
    ch: &mut Change,
    batch: &mut Vec<Row>,
    added: &mut HashMap<i64, i32>,
) -> Result<usize, ImportError> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut in_batch = HashSet::with_capacity(batch.len());
    if let Some(row) = batch.iter().find(|row| !in_batch.insert(row.serial.as_str())) {
        return Err(bad(
            row.line,
            format!("serial {:?} appears twice in the file", row.serial.as_str()),
        ));
    }
    let wanted: Vec<&str> = batch.iter().map(|row| row.serial.as_str()).collect();
    let taken: HashSet<String> = batteries::table
        .filter(batteries::serial.eq_any(&wanted))
        .select(batteries::serial)
        .load::<String>(ch.conn)?
        .into_iter()
        .collect();
    if let Some(row) = batch.iter().find(|row| taken.contains(row.serial.as_str())) {
        return Err(bad(
            row.line,
            format!(
                "serial {:?} is already taken (in the database or earlier in the file)",
                row.serial.as_str()
            ),
        ));
    }
    let rows: Vec<NewBattery> = batch
        .iter()
        .map(|row| NewBattery {
            station_id: row.station,
            serial: row.serial.as_str(),
            model: &row.model,
            status: BatteryStatus::Available.as_str(),
            soc: row.soc.get(),
            soh: row.soh.get(),
            created_at: ch.now,
            updated_at: ch.now,
        })
        .collect();
    insert_many!(ch.conn, batteries::table, &rows)?;
    for row in batch.iter() {
        *added.entry(row.station).or_default() += 1;
    }
    let n = batch.len();
    batch.clear();
    Ok(n)
}
