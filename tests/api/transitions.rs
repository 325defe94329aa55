//! Exclusive transitions (CONTRACT §1 v2): of two concurrent requests that move one booking,
//! battery or station out of the same state, exactly one wins and the other gets 409, and the rows
//! and the events agree with the winner. Each pair runs many rounds at once with every request of
//! every round released by one barrier, so on PostgreSQL the two requests of a round overlap in
//! the database. The whole suite also runs on PostgreSQL in CI (`SWAPCAST_TEST_DATABASE=postgres`).
//!
//! Some pairs are also valid one after the other (a booking made ready can then be cancelled; a
//! returned battery can then be retired): for those, both may succeed when the second request
//! read the state the first one committed, and the rows and events must then be those of that
//! order — never a mix, such as a retirement undone by the return it raced.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::Barrier;

use crate::helpers::{spawn_app_with, Reply, TestApp, TestUser};

/// Rounds per pair: enough that, without the guard, some round on PostgreSQL lets both win.
const ROUNDS: usize = 30;

/// One request that moves a booking, a battery or a station.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Cancel,
    Collect,
    Ready,
    Return,
    Retire,
    /// Telemetry that completes a charge (soc 99 on a charging battery).
    Charge,
    Offline,
    Maintenance,
}

/// The state a pair starts from, made fresh for every round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// A confirmed booking, its battery booked.
    Confirmed,
    /// A collected battery (with a driver).
    Collected,
    /// A battery charging at the station after a return.
    Charging,
    /// An online station.
    Online,
}

/// What one round is about: its own station (so its events are told apart by station id), its
/// battery and booking where the start has them.
struct Round {
    station: i64,
    battery: Option<(i64, String)>,
    booking: Option<i64>,
}

/// What the winner of a step leaves behind.
struct Effect {
    booking: Option<&'static str>,
    battery: Option<&'static str>,
    station: Option<&'static str>,
    /// The round's events, in order, as (type, action or status).
    events: &'static [(&'static str, &'static str)],
}

impl Step {
    fn effect(self) -> Effect {
        let (booking, battery, station, events): (_, _, _, &'static [(&str, &str)]) = match self {
            Step::Cancel => (
                Some("cancelled"),
                Some("available"),
                None,
                &[("inventory_update", "update")],
            ),
            Step::Collect => (
                Some("collected"),
                Some("collected"),
                None,
                &[("battery_collected", ""), ("inventory_update", "collect")],
            ),
            Step::Ready => (Some("ready"), Some("booked"), None, &[("booking_ready", "")]),
            Step::Return => (
                None,
                Some("charging"),
                None,
                &[("battery_updated", "charging"), ("inventory_update", "update")],
            ),
            Step::Retire => (None, Some("retired"), None, &[("inventory_update", "update")]),
            Step::Charge => (
                None,
                Some("available"),
                None,
                &[("battery_updated", "available"), ("inventory_update", "update")],
            ),
            Step::Offline => (None, None, Some("offline"), &[("station_status", "offline")]),
            Step::Maintenance => (None, None, Some("maintenance"), &[("station_status", "maintenance")]),
        };
        Effect {
            booking,
            battery,
            station,
            events,
        }
    }

    /// What this step does when it runs after `prev` won, if it is allowed then (the serial order
    /// in which both succeed).
    fn after(self, prev: Step) -> Option<Effect> {
        use Step::*;
        match (prev, self) {
            (Ready, Cancel) | (Ready, Collect) | (Return, Retire) | (Charge, Retire) | (Charge, Charge) => {
                Some(self.effect())
            }
            (Offline, Maintenance) | (Maintenance, Offline) => Some(self.effect()),
            // The status is already what was asked: nothing changes, nothing is announced.
            (Offline, Offline) | (Maintenance, Maintenance) => Some(Effect {
                events: &[],
                ..self.effect()
            }),
            _ => None,
        }
    }

