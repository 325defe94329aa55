//! Presence on one node (CONTRACT §4.5): who watches a station, who may see who, and
//! `viewer_joined` / `viewer_left` for the station's staff — once per user, not per connection.
//! Two nodes and a killed one are in `cluster.rs`.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};
use crate::wsclient::Client;

fn path(station: i64) -> String {
    format!("/api/stations/{station}/presence")
}

async fn presence(app: &TestApp, station: i64, token: Option<&str>) -> Value {
    app.get(&path(station), token).await.expect(200)
}

/// A station feed, open once its snapshot arrived (it counts from then on).
async fn seed_viewer(app: &TestApp, station: i64, token: Option<&str>) -> Client {
    let (mut client, _) = Client::open(app, &format!("/ws/stations/{station}/"), token).await;
    client.until(|m| m["action"] == "snapshot").await;
    client
}

/// A `/ws` connection subscribed to `station:{id}` (once its snapshot arrived).
async fn ws_viewer(app: &TestApp, station: i64, token: Option<&str>) -> Client {
    let (mut client, _) = Client::open(app, "/ws", token).await;
    client.subscribe_station(station).await;
    client
}

/// The next message that is not a station's snapshot, event or the automatic subscriptions.
async fn next_notice(client: &mut Client) -> Value {
    client
        .until(|m| {
            let kind = m["type"].as_str().unwrap_or_default();
            kind.starts_with("viewer_") || kind == "station_announcement"
        })
        .await
}

/// An announcement as a marker: whatever staff were told before it came first.
async fn marker(app: &TestApp, station: i64, text: &str) {
    app.post(
        &format!("/api/stations/{station}/announcements"),
        Some(&app.admin.token),
        json!({"message": text}),
    )
    .await
    .expect(201);
}

fn ids(presence: &Value) -> Vec<i64> {
    let mut ids: Vec<i64> = presence["signed_in"]
        .as_array()
        .unwrap_or_else(|| panic!("no signed_in: {presence}"))
        .iter()
        .map(|v| v["user_id"].as_i64().unwrap())
        .collect();
    ids.sort();
    ids
}

#[actix_web::test]
async fn viewers_count_per_connection_and_only_staff_see_who() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let other_operator = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("Watched", Some(&operator)).await;
    app.station("Theirs", Some(&other_operator)).await;
    assert_eq!(
        presence(&app, station, None).await,
        json!({"station_id": station, "viewers": 0})
    );

    let _anonymous = seed_viewer(&app, station, None).await;
    let _tab1 = seed_viewer(&app, station, Some(&driver.token)).await;
    let _tab2 = ws_viewer(&app, station, Some(&driver.token)).await;
    // The all-stations feed watches no one station.
    let (mut all, _) = Client::open(&app, "/ws/stations/", Some(&driver.token)).await;
    all.until(|m| m["action"] == "snapshot").await;

    for token in [None, Some(driver.token.as_str()), Some(other_operator.token.as_str())] {
        let seen = presence(&app, station, token).await;
        assert_eq!(seen, json!({"station_id": station, "viewers": 3}), "{token:?}");
    }
    for token in [&app.admin.token, &operator.token] {
        let seen = presence(&app, station, Some(token)).await;
        assert_eq!(seen["viewers"], 3);
        assert_eq!(ids(&seen), [driver.id], "the driver once, for two tabs");
        let entry = &seen["signed_in"][0];
        assert_eq!(
            (&entry["display_name"], &entry["role"]),
            (&json!("Driver"), &json!("user"))
        );
        assert!(entry["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{entry}");
    }
    app.get(&path(999_999), None).await.expect_error(404, "not_found");
}

