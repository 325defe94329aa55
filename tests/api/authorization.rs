//! The authorization matrix of CONTRACT §2, as one table: every endpoint × every kind of caller.
//! Allowed callers get a 2xx; anonymous callers who are not allowed get 401; signed-in callers who
//! are not allowed get 403.

use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, TestApp, TestUser};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Anonymous,
    User,
    /// The operator assigned to the station under test.
    OwnOperator,
    /// An operator of another station.
    OtherOperator,
    Admin,
}

use Who::*;

const EVERYONE: &[Who] = &[Anonymous, User, OwnOperator, OtherOperator, Admin];
const SIGNED_IN: &[Who] = &[User, OwnOperator, OtherOperator, Admin];
const STAFF: &[Who] = &[OwnOperator, Admin];
const ADMIN: &[Who] = &[Admin];

struct World {
    app: TestApp,
    station: i64,
    user: TestUser,
    own_operator: TestUser,
    other_operator: TestUser,
    serials: AtomicUsize,
}

impl World {
    fn caller(&self, who: Who) -> Option<&TestUser> {
        match who {
            Anonymous => None,
            User => Some(&self.user),
            OwnOperator => Some(&self.own_operator),
            OtherOperator => Some(&self.other_operator),
            Admin => Some(&self.app.admin),
        }
    }

    async fn fresh_battery(&self) -> (i64, String) {
        let serial = format!("AUTHZ-{}", self.serials.fetch_add(1, Ordering::Relaxed));
        (self.app.battery(self.station, &serial).await, serial)
    }

    /// A new booking by the plain user at the station under test.
    async fn fresh_booking(&self) -> i64 {
        self.fresh_battery().await;
        self.app.book(self.station, &self.user).await["id"].as_i64().unwrap()
    }
}

#[derive(Clone, Copy, Debug)]
enum Case {
    ListStations,
    GetStation,
    ListBatteries,
    CreateStation,
    SetStationStatus,
    AssignOperator,
    AddBattery,
    Telemetry,
    Announce,
    Retire,
    RecordReturn,
    Book,
    ListBookings,
    MarkReady,
    Collect,
    CancelUsersBooking,
    ListNotifications,
    ReadOwnNotification,
    SendNotification,
    ListUsers,
    ChangeRole,
    ReadEventLog,
    RealtimeStats,
    Me,
}