    /// The codes the loser may get, given who won.
    fn refusals(self, winner: Step) -> &'static [&'static str] {
        match (self, winner) {
            (Step::Cancel | Step::Collect | Step::Ready, _) => &["invalid_booking_state"],
            (Step::Return, _) => &["battery_not_collected"],
            (Step::Retire | Step::Charge, Step::Retire) => &["battery_retired"],
            (Step::Retire | Step::Charge, _) => &["invalid_battery_state"],
            (Step::Offline | Step::Maintenance, _) => &["invalid_station_state"],
        }
    }

    async fn send(self, app: &TestApp, round: &Round, driver: &TestUser) -> Reply {
        let admin = Some(app.admin.token.as_str());
        let booking = || round.booking.expect("a booking");
        let battery = || round.battery.clone().expect("a battery");
        match self {
            Step::Cancel => {
                app.post(
                    &format!("/api/bookings/{}/cancel", booking()),
                    Some(&driver.token),
                    json!({}),
                )
                .await
            }
            Step::Collect => {
                app.post(&format!("/api/bookings/{}/collect", booking()), admin, json!({}))
                    .await
            }
            Step::Ready => {
                app.post(&format!("/api/bookings/{}/ready", booking()), admin, json!({}))
                    .await
            }
            Step::Return => {
                app.post(
                    &format!("/api/stations/{}/returns", round.station),
                    admin,
                    json!({"serial": battery().1, "soc": 20}),
                )
                .await
            }
            Step::Retire => {
                let path = format!("/api/batteries/{}", battery().0);
                app.patch(&path, admin, json!({"status": "retired"})).await
            }
            Step::Charge => {
                let path = format!("/api/batteries/{}", battery().0);
                app.patch(&path, admin, json!({"soc": 99})).await
            }
            Step::Offline | Step::Maintenance => {
                let status = if self == Step::Offline {
                    "offline"
                } else {
                    "maintenance"
                };
                app.patch(
                    &format!("/api/stations/{}", round.station),
                    admin,
                    json!({"status": status}),
                )
                .await
            }
        }
    }
}

async fn prepare(app: &TestApp, start: Start, n: usize, driver: &TestUser) -> Round {
    let admin = Some(app.admin.token.as_str());
    let station = app.station(&format!("Round {n}"), None).await;
    if start == Start::Online {
        return Round {
            station,
            battery: None,
            booking: None,
        };
    }
    let serial = format!("RACE-{station}");
    let battery = app.battery(station, &serial).await;
    let booking = app.book(station, driver).await["id"].as_i64().unwrap();
    if start != Start::Confirmed {
        app.post(&format!("/api/bookings/{booking}/collect"), admin, json!({}))
            .await
            .expect(200);
    }
    if start == Start::Charging {
        app.post(
            &format!("/api/stations/{station}/returns"),
            admin,
            json!({"serial": serial, "soc": 10}),
        )
        .await
        .expect(201);
    }
    Round {
        station,
        battery: Some((battery, serial)),
        booking: (start == Start::Confirmed).then_some(booking),
    }
}

/// The events of one round: its station's, and its booking's personal ones.
fn events_of(events: &[Value], round: &Round) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| {
            e["station_id"].as_i64() == Some(round.station)
                || (round.booking.is_some() && e["payload"]["booking_id"].as_i64() == round.booking)
        })
        .map(|e| {
            let detail = e["payload"]["action"]
                .as_str()
                .or(e["payload"]["status"].as_str())
                .unwrap_or("");
            let detail =
                if e["type"] == "inventory_update" || e["type"] == "battery_updated" || e["type"] == "station_status" {
                    detail
                } else {
                    ""
                };
            (e["type"].as_str().unwrap().to_owned(), detail.to_owned())
        })
        .collect()
}