#[actix_web::test]
async fn staff_hear_a_user_come_with_the_first_connection_and_go_with_the_last() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("Watched", Some(&operator)).await;
    let elsewhere = app.station("Elsewhere", None).await;
    // The operator is subscribed to their station on sign-in, and counts as a viewer themselves.
    let (mut staff, _) = Client::open(&app, "/ws", Some(&operator.token)).await;
    staff
        .until(|m| m["action"] == "snapshot" && m["channel"] == format!("station:{station}").as_str())
        .await;
    let (mut admin, _) = Client::open(&app, "/ws", Some(&app.admin.token)).await;
    admin.subscribe_station(station).await;
    let first = next_notice(&mut staff).await;
    assert_eq!(
        (&first["type"], &first["user_id"], &first["viewers"]),
        (&json!("viewer_joined"), &json!(app.admin.id), &json!(2)),
        "{first}"
    );
    assert_eq!(first["channel"], format!("station:{station}"));
    // A driver watching is not staff: they are told nothing of who comes.
    let (mut bystander, _) = Client::open(&app, "/ws", Some(&app.user("user").await.token)).await;
    bystander.subscribe_station(station).await;
    assert_eq!(next_notice(&mut staff).await["type"], "viewer_joined");

    let _anonymous = seed_viewer(&app, station, None).await;
    let _other_station = seed_viewer(&app, elsewhere, Some(&driver.token)).await;
    let tab1 = seed_viewer(&app, station, Some(&driver.token)).await;
    let joined = next_notice(&mut staff).await;
    assert_eq!(
        (
            &joined["type"],
            &joined["user_id"],
            &joined["display_name"],
            &joined["viewers"]
        ),
        (&json!("viewer_joined"), &json!(driver.id), &json!("Driver"), &json!(5)),
        "anonymous viewers and other stations changed nothing but the count: {joined}"
    );
    let tab2 = ws_viewer(&app, station, Some(&driver.token)).await;
    drop(tab1);
    marker(&app, station, "after the second tab and the first tab's close").await;
    assert_eq!(
        next_notice(&mut staff).await["type"],
        "station_announcement",
        "a second tab, or one of two closed, is no join or leave"
    );
    drop(tab2);
    let left = next_notice(&mut staff).await;
    assert_eq!(
        (&left["type"], &left["user_id"], &left["viewers"]),
        (&json!("viewer_left"), &json!(driver.id), &json!(4)),
        "{left}"
    );
    assert_eq!(
        next_notice(&mut bystander).await["type"],
        "station_announcement",
        "a non-staff viewer hears of no one"
    );
    let now = presence(&app, station, Some(&operator.token)).await;
    assert_eq!(now["viewers"], 4);
    assert!(!ids(&now).contains(&driver.id), "no ghost of the driver: {now}");
}

#[actix_web::test]
async fn a_token_renewed_in_place_is_no_leave_and_join() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("Watched", Some(&operator)).await;
    let (mut staff, _) = Client::open(&app, "/ws", Some(&operator.token)).await;
    staff.until(|m| m["action"] == "snapshot").await;
    let mut viewer = ws_viewer(&app, station, Some(&driver.token)).await;
    assert_eq!(next_notice(&mut staff).await["user_id"], driver.id);
    let before = presence(&app, station, Some(&operator.token)).await;

    let fresh = app.login(&driver.email, crate::helpers::PASSWORD).await;
    viewer
        .send_text(&json!({"type": "authenticate", "token": fresh.token}).to_string())
        .await;
    viewer.until(|m| m["type"] == "authenticated").await;
    marker(&app, station, "after the renewal").await;
    assert_eq!(
        next_notice(&mut staff).await["type"],
        "station_announcement",
        "a renewal is no leave and join"
    );
    let after = presence(&app, station, Some(&operator.token)).await;
    assert_eq!(after, before, "the same viewers, since the same moment");

    // Signing in as someone else on the same connection is a leave and a join.
    let other = app.user("user").await;
    viewer
        .send_text(&json!({"type": "authenticate", "token": other.token}).to_string())
        .await;
    viewer.until(|m| m["type"] == "authenticated").await;
    viewer.subscribe_station(station).await;
    let mut told: Vec<(String, i64)> = Vec::new();
    while told.len() < 2 {
        let notice = next_notice(&mut staff).await;
        told.push((
            notice["type"].as_str().unwrap().to_owned(),
            notice["user_id"].as_i64().unwrap(),
        ));
    }
    told.sort();
    assert_eq!(
        told,
        [
            ("viewer_joined".to_owned(), other.id),
            ("viewer_left".to_owned(), driver.id)
        ]
    );
    assert_eq!(ids(&presence(&app, station, Some(&operator.token)).await), {
        let mut both = vec![operator.id, other.id];
        both.sort();
        both
    });
}