impl Case {
    const ALL: &'static [Case] = &[
        Case::ListStations,
        Case::GetStation,
        Case::ListBatteries,
        Case::CreateStation,
        Case::SetStationStatus,
        Case::AssignOperator,
        Case::AddBattery,
        Case::Telemetry,
        Case::Announce,
        Case::Retire,
        Case::RecordReturn,
        Case::Book,
        Case::ListBookings,
        Case::MarkReady,
        Case::Collect,
        Case::CancelUsersBooking,
        Case::ListNotifications,
        Case::ReadOwnNotification,
        Case::SendNotification,
        Case::ListUsers,
        Case::ChangeRole,
        Case::ReadEventLog,
        Case::RealtimeStats,
        Case::Me,
    ];

    fn allowed(self) -> &'static [Who] {
        match self {
            Case::ListStations | Case::GetStation | Case::ListBatteries => EVERYONE,
            Case::CreateStation | Case::AssignOperator | Case::Retire => ADMIN,
            Case::SetStationStatus | Case::AddBattery | Case::Telemetry | Case::Announce | Case::RecordReturn => STAFF,
            Case::MarkReady | Case::Collect => STAFF,
            Case::Book | Case::ListBookings | Case::ListNotifications | Case::ReadOwnNotification | Case::Me => {
                SIGNED_IN
            }
            Case::CancelUsersBooking => &[User, Admin],
            Case::SendNotification | Case::ListUsers | Case::ChangeRole | Case::ReadEventLog | Case::RealtimeStats => {
                ADMIN
            }
        }
    }

    /// Prepares what the call needs and returns it.
    async fn request(self, w: &World, who: Who) -> (Method, String, Option<Value>) {
        let s = w.station;
        match self {
            Case::ListStations => (Method::GET, "/api/stations".into(), None),
            Case::GetStation => (Method::GET, format!("/api/stations/{s}"), None),
            Case::ListBatteries => (Method::GET, format!("/api/stations/{s}/batteries"), None),
            Case::CreateStation => (Method::POST, "/api/stations".into(), Some(json!({"name": "New"}))),
            Case::SetStationStatus => (
                Method::PATCH,
                format!("/api/stations/{s}"),
                Some(json!({"status": "online"})),
            ),
            Case::AssignOperator => (
                Method::PATCH,
                format!("/api/stations/{s}"),
                Some(json!({"operator_id": w.own_operator.id})),
            ),
            Case::AddBattery => {
                let serial = format!("AUTHZ-NEW-{}", w.serials.fetch_add(1, Ordering::Relaxed));
                (
                    Method::POST,
                    format!("/api/stations/{s}/batteries"),
                    Some(json!({"serial": serial, "model": "M"})),
                )
            }
            Case::Telemetry => {
                let (battery, _) = w.fresh_battery().await;
                (
                    Method::PATCH,
                    format!("/api/batteries/{battery}"),
                    Some(json!({"soc": 42})),
                )
            }
            Case::Announce => (
                Method::POST,
                format!("/api/stations/{}/announcements", w.station),
                Some(json!({"message": "Closed for maintenance in 10 minutes", "level": "warning"})),
            ),
            Case::Retire => {
                let (battery, _) = w.fresh_battery().await;
                (
                    Method::PATCH,
                    format!("/api/batteries/{battery}"),
                    Some(json!({"status": "retired"})),
                )
            }
            Case::RecordReturn => {
                w.fresh_battery().await;
                let booking = w.app.book(s, &w.user).await;
                let path = format!("/api/bookings/{}/collect", booking["id"]);
                w.app.post(&path, Some(&w.app.admin.token), json!({})).await.expect(200);
                // Bookings take the best-charged battery, not necessarily the one just added.
                let all = w
                    .app
                    .get(&format!("/api/stations/{s}/batteries?limit=500"), None)
                    .await
                    .expect(200);
                let collected = all["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|b| b["id"] == booking["battery_id"]);
                let serial = collected.unwrap()["serial"].clone();
                (
                    Method::POST,
                    format!("/api/stations/{s}/returns"),
                    Some(json!({"serial": serial, "soc": 10})),
                )
            }
            Case::Book => {
                w.fresh_battery().await;
                (Method::POST, "/api/bookings".into(), Some(json!({"station_id": s})))
            }
            Case::ListBookings => (Method::GET, "/api/bookings".into(), None),
            Case::MarkReady => (
                Method::POST,
                format!("/api/bookings/{}/ready", w.fresh_booking().await),
                Some(json!({})),
            ),
            Case::Collect => (
                Method::POST,
                format!("/api/bookings/{}/collect", w.fresh_booking().await),
                Some(json!({})),
            ),
            Case::CancelUsersBooking => (
                Method::POST,
                format!("/api/bookings/{}/cancel", w.fresh_booking().await),
                Some(json!({})),
            ),
            Case::ListNotifications => (Method::GET, "/api/notifications".into(), None),
            Case::ReadOwnNotification => {
                let to = w.caller(who).unwrap_or(&w.user).id;
                let sent = w
                    .app
                    .post(
                        "/api/notifications",
                        Some(&w.app.admin.token),
                        json!({"user_id": to, "title": "t", "message": "m"}),
                    )
                    .await
                    .expect(201);
                (
                    Method::POST,
                    format!("/api/notifications/{}/read", sent["id"]),
                    Some(json!({})),
                )
            }
            Case::SendNotification => (
                Method::POST,
                "/api/notifications".into(),
                Some(json!({"all": true, "title": "t", "message": "m"})),
            ),
            Case::ListUsers => (Method::GET, "/api/users".into(), None),
            Case::ChangeRole => {
                let target = w
                    .app
                    .register(&format!(
                        "target-{}@swapcast.test",
                        w.serials.fetch_add(1, Ordering::Relaxed)
                    ))
                    .await;
                (
                    Method::PATCH,
                    format!("/api/users/{}", target["user"]["id"]),
                    Some(json!({"role": "operator"})),
                )
            }
            Case::ReadEventLog => (Method::GET, "/api/events".into(), None),
            Case::RealtimeStats => (Method::GET, "/api/realtime/stats".into(), None),
            Case::Me => (Method::GET, "/api/me".into(), None),
        }
    }
}

#[actix_web::test]
async fn every_endpoint_answers_each_role_as_the_contract_says() {
    // Each role books again and again here; the booking limit has tests of its own.
    let app = spawn_app_with(|s| s.max_active_bookings = 0).await;
    let own_operator = app.user("operator").await;
    let other_operator = app.user("operator").await;
    let user = app.user("user").await;
    let station = app.station("Matrix", Some(&own_operator)).await;
    app.station("Elsewhere", Some(&other_operator)).await;
    let world = World {
        app,
        station,
        user,
        own_operator,
        other_operator,
        serials: AtomicUsize::new(0),
    };

    let mut failures = Vec::new();
    for &case in Case::ALL {
        for &who in EVERYONE {
            let (method, path, body) = case.request(&world, who).await;
            let token = world.caller(who).map(|u| u.token.as_str());
            let reply = world.app.call(method.clone(), &path, token, body).await;
            let status = reply.status.as_u16();
            let expected_ok = case.allowed().contains(&who);
            let fine = match (expected_ok, who) {
                (true, _) => (200..300).contains(&status),
                (false, Anonymous) => status == 401 && reply.body["error"]["code"] == "not_authenticated",
                (false, _) => status == 403 && reply.body["error"]["code"] == "forbidden",
            };
            if !fine {
                failures.push(format!(
                    "{case:?} as {who:?}: {method} {path} → {status} {}",
                    reply.body
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "authorization mismatches:\n{}",
        failures.join("\n")
    );
}

#[actix_web::test]
async fn private_deployments_hide_stations_from_anonymous_callers() {
    let app = spawn_app_with(|s| s.public_feeds = false).await;
    let station = app.station("Private", None).await;
    app.get("/api/stations", None)
        .await
        .expect_error(401, "not_authenticated");
    app.get(&format!("/api/stations/{station}"), None)
        .await
        .expect_error(401, "not_authenticated");
    app.get(&format!("/api/stations/{station}/batteries"), None)
        .await
        .expect_error(401, "not_authenticated");
    let user = app.user("user").await;
    app.get("/api/stations", Some(&user.token)).await.expect(200);
}