/// Checks that the rows of a round are what `effect` leaves (`winner` names it in messages).
async fn check_rows(app: &TestApp, round: &Round, effect: &Effect, winner: &str) {
    let admin = Some(app.admin.token.as_str());
    let station = app
        .get(&format!("/api/stations/{}", round.station), admin)
        .await
        .expect(200);
    if let Some(status) = effect.station {
        assert_eq!(station["status"], status, "station after {winner}");
    }
    if let Some(booking) = round.booking {
        let listed = app
            .get(&format!("/api/bookings?station_id={}", round.station), admin)
            .await
            .expect(200);
        let row = &listed["items"].as_array().unwrap()[0];
        assert_eq!(row["id"], booking);
        assert_eq!(row["status"], effect.booking.unwrap(), "booking after {winner}");
    }
    if let Some((battery, _)) = &round.battery {
        let batteries = app
            .get(&format!("/api/stations/{}/batteries", round.station), admin)
            .await
            .expect(200);
        let row = batteries["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == *battery)
            .expect("the battery is at the round's station");
        let status = effect.battery.unwrap();
        assert_eq!(row["status"], status, "battery after {winner}");
        // The counts agree with the battery's state.
        assert_eq!(station["available_batteries"], i64::from(status == "available"));
        assert_eq!(station["booked_batteries"], i64::from(status == "booked"));
        assert_eq!(
            station["total_batteries"],
            i64::from(!["retired", "collected"].contains(&status))
        );
    }
}

/// Runs `ROUNDS` rounds of `a` against `b`, all released together.
async fn race(start: Start, a: Step, b: Step) {
    // Many bookings by one driver: the booking limit is not under test here.
    let app = spawn_app_with(|s| s.max_active_bookings = 0).await;
    let driver = app.user("user").await;
    let mut rounds = Vec::with_capacity(ROUNDS);
    for n in 0..ROUNDS {
        rounds.push(prepare(&app, start, n, &driver).await);
    }
    let before = app.last_event_id().await;
    let barrier = Arc::new(Barrier::new(2 * ROUNDS));
    let requests = rounds.iter().flat_map(|round| {
        [a, b].map(|step| {
            let (app, driver, barrier) = (&app, &driver, barrier.clone());
            async move {
                barrier.wait().await;
                step.send(app, round, driver).await
            }
        })
    });
    let replies = join_all(requests).await;
    let events = app.all_events_after(before).await;
    let owned = |events: &[(&str, &str)]| -> Vec<(String, String)> {
        events.iter().map(|(t, d)| (t.to_string(), d.to_string())).collect()
    };
    let mut both = 0;
    for (round, pair) in rounds.iter().zip(replies.chunks(2)) {
        let ok = |r: &Reply| r.status.is_success();
        let got = events_of(&events, round);
        let winner = match (ok(&pair[0]), ok(&pair[1])) {
            (true, false) => 0,
            (false, true) => 1,
            (true, true) => {
                // Only as a serial order allows, with that order's rows and events.
                both += 1;
                let order = [(a, b), (b, a)].into_iter().find_map(|(first, second)| {
                    let then = second.after(first)?;
                    let mut expected = owned(first.effect().events);
                    expected.extend(owned(then.events));
                    (expected == got).then_some((first, second, then))
                });
                let Some((first, second, then)) = order else {
                    panic!(
                        "{a:?} vs {b:?} at station {}: both won, but no serial order gives events {got:?}: {} / {}",
                        round.station, pair[0].body, pair[1].body
                    )
                };
                check_rows(&app, round, &then, &format!("{first:?} then {second:?}")).await;
                continue;
            }
            _ => panic!(
                "{a:?} vs {b:?} at station {}: one must win, got {} and {}: {} / {}",
                round.station, pair[0].status, pair[1].status, pair[0].body, pair[1].body
            ),
        };
        let (won, lost) = if winner == 0 { (a, b) } else { (b, a) };
        let loser = &pair[1 - winner];
        assert_eq!(loser.status.as_u16(), 409, "{lost:?} lost to {won:?}: {}", loser.body);
        let code = loser.body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            lost.refusals(won).contains(&code),
            "{lost:?} lost to {won:?} with {code}: {}",
            loser.body
        );
        assert_eq!(got, owned(won.effect().events), "events after {won:?} beat {lost:?}");
        check_rows(&app, round, &won.effect(), &format!("{won:?} beat {lost:?}")).await;
    }
    eprintln!("{a:?} vs {b:?}: {both} of {ROUNDS} rounds ran one after the other, both allowed");
}

macro_rules! pairs {
    ($($name:ident: from $start:ident, $a:ident vs $b:ident;)*) => {$(
        #[actix_web::test]
        async fn $name() {
            race(Start::$start, Step::$a, Step::$b).await;
        }
    )*};
}