#[actix_web::test]
async fn the_ws_presence_message_answers_like_rest_and_refuses_bad_input() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let driver = app.user("user").await;
    let station = app.station("Watched", Some(&operator)).await;
    let _watching = seed_viewer(&app, station, Some(&driver.token)).await;
    let channel = format!("station:{station}");
    let ask = |channel: Value| json!({"type": "presence", "channel": channel}).to_string();

    let (mut staff, _) = Client::open(&app, "/ws", Some(&operator.token)).await;
    staff.until(|m| m["action"] == "snapshot").await;
    staff.send_text(&ask(json!(channel))).await;
    let listed = staff.until(|m| m["type"] == "presence").await;
    assert_eq!((&listed["channel"], &listed["viewers"]), (&json!(channel), &json!(2)));
    let mut both = vec![operator.id, driver.id];
    both.sort();
    assert_eq!(ids(&listed), both);

    // Anonymous and not subscribed: the count alone.
    let (mut anonymous, _) = Client::open(&app, "/ws", None).await;
    anonymous.send_text(&ask(json!(channel))).await;
    let counted = anonymous.until(|m| m["type"] == "presence").await;
    assert_eq!(counted, json!({"type": "presence", "channel": channel, "viewers": 2}));
    // A `request_id` comes back with the answer, whatever JSON it is.
    for id in [json!("p1"), json!(7)] {
        let asked = json!({"type": "presence", "channel": channel, "request_id": id});
        anonymous.send_text(&asked.to_string()).await;
        let answered = anonymous.until(|m| m["type"] == "presence").await;
        assert_eq!(answered["request_id"], id, "{answered}");
    }

    for (bad, code) in [
        (json!("station:999999"), "not_found"),
        (json!("stations"), "unknown_channel"),
        (json!("nonsense"), "unknown_channel"),
        (json!(7), "unknown_channel"),
        (Value::Null, "unknown_channel"),
    ] {
        anonymous.send_text(&ask(bad.clone())).await;
        let refused = anonymous.until(|m| m["type"] == "error").await;
        assert_eq!(refused["code"], code, "{bad}: {refused}");
    }
    // A seed feed knows no such message.
    let (mut seed, _) = Client::open(&app, &format!("/ws/stations/{station}/"), None).await;
    seed.send_text(&ask(json!(channel))).await;
    let unknown = seed.until(|m| m["type"] == "error").await;
    assert!(unknown["message"].as_str().unwrap().contains("presence"), "{unknown}");
}

