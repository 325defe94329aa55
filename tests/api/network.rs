//! A network of real size (CONTRACT §5 v2): counts kept on the station, the station list's filters
//! and sorts with exact cursors, and the network totals.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::helpers::{kinds, spawn_app, TestApp, TestUser};

/// A station's counts as the API shows them, and as its batteries say they should be.
async fn counts_agree(app: &TestApp, station: i64) -> (i64, i64, i64, i64) {
    let view = app.get(&format!("/api/stations/{station}"), None).await.expect(200);
    let shown = (
        view["available_batteries"].as_i64().unwrap(),
        view["booked_batteries"].as_i64().unwrap(),
        view["charging_batteries"].as_i64().unwrap(),
        view["total_batteries"].as_i64().unwrap(),
    );
    let batteries = app
        .get(&format!("/api/stations/{station}/batteries?limit=500"), None)
        .await
        .expect(200);
    let mut by_status: HashMap<String, i64> = HashMap::new();
    for b in batteries["items"].as_array().unwrap() {
        *by_status.entry(b["status"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let n = |s: &str| by_status.get(s).copied().unwrap_or(0);
    let counted = (
        n("available"),
        n("booked"),
        n("charging"),
        n("available") + n("booked") + n("charging"),
    );
    assert_eq!(
        shown, counted,
        "station {station}: counts on the row against its batteries"
    );
    shown
}

#[actix_web::test]
async fn station_counts_follow_every_battery_change() {
    let app = spawn_app().await;
    let (a, b) = (app.station("North", None).await, app.station("South", None).await);
    let driver = app.user("user").await;
    let admin = Some(app.admin.token.as_str());
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(app.battery(a, &format!("CNT-{i}")).await);
    }
    assert_eq!(counts_agree(&app, a).await, (4, 0, 0, 4));

    let first = app.book(a, &driver).await;
    let second = app.book(a, &driver).await;
    assert_eq!(counts_agree(&app, a).await, (2, 2, 0, 4));
    app.post(
        &format!("/api/bookings/{}/cancel", second["id"]),
        Some(&driver.token),
        json!({}),
    )
    .await
    .expect(200);
    assert_eq!(counts_agree(&app, a).await, (3, 1, 0, 4));

    // Collected: with the driver, in no count. Returned at the other station: charging there.
    app.post(&format!("/api/bookings/{}/ready", first["id"]), admin, json!({}))
        .await
        .expect(200);
    app.post(&format!("/api/bookings/{}/collect", first["id"]), admin, json!({}))
        .await
        .expect(200);
    assert_eq!(counts_agree(&app, a).await, (3, 0, 0, 3));
    let collected = first["battery_id"].as_i64().unwrap();
    let battery_serial = format!("CNT-{}", ids.iter().position(|id| *id == collected).unwrap());
    app.post(
        &format!("/api/stations/{b}/returns"),
        admin,
        json!({"serial": battery_serial, "soc": 20}),
    )
    .await
    .expect(201);
    assert_eq!(counts_agree(&app, b).await, (0, 0, 1, 1));
    assert_eq!(counts_agree(&app, a).await, (3, 0, 0, 3));

    // Charged: available. Telemetry that changes no status moves no count.
    app.patch(&format!("/api/batteries/{collected}"), admin, json!({"soc": 100}))
        .await
        .expect(200);
    assert_eq!(counts_agree(&app, b).await, (1, 0, 0, 1));
    let other = *ids.iter().find(|id| **id != collected).unwrap();
    app.patch(&format!("/api/batteries/{other}"), admin, json!({"soc": 40}))
        .await
        .expect(200);
    assert_eq!(counts_agree(&app, a).await, (3, 0, 0, 3));

    // Retired: gone from every count. A refused change moves nothing.
    app.patch(&format!("/api/batteries/{other}"), admin, json!({"status": "retired"}))
        .await
        .expect(200);
    assert_eq!(counts_agree(&app, a).await, (2, 0, 0, 2));
    app.patch(&format!("/api/batteries/{other}"), admin, json!({"soc": 50}))
        .await
        .expect_error(409, "battery_retired");
    app.post(
        &format!("/api/stations/{a}/batteries"),
        admin,
        json!({"serial": "CNT-0", "model": "M"}),
    )
    .await
    .expect_error(409, "serial_taken");
    assert_eq!(counts_agree(&app, a).await, (2, 0, 0, 2));

    // Many bookings at once: each count moves exactly once per winner.
    let drivers = futures_util::future::join_all((0..4).map(|_| app.user("user"))).await;
    let answers = futures_util::future::join_all(
        drivers
            .iter()
            .map(|d| app.post("/api/bookings", Some(&d.token), json!({"station_id": a}))),
    )
    .await;
    let won = answers.iter().filter(|r| r.status == 201).count() as i64;
    assert_eq!(won, 2, "two batteries, two winners");
    assert_eq!(counts_agree(&app, a).await, (0, 2, 0, 2));
}

/// Every page of a list, followed through its cursors.
async fn walk(app: &TestApp, query: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/stations?limit={limit}&{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get(&path, None).await.expect(200);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        all.extend(items.iter().cloned());
        match &page["next_cursor"] {
            Value::String(c) => cursor = Some(c.clone()),
            Value::Null => return all,
            other => panic!("bad cursor {other}"),
        }
    }
}

fn ids(items: &[Value]) -> Vec<i64> {
    items.iter().map(|s| s["id"].as_i64().unwrap()).collect()
}

#[actix_web::test]
async fn the_station_list_filters_sorts_and_pages_exactly() {
    let app = spawn_app().await;
    let admin = Some(app.admin.token.as_str());
    // Names out of id order, ties in availability, odd characters in names and addresses.
    let plan: [(&str, &str, &str, usize); 10] = [
        ("Taipei Main", "1 Zhongxiao Rd", "online", 3),
        ("Banqiao", "22 Wenhua Rd", "online", 1),
        ("Xinyi 100%", "7 Songren Rd", "online", 3),
        ("Neihu_East", "5 Neihu Rd", "offline", 0),
        ("Da'an", "9 Main Street", "maintenance", 2),
        ("Beitou", "2 MAIN st", "online", 0),
        ("Taipei Main", "3 Other Rd", "online", 1),
        ("Shilin", "", "online", 3),
        ("Zhongshan", "4 Nanjing Rd", "offline", 2),
        ("École Ünïcode", "8 Rue de l'Été", "online", 1),
    ];
    let mut stations = Vec::new();
    for (i, (name, address, status, batteries)) in plan.iter().enumerate() {
        let body = if address.is_empty() {
            json!({"name": name, "status": status})
        } else {
            json!({"name": name, "address": address, "status": status})
        };
        let id = app.post("/api/stations", admin, body).await.expect(201)["id"]
            .as_i64()
            .unwrap();
        for k in 0..*batteries {
            app.battery(id, &format!("L-{i}-{k}")).await;
        }
        stations.push((id, *name, *address, *status, *batteries as i64));
    }

    // Default order is by id, and every sort walks every station once, in its order, at any page size.
    let by_id: Vec<i64> = stations.iter().map(|s| s.0).collect();
    let mut by_name = stations.clone();
    by_name.sort_by(|x, y| x.1.cmp(y.1).then(x.0.cmp(&y.0)));
    let mut fewest = stations.clone();
    fewest.sort_by_key(|s| (s.4, s.0));
    let mut most = stations.clone();
    most.sort_by_key(|s| (-s.4, -s.0));
    for limit in [1, 2, 4, 50] {
        assert_eq!(ids(&walk(&app, "", limit).await), by_id);
        assert_eq!(ids(&walk(&app, "sort=name", limit).await), ids_of(&by_name));
        assert_eq!(ids(&walk(&app, "sort=available", limit).await), ids_of(&fewest));
        assert_eq!(ids(&walk(&app, "sort=-available", limit).await), ids_of(&most));
    }

    // Filters, alone and together, under a sort.
    let expect =
        |keep: &dyn Fn(&Planned) -> bool| -> Vec<i64> { most.iter().filter(|s| keep(s)).map(|s| s.0).collect() };
    let main = expect(&|s| s.1.to_lowercase().contains("main") || s.2.to_lowercase().contains("main"));
    assert_eq!(main.len(), 4);
    assert_eq!(ids(&walk(&app, "q=MaIn&sort=-available", 2).await), main);
    assert_eq!(
        ids(&walk(&app, "q=100%25&sort=-available", 2).await),
        expect(&|s| s.1.contains("100%"))
    );
    assert_eq!(
        ids(&walk(&app, "q=_&sort=-available", 2).await),
        expect(&|s| s.1.contains('_'))
    );
    assert_eq!(
        ids(&walk(&app, "q=n'&sort=-available", 2).await),
        expect(&|s| s.1.contains("n'"))
    );
    assert_eq!(
        ids(&walk(&app, "status=offline&sort=-available", 1).await),
        expect(&|s| s.3 == "offline")
    );
    assert_eq!(
        ids(&walk(&app, "available_min=1&sort=-available", 3).await),
        expect(&|s| s.4 >= 1)
    );
    assert_eq!(
        ids(&walk(&app, "q=rd&status=online&available_min=2&sort=-available", 1).await),
        expect(&|s| s.2.to_lowercase().contains("rd") && s.3 == "online" && s.4 >= 2)
    );
    assert!(walk(&app, "q=nowhere", 5).await.is_empty());
    // Case-insensitive beyond ASCII, on SQLite as on PostgreSQL.
    let ecole = expect(&|s| s.1.starts_with('É'));
    assert_eq!(ecole.len(), 1);
    for q in ["ÉCOLE", "école", "ünïcode", "ÜNÏ", "l'été"] {
        assert_eq!(
            ids(&walk(&app, &format!("q={q}&sort=-available"), 2).await),
            ecole,
            "q={q}"
        );
    }

    // A station that changes between pages neither repeats nor hides the others.
    let first = app.get("/api/stations?sort=-available&limit=3", None).await.expect(200);
    let seen = ids(first["items"].as_array().unwrap());
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let moved = seen[0];
    app.battery(moved, "L-moved").await;
    let rest = app
        .get(&format!("/api/stations?sort=-available&limit=50&cursor={cursor}"), None)
        .await
        .expect(200);
    let rest = ids(rest["items"].as_array().unwrap());
    let mut together = seen.clone();
    together.extend(&rest);
    together.sort();
    assert_eq!(together, {
        let mut all = by_id.clone();
        all.sort();
        all
    });

    // Bad parameters are 422s naming the parameter; a cursor of one sort is refused by another.
    for bad in [
        "sort=price",
        "status=closed",
        "available_min=-1",
        "available_min=x",
        "cursor=zzz",
        "sort=name&cursor=n.1.%%%",
        &format!("sort=name&cursor={cursor}"),
        "sort=available&cursor=d.1.2",
    ] {
        let reply = app
            .get(&format!("/api/stations?{bad}"), None)
            .await
            .expect_error(422, "validation_failed");
        assert!(reply["error"]["fields"].is_object(), "{bad}: {reply}");
    }
}

/// (id, name, address, status, batteries) of a station the test made.
type Planned<'a> = (i64, &'a str, &'a str, &'a str, i64);

fn ids_of(stations: &[Planned]) -> Vec<i64> {
    stations.iter().map(|s| s.0).collect()
}

#[actix_web::test]
async fn network_totals_sum_the_stations() {
    let app = spawn_app().await;
    let admin = Some(app.admin.token.as_str());
    let empty = app.get("/api/network", None).await.expect(200);
    assert_eq!(empty["stations"], 0);
    assert_eq!(empty["events_per_minute"].as_array().unwrap().len(), 60);
    let a = app.station("A", None).await;
    let b = app
        .post("/api/stations", admin, json!({"name": "B", "status": "offline"}))
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    for i in 0..3 {
        app.battery(a, &format!("NT-A{i}")).await;
    }
    app.battery(b, "NT-B0").await;
    let driver = app.user("user").await;
    app.book(a, &driver).await;
    let totals = app.get("/api/network", None).await.expect(200);
    assert_eq!(totals["stations"], 2);
    assert_eq!(
        totals["stations_by_status"],
        json!({"online": 1, "offline": 1, "maintenance": 0})
    );
    assert_eq!(
        (
            &totals["available_batteries"],
            &totals["booked_batteries"],
            &totals["charging_batteries"],
            &totals["total_batteries"]
        ),
        (&json!(3), &json!(1), &json!(0), &json!(4))
    );
    let per_minute: i64 = totals["events_per_minute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .sum();
    let committed = app.all_events_after(0).await.len() as i64;
    assert_eq!(per_minute, committed, "every event of this test is in the last hour");
    assert_eq!(totals["latest_event_id"], app.last_event_id().await);
}

#[actix_web::test]
async fn a_new_all_stations_snapshot_shows_changes_that_wrote_no_event() {
    use crate::wsclient::Client;
    let app = spawn_app().await;
    let admin = Some(app.admin.token.as_str());
    let first = app.station("First", None).await;
    // The snapshot a connection gets, as (station id, name) pairs.
    let snapshot = |n: usize| {
        let app = &app;
        async move {
            let (mut client, _) = Client::open(app, "/ws/stations/", None).await;
            let rows = client.events(n).await;
            let mut rows: Vec<(i64, String)> = rows
                .iter()
                .map(|r| {
                    (
                        r["station_id"].as_i64().unwrap(),
                        r["station_name"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            rows.sort();
            rows
        }
    };
    assert_eq!(snapshot(1).await, [(first, "First".to_owned())]);
    // Neither a new station nor a new name is an event; the next snapshot shows both anyway.
    let second = app.station("Second", None).await;
    app.patch(
        &format!("/api/stations/{first}"),
        admin,
        json!({"name": "First, renamed"}),
    )
    .await
    .expect(200);
    assert_eq!(
        snapshot(2).await,
        [(first, "First, renamed".to_owned()), (second, "Second".to_owned())]
    );
}

/// A counter from the in-process server's `/metrics`.
async fn metric(app: &TestApp, name: &str) -> f64 {
    crate::helpers::metric_at(&app.url("/metrics"), name).await
}

#[actix_web::test]
async fn a_snapshot_a_little_behind_is_shared_and_the_events_since_are_replayed() {
    use crate::wsclient::Client;
    let app = spawn_app().await;
    let stations: Vec<i64> = futures_util::future::join_all(["A", "B", "C"].map(|n| app.station(n, None))).await;
    let (mut first, _) = Client::open(&app, "/ws/stations/", None).await;
    let rows = first.events(3).await;
    let position = rows[0]["last_event_id"].as_i64().unwrap();
    assert_eq!(metric(&app, "swapcast_snapshot_reads_total").await, 1.0);

    // Two events later, the next connection gets the same snapshot, then those two events from
    // the log, in order, then live ones — the stations are not read again.
    app.battery(stations[1], "BEHIND-1").await;
    let (mut second, _) = Client::open(&app, "/ws/stations/", None).await;
    let snapshot = second.events(3).await;
    assert!(snapshot
        .iter()
        .all(|r| r["action"] == "snapshot" && r["last_event_id"] == position));
    let replayed = second.events(2).await;
    assert_eq!(kinds(&replayed), ["battery_added", "inventory_update"]);
    assert_eq!(replayed[0]["event_id"], position + 1);
    assert_eq!(replayed[1]["event_id"], position + 2);
    assert_eq!(replayed[1]["available_batteries"], 1);
    app.battery(stations[2], "BEHIND-2").await;
    let ids = |events: Vec<serde_json::Value>| -> Vec<i64> {
        events.iter().map(|e| e["event_id"].as_i64().unwrap()).collect()
    };
    // The first had the two replayed ones live; both get the next two live, once.
    assert_eq!(
        ids(first.events(4).await),
        (position + 1..=position + 4).collect::<Vec<_>>()
    );
    assert_eq!(ids(second.events(2).await), [position + 3, position + 4]);
    assert_eq!(metric(&app, "swapcast_snapshot_reads_total").await, 1.0);
}

/// What a fresh feed of one station opens with: its snapshot (as name, available batteries and
/// position).
async fn station_snapshot(app: &TestApp, station: i64, token: Option<&str>) -> (String, i64, i64) {
    use crate::wsclient::Client;
    let (mut client, _) = Client::open(app, &format!("/ws/stations/{station}/"), token).await;
    let snapshot = client.next_json().await;
    assert_eq!(snapshot["action"], "snapshot", "{snapshot}");
    (
        snapshot["station_name"].as_str().unwrap().to_owned(),
        snapshot["available_batteries"].as_i64().unwrap(),
        snapshot["last_event_id"].as_i64().unwrap(),
    )
}

/// A station of one operator with two batteries, the operator to hand it over to, and a driver
/// to book there.
async fn handover(app: &TestApp) -> (TestUser, TestUser, TestUser, i64) {
    let operator = app.user("operator").await;
    let successor = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("Handed over", Some(&operator)).await;
    app.battery(station, "HO-1").await;
    app.battery(station, "HO-2").await;
    (operator, successor, driver, station)
}

/// Changes the app's database without the app: as another node whose word was lost, or an
/// offline import, does.
fn behind_the_servers_back(app: &TestApp, statements: &[&str]) {
    use diesel::RunQueryDsl;
    let pool = swapcast::db::connect(&app.db.url(), Some(1)).unwrap();
    let mut conn = pool.get().unwrap();
    for sql in statements {
        diesel::sql_query(*sql).execute(&mut *conn).unwrap();
    }
}

/// A station's feed opens with the station as kept from its last opening — no database read —
/// only while nothing can have changed it: an event of the station, a change without an event
/// made here, or one made elsewhere (another node, an offline import: a newer stations revision).
#[actix_web::test]
async fn a_station_feed_opens_with_the_station_as_kept_until_anything_changes_it() {
    let app = spawn_app().await;
    let station = app.station("Kept", None).await;
    let other = app.station("Other", None).await;
    app.battery(station, "KEPT-1").await;
    let reads = || metric(&app, "swapcast_station_snapshot_reads_total");
    let first = station_snapshot(&app, station, None).await;
    assert_eq!((first.0.as_str(), first.1), ("Kept", 1));
    assert_eq!(reads().await, 1.0);
    assert_eq!(station_snapshot(&app, station, None).await, first, "as kept");
    assert_eq!(reads().await, 1.0, "the second opening read nothing");

    // Another station's event leaves it kept; its own event does not.
    app.battery(other, "OTHER-1").await;
    assert_eq!(station_snapshot(&app, station, None).await, first);
    assert_eq!(reads().await, 1.0);
    app.battery(station, "KEPT-2").await;
    let added = station_snapshot(&app, station, None).await;
    assert_eq!(added.1, 2, "{added:?}");
    assert!(added.2 > first.2, "{added:?} after {first:?}");
    assert_eq!(reads().await, 2.0);

    // A new name is no event.
    app.patch(
        &format!("/api/stations/{station}"),
        Some(&app.admin.token),
        json!({"name": "Kept, renamed"}),
    )
    .await
    .expect(200);
    assert_eq!(station_snapshot(&app, station, None).await.0, "Kept, renamed");

    // Changed behind this server's back, as another node whose word was lost or an import does:
    // the publisher's poll of the log sees the newer revision within its second.
    behind_the_servers_back(
        &app,
        &[
            &format!("UPDATE stations SET name = 'Renamed elsewhere' WHERE id = {station}"),
            "UPDATE event_counter SET stations_revision = stations_revision + 1",
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (name, ..) = station_snapshot(&app, station, None).await;
        if name == "Renamed elsewhere" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still opens as {name}");
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An operator taken off a station gets no personal data on a feed opened after, though the
/// station was kept from an opening of theirs before; the new operator does.
#[actix_web::test]
async fn a_station_kept_from_before_a_new_operator_shows_personal_data_to_the_new_one_only() {
    use crate::wsclient::Client;
    let app = spawn_app().await;
    let (operator, successor, driver, station) = handover(&app).await;
    station_snapshot(&app, station, Some(&operator.token)).await;
    app.patch(
        &format!("/api/stations/{station}"),
        Some(&app.admin.token),
        json!({"operator_id": successor.id}),
    )
    .await
    .expect(200);
    let path = format!("/ws/stations/{station}/");
    let (mut former, _) = Client::open(&app, &path, Some(&operator.token)).await;
    let (mut current, _) = Client::open(&app, &path, Some(&successor.token)).await;
    for client in [&mut former, &mut current] {
        assert_eq!(client.next_json().await["action"], "snapshot");
    }
    app.book(station, &driver).await;
    let booked = former.next_json().await;
    assert_eq!(booked["type"], "battery_booked", "{booked}");
    assert!(
        booked.get("user").is_none(),
        "the former operator sees no email: {booked}"
    );
    let booked = current.next_json().await;
    assert_eq!(booked["user"], driver.email, "{booked}");
}

/// An operator's feed opens with the station read, never as kept: who sees bookers' emails
/// depends on who operates it now, and a station handed over elsewhere is forgotten here only
/// once word of it arrives (here: a change behind the server's back that says nothing).
#[actix_web::test]
async fn an_operators_feed_reads_who_operates_the_station_now() {
    use crate::wsclient::Client;
    let app = spawn_app().await;
    let (operator, successor, driver, station) = handover(&app).await;
    station_snapshot(&app, station, None).await;
    let reads = || metric(&app, "swapcast_station_snapshot_reads_total");
    assert_eq!(reads().await, 1.0);
    behind_the_servers_back(
        &app,
        &[&format!(
            "UPDATE stations SET operator_id = {} WHERE id = {station}",
            successor.id
        )],
    );
    // Anyone else still opens with the station as kept.
    station_snapshot(&app, station, Some(&driver.token)).await;
    station_snapshot(&app, station, Some(&app.admin.token)).await;
    assert_eq!(reads().await, 1.0);
    let path = format!("/ws/stations/{station}/");
    let (mut former, _) = Client::open(&app, &path, Some(&operator.token)).await;
    assert_eq!(former.next_json().await["action"], "snapshot");
    assert_eq!(reads().await, 2.0, "the operator's opening read the station");
    app.book(station, &driver).await;
    let booked = former.next_json().await;
    assert_eq!(booked["type"], "battery_booked", "{booked}");
    assert!(
        booked.get("user").is_none(),
        "the former operator sees no email: {booked}"
    );
}