pairs! {
    cancel_and_collect_one_wins: from Confirmed, Cancel vs Collect;
    collect_twice_one_wins: from Confirmed, Collect vs Collect;
    cancel_twice_one_wins: from Confirmed, Cancel vs Cancel;
    ready_twice_one_wins: from Confirmed, Ready vs Ready;
    ready_and_cancel_one_wins: from Confirmed, Ready vs Cancel;
    ready_and_collect_one_wins: from Confirmed, Ready vs Collect;
    return_and_retirement_one_wins: from Collected, Return vs Retire;
    return_twice_one_wins: from Collected, Return vs Return;
    retirement_twice_one_wins: from Collected, Retire vs Retire;
    charge_completion_and_retirement_one_wins: from Charging, Charge vs Retire;
    charge_completion_twice_one_wins: from Charging, Charge vs Charge;
    two_status_changes_one_wins: from Online, Offline vs Maintenance;
    the_same_status_change_twice_one_wins: from Online, Offline vs Offline;
}

/// The expiry sweep is a concurrent request like any other: with a one-second hold, collects
/// sent around the moment the bookings expire meet the sweep (every second) in the database. Each
/// booking ends exactly one way, and its rows and events say the same.
#[actix_web::test]
async fn the_expiry_sweep_and_a_collect_one_wins() {
    let app = spawn_app_with(|s| {
        s.booking_hold = 1;
        s.max_active_bookings = 0;
    })
    .await;
    let driver = app.user("user").await;
    let mut rounds = Vec::new();
    for n in 0..60 {
        let station = app.station(&format!("Sweep {n}"), None).await;
        let serial = format!("SWEEP-{station}");
        let battery = app.battery(station, &serial).await;
        rounds.push(Round {
            station,
            battery: Some((battery, serial)),
            booking: None,
        });
    }
    let before = app.last_event_id().await;
    let booked = join_all(rounds.iter().map(|round| app.book(round.station, &driver))).await;
    for (round, booking) in rounds.iter_mut().zip(booked) {
        round.booking = booking["id"].as_i64();
    }
    // Collects spread over 0.4–1.6 s after booking: before, during and after the sweep.
    let collects = rounds.iter().enumerate().map(|(n, round)| {
        let (app, driver) = (&app, &driver);
        async move {
            tokio::time::sleep(Duration::from_millis(20 * n as u64 + 400)).await;
            Step::Collect.send(app, round, driver).await
        }
    });
    let replies = join_all(collects).await;
    // Every booking that was not collected is expired by the sweep soon after its hold.
    let admin = Some(app.admin.token.as_str());
    let mut live = usize::MAX;
    for _ in 0..100 {
        let listed = app.get("/api/bookings?status=confirmed", admin).await.expect(200);
        live = listed["items"].as_array().unwrap().len();
        if live == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live, 0, "the sweep expires every uncollected booking");
    let events = app.all_events_after(before).await;
    let made = ["battery_booked", "booking_confirmed"];
    let (mut collected, mut expired) = (0, 0);
    for (round, reply) in rounds.iter().zip(&replies) {
        let (status, ended): (&str, &[(&str, &str)]) = match reply.status.as_u16() {
            200 => {
                collected += 1;
                (
                    "collected",
                    &[("battery_collected", ""), ("inventory_update", "collect")],
                )
            }
            409 => {
                assert_eq!(reply.body["error"]["code"], "invalid_booking_state");
                expired += 1;
                ("expired", &[("inventory_update", "update")])
            }
            other => panic!("collect answered {other}: {}", reply.body),
        };
        let listed = app
            .get(&format!("/api/bookings?station_id={}", round.station), admin)
            .await
            .expect(200);
        assert_eq!(listed["items"][0]["status"], status, "station {}", round.station);
        // After the booking's own events, exactly the winner's.
        let mut got = events_of(&events, round);
        assert!(made.contains(&got[0].0.as_str()) && got[1] == ("inventory_update".into(), "book".into()));
        got.retain(|(t, d)| !made.contains(&t.as_str()) && d != "book");
        let expected: Vec<(String, String)> = ended.iter().map(|(t, d)| (t.to_string(), d.to_string())).collect();
        assert_eq!(got, expected, "station {}", round.station);
    }
    assert_eq!(collected + expired, rounds.len());
}