/// A renewal re-checks every subscription while the client may be leaving one: the re-check must
/// not bring back a channel left meanwhile (and with it a viewer who left). An operator's
/// re-check subscribes again (their stations may have changed), so the viewer is an operator,
/// subscribed to their station on sign-in.
#[actix_web::test]
async fn a_channel_left_while_a_renewal_rechecks_stays_left() {
    let app = spawn_app().await;
    let operator = app.user("operator").await;
    let station = app.station("Watched", Some(&operator)).await;
    let channel = format!("station:{station}");
    for _ in 0..20 {
        // The last round's connection is gone first.
        let mut waited = 0;
        while presence(&app, station, None).await["viewers"] != 0 {
            waited += 1;
            assert!(waited < 500, "the last round's viewer never left");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (mut viewer, _) = Client::open(&app, "/ws", Some(&operator.token)).await;
        viewer
            .until(|m| m["action"] == "snapshot" && m["channel"] == channel.as_str())
            .await;
        let fresh = app.login(&operator.email, crate::helpers::PASSWORD).await;
        viewer
            .send_text(&json!({"type": "authenticate", "token": fresh.token}).to_string())
            .await;
        viewer
            .send_text(&json!({"type": "unsubscribe", "channel": channel}).to_string())
            .await;
        let mut answered = (false, false);
        while answered != (true, true) {
            let m = viewer
                .until(|m| m["type"] == "unsubscribed" || m["type"] == "authenticated")
                .await;
            if m["type"] == "unsubscribed" {
                answered.0 = true;
            } else {
                answered.1 = true;
            }
        }
        // The leave reaches presence a hop after `unsubscribed` is sent: wait for it; then
        // another renewal round trip, and the first one's re-check has had its turn.
        let mut waited = 0;
        while presence(&app, station, None).await["viewers"] != 0 {
            waited += 1;
            assert!(waited < 500, "the channel left is still counted");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        viewer
            .send_text(&json!({"type": "authenticate", "token": fresh.token}).to_string())
            .await;
        viewer.until(|m| m["type"] == "authenticated").await;
        let seen = presence(&app, station, None).await;
        assert_eq!(seen["viewers"], 0, "a channel left came back: {seen}");
    }
}

/// A client that subscribes and unsubscribes at once (a dashboard paging past a station) leaves
/// no ghost: the join, which runs on after the leave, registers no viewer. Staff hear a leave
/// for every join they heard.
#[actix_web::test]
async fn a_subscription_left_at_once_leaves_no_ghost() {
    let app = spawn_app().await;
    let station = app.station("Paged past", None).await;
    let channel = format!("station:{station}");
    let (mut staff, _) = Client::open(&app, "/ws", Some(&app.admin.token)).await;
    staff.subscribe_station(station).await;
    let mut drivers = Vec::new();
    for _ in 0..20 {
        let driver = app.user("user").await;
        let (mut client, _) = Client::open(&app, "/ws", Some(&driver.token)).await;
        for kind in ["subscribe", "unsubscribe"] {
            client
                .send_text(&json!({"type": kind, "channel": channel}).to_string())
                .await;
        }
        drivers.push(client);
    }
    for client in &mut drivers {
        client.until(|m| m["type"] == "unsubscribed").await;
    }
    let mut waited = 0;
    loop {
        let seen = presence(&app, station, Some(&app.admin.token)).await;
        if seen["viewers"] == 1 {
            assert_eq!(ids(&seen), vec![app.admin.id], "{seen}");
            break;
        }
        waited += 1;
        assert!(waited < 500, "viewers who left are still counted: {seen}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    marker(&app, station, "after everyone left").await;
    let mut joined = std::collections::HashMap::<i64, i64>::new();
    loop {
        let notice = next_notice(&mut staff).await;
        let user = notice["user_id"].as_i64().unwrap_or_default();
        match notice["type"].as_str() {
            Some("viewer_joined") => *joined.entry(user).or_default() += 1,
            Some("viewer_left") => *joined.entry(user).or_default() -= 1,
            _ => break,
        }
    }
    assert!(joined.values().all(|n| *n == 0), "a join with no leave: {joined:?}");
    drop(drivers);
}

/// What a client sends right after `authenticate` is handled as the identity it asked for: a
/// `subscribe` sent without waiting for `authenticated` is made (as the new user, counted in
/// presence), never dropped by the sign-in that completes after it.
#[actix_web::test]
async fn a_subscribe_sent_right_after_authenticate_is_made_as_the_new_user() {
    let app = spawn_app().await;
    let station = app.station("Straight in", None).await;
    let channel = format!("station:{station}");
    let first = app.user("user").await;
    let mut clients = Vec::new();
    for round in 0..20 {
        let driver = app.user("user").await;
        // Anonymous, then signing in; or signed in as one user, then as another.
        let at_connect = (round % 2 == 1).then_some(first.token.as_str());
        let (mut client, _) = Client::open(&app, "/ws", at_connect).await;
        client
            .send_text(&json!({"type": "authenticate", "token": driver.token}).to_string())
            .await;
        client
            .send_text(&json!({"type": "subscribe", "channel": channel}).to_string())
            .await;
        // (A connection signed in at connect is told so first.)
        client
            .until(|m| m["type"] == "authenticated" && m["user_id"] == driver.id)
            .await;
        client
            .until(|m| m["action"] == "snapshot" && m["channel"] == channel.as_str())
            .await;
        clients.push((client, driver.id));
    }
    let seen = presence(&app, station, Some(&app.admin.token)).await;
    assert_eq!(seen["viewers"], 20, "{seen}");
    let mut expected: Vec<i64> = clients.iter().map(|(_, id)| *id).collect();
    expected.sort();
    assert_eq!(ids(&seen), expected, "counted as the users they signed in as");
}

/// Signing in as another user starts the subscriptions over, and says so: each channel held is
/// dropped with `unsubscribed` (`signed_in_again`), never silently, and presence follows.
#[actix_web::test]
async fn signing_in_as_another_user_says_which_channels_it_dropped() {
    let app = spawn_app().await;
    let station = app.station("Left behind", None).await;
    let channel = format!("station:{station}");
    let driver = app.user("user").await;
    let (mut client, _) = Client::open(&app, "/ws", None).await;
    client.subscribe_station(station).await;
    assert_eq!(presence(&app, station, None).await["viewers"], 1);
    client
        .send_text(&json!({"type": "authenticate", "token": driver.token}).to_string())
        .await;
    let dropped = client.until(|m| m["type"] == "unsubscribed").await;
    assert_eq!(
        (&dropped["channel"], &dropped["reason"]),
        (&json!(channel), &json!("signed_in_again")),
        "{dropped}"
    );
    let authenticated = client.until(|m| m["type"] == "authenticated").await;
    assert_eq!(authenticated["subscriptions"], json!(["notifications"]));
    let mut waited = 0;
    while presence(&app, station, None).await["viewers"] != 0 {
        waited += 1;
        assert!(waited < 500, "the dropped channel is still counted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Subscribing again is as the new user.
    client.subscribe_station(station).await;
    let seen = presence(&app, station, Some(&app.admin.token)).await;
    assert_eq!(ids(&seen), vec![driver.id], "{seen}");
}