/// Ten simultaneous bookings by one driver make at most two (the default limit); the others get
/// 409 `booking_limit_reached` and change and emit nothing. Ending a booking gives its place back.
#[actix_web::test]
async fn the_booking_limit_holds_under_concurrency() {
    let app = spawn_app_with(|_| {}).await;
    let driver = app.user("user").await;
    let station = app.station("Limit", None).await;
    for i in 0..12 {
        app.battery(station, &format!("LIM-{i}")).await;
    }
    let before = app.last_event_id().await;
    let barrier = Arc::new(Barrier::new(10));
    let attempts = (0..10).map(|_| {
        let (app, driver, barrier) = (&app, &driver, barrier.clone());
        async move {
            barrier.wait().await;
            app.post("/api/bookings", Some(&driver.token), json!({"station_id": station}))
                .await
        }
    });
    let replies = join_all(attempts).await;
    let mut won = Vec::new();
    for reply in replies {
        match reply.status.as_u16() {
            201 => won.push(reply.body["id"].as_i64().unwrap()),
            409 => assert_eq!(reply.body["error"]["code"], "booking_limit_reached", "{}", reply.body),
            other => panic!("booking answered {other}: {}", reply.body),
        }
    }
    assert_eq!(won.len(), 2, "the default limit is two live bookings");
    let events = app.all_events_after(before).await;
    let count = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
    assert_eq!(count("battery_booked"), 2);
    assert_eq!(count("booking_confirmed"), 2);
    let now = app.get(&format!("/api/stations/{station}"), None).await.expect(200);
    assert_eq!(now["booked_batteries"], 2);
    assert_eq!(now["available_batteries"], 10);

    // A third is refused; cancelling or collecting one gives its place back.
    app.post("/api/bookings", Some(&driver.token), json!({"station_id": station}))
        .await
        .expect_error(409, "booking_limit_reached");
    app.post(
        &format!("/api/bookings/{}/cancel", won[0]),
        Some(&driver.token),
        json!({}),
    )
    .await
    .expect(200);
    let third = app.book(station, &driver).await["id"].as_i64().unwrap();
    app.post(
        &format!("/api/bookings/{third}/collect"),
        Some(&app.admin.token),
        json!({}),
    )
    .await
    .expect(200);
    app.book(station, &driver).await;
    app.post("/api/bookings", Some(&driver.token), json!({"station_id": station}))
        .await
        .expect_error(409, "booking_limit_reached");
    // Another driver is not affected.
    let other = app.user("user").await;
    app.book(station, &other).await;
}

/// An expired booking gives its place back too, and `0` means no limit.
#[actix_web::test]
async fn expiry_frees_a_place_and_zero_means_no_limit() {
    let app = spawn_app_with(|s| {
        s.booking_hold = 1;
        s.max_active_bookings = 1;
    })
    .await;
    let driver = app.user("user").await;
    let station = app.station("Hold", None).await;
    for i in 0..3 {
        app.battery(station, &format!("H-{i}")).await;
    }
    app.book(station, &driver).await;
    app.post("/api/bookings", Some(&driver.token), json!({"station_id": station}))
        .await
        .expect_error(409, "booking_limit_reached");
    // The sweep runs every second; the hold is one second.
    let mut booked = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reply = app
            .post("/api/bookings", Some(&driver.token), json!({"station_id": station}))
            .await;
        if reply.status.as_u16() == 201 {
            booked = true;
            break;
        }
        reply.expect_error(409, "booking_limit_reached");
    }
    assert!(booked, "the expired booking gave its place back");

    let unlimited = spawn_app_with(|s| s.max_active_bookings = 0).await;
    let driver = unlimited.user("user").await;
    let station = unlimited.station("Many", None).await;
    for i in 0..5 {
        unlimited.battery(station, &format!("M-{i}")).await;
    }
    for _ in 0..5 {
        unlimited.book(station, &driver).await;
    }
}

/// A patch that changes no status never writes back the status it read: a concurrent status change
/// survives a rename, and only the status change is announced.
#[actix_web::test]
async fn a_rename_never_undoes_a_concurrent_status_change() {
    let app = spawn_app_with(|_| {}).await;
    let admin = Some(app.admin.token.as_str());
    let mut stations = Vec::new();
    for n in 0..ROUNDS {
        stations.push(app.station(&format!("Rename {n}"), None).await);
    }
    let before = app.last_event_id().await;
    let barrier = Arc::new(Barrier::new(2 * ROUNDS));
    let requests = stations.iter().flat_map(|&station| {
        [
            json!({"name": format!("Renamed {station}")}),
            json!({"status": "offline"}),
        ]
        .map(|body| {
            let (app, barrier) = (&app, barrier.clone());
            async move {
                barrier.wait().await;
                app.call(Method::PATCH, &format!("/api/stations/{station}"), admin, Some(body))
                    .await
            }
        })
    });
    for reply in join_all(requests).await {
        reply.expect(200);
    }
    let events = app.all_events_after(before).await;
    for station in stations {
        let now = app.get(&format!("/api/stations/{station}"), admin).await.expect(200);
        assert_eq!(now["status"], "offline");
        assert_eq!(now["name"], format!("Renamed {station}"));
        let announced: Vec<&Value> = events
            .iter()
            .filter(|e| e["station_id"].as_i64() == Some(station))
            .collect();
        assert_eq!(announced.len(), 1, "{announced:?}");
        assert_eq!(announced[0]["type"], "station_status");
    }
}

/// A burst of bookings at one station all pick the same best battery first; every loser tries the
/// next, so while batteries are free nobody is told there are none (on PostgreSQL a fixed number
/// of attempts once refused drivers with batteries still on the shelf).
#[actix_web::test]
async fn a_burst_of_bookings_is_refused_only_when_the_batteries_are_gone() {
    let app = spawn_app_with(|s| s.max_active_bookings = 0).await;
    let station = app.station("Burst", None).await;
    const BATTERIES: usize = 120;
    for i in 0..BATTERIES {
        app.battery(station, &format!("BURST-{i}")).await;
    }
    let drivers = join_all((0..10).map(|_| app.user("user"))).await;
    let barrier = Arc::new(Barrier::new(BATTERIES + 10));
    let attempts = (0..BATTERIES + 10).map(|i| {
        let (app, driver, barrier) = (&app, &drivers[i % drivers.len()], barrier.clone());
        async move {
            barrier.wait().await;
            app.post("/api/bookings", Some(&driver.token), json!({"station_id": station}))
                .await
        }
    });
    let replies = join_all(attempts).await;
    let won = replies.iter().filter(|r| r.status.as_u16() == 201).count();
    for reply in replies.iter().filter(|r| r.status.as_u16() != 201) {
        assert_eq!(reply.status.as_u16(), 409, "{}", reply.body);
        assert_eq!(reply.body["error"]["code"], "no_battery_available");
    }
    assert_eq!(won, BATTERIES, "every battery booked, the rest refused");
    let now = app.get(&format!("/api/stations/{station}"), None).await.expect(200);
    assert_eq!(now["available_batteries"], 0);
}

/// A transition endpoint that takes no body still refuses a malformed one, and changes nothing.
#[actix_web::test]
async fn a_malformed_body_moves_nothing() {
    let app = spawn_app_with(|_| {}).await;
    let driver = app.user("user").await;
    let round = prepare(&app, Start::Confirmed, 0, &driver).await;
    let booking = round.booking.unwrap();
    let before = app.last_event_id().await;
    for step in ["cancel", "ready", "collect"] {
        let reply = app
            .client
            .post(app.url(&format!("/api/bookings/{booking}/{step}")))
            .bearer_auth(&app.admin.token)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        TestApp::reply(reply).await.expect_error(400, "malformed_json");
    }
    let listed = app
        .get(
            &format!("/api/bookings?station_id={}", round.station),
            Some(&app.admin.token),
        )
        .await
        .expect(200);
    assert_eq!(listed["items"][0]["status"], "confirmed");
    assert!(app.events_after(before).await.is_empty());
    // An empty body, or `{}`, is what clients send and is fine.
    let ready = app
        .client
        .post(app.url(&format!("/api/bookings/{booking}/ready")))
        .bearer_auth(&app.admin.token)
        .send()
        .await
        .unwrap();
    TestApp::reply(ready).await.expect(200);
    app.post(
        &format!("/api/bookings/{booking}/cancel"),
        Some(&driver.token),
        json!({}),
    )
    .await
    .expect(200);
    // `null` for a station field that cannot be empty is a mistake, not an absent field.
    for body in [json!({"status": null}), json!({"name": null})] {
        app.patch(
            &format!("/api/stations/{}", round.station),
            Some(&app.admin.token),
            body,
        )
        .await
        .expect_error(422, "validation_failed");
    }
}
