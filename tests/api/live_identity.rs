//! A live connection is never worth more than its credentials (CONTRACT §3 v2): however it
//! authenticated — header, query, cookie, in band, in band again as another user — deactivation
//! closes it (4003), the end of its sign-in session closes it (4001), its token's `exp` closes it
//! (4002, after `token_expiring` on `/ws`), and a demotion or a station taken away narrows it at
//! once; requests over `/ws` act as the account is now. Plus sign-in sessions themselves (logout,
//! `?all=true`, refresh-token reuse) and refusals whose Close is the only frame.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, TestApp, PASSWORD};
use crate::wsclient::Client;

/// The contract gives one second; the rest is slack for a loaded CI machine.
const REVOCATION_DEADLINE: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Header,
    Query,
    Cookie,
    InBand,
    /// Connected as a decoy, then signed in band as the subject.
    InBandAsAnother,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Revocation {
    Deactivate,
    Demote,
    Reassign,
    Logout,
    Expiry,
}

/// A fresh sign-in: its access and refresh tokens.
struct SignIn {
    id: i64,
    access: String,
    refresh: String,
}

async fn sign_in(app: &TestApp, email: &str) -> SignIn {
    let body = app
        .post("/api/auth/login", None, json!({"email": email, "password": PASSWORD}))
        .await
        .expect(200);
    SignIn {
        id: body["user"]["id"].as_i64().unwrap(),
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

/// A new user with this role, signed in.
async fn subject(app: &TestApp, role: &str) -> (String, SignIn) {
    let user = app.user(role).await;
    let signed = sign_in(app, &user.email).await;
    (user.email, signed)
}

/// Reads until a message matching `want` (or panics on a close).
async fn until(client: &mut Client, want: impl Fn(&Value) -> bool) -> Value {
    loop {
        let message = client.next_json().await;
        if want(&message) {
            return message;
        }
    }
}

/// Opens `path` as `who` in the way `via` says, and reads the greeting (and, in band, the
/// `authenticated` of `who`).
async fn connect(app: &TestApp, path: &str, via: Via, who: &SignIn, decoy: &str) -> Client {
    let token = who.access.as_str();
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    let mut client = match via {
        Via::Header => Client::connect_with(app, path, &bearer(token)).await,
        Via::Query => Client::connect(app, &format!("{path}?token={token}")).await,
        Via::Cookie => Client::connect_with(app, path, &[("cookie", format!("swapcast_token={token}"))]).await,
        Via::InBand => Client::connect(app, path).await,
        Via::InBandAsAnother => Client::connect_with(app, path, &bearer(decoy)).await,
    };
    let hello = client.next_json().await;
    assert_eq!(hello["type"], "connection_established", "{hello}");
    if matches!(via, Via::InBand | Via::InBandAsAnother) {
        if via == Via::InBandAsAnother {
            until(&mut client, |m| m["type"] == "authenticated").await;
        }
        client
            .send_text(&json!({"type": "authenticate", "token": token}).to_string())
            .await;
        until(&mut client, |m| m["type"] == "authenticated" && m["user_id"] == who.id).await;
    }
    client
}

/// Whether a connection still answers (a ping gets its pong, whatever else arrives first).
async fn answers(client: &mut Client) {
    client.send_text(r#"{"type":"ping","timestamp":"still-here"}"#).await;
    until(client, |m| m["type"] == "pong" && m["timestamp"] == "still-here").await;
}

/// The close code that arrives next, and how long after `since` it came.
async fn closed(client: &mut Client, since: Instant) -> (Option<u16>, Duration) {
    let code = client.close_code().await;
    (code, since.elapsed())
}

async fn scene(ttl: Option<u64>) -> TestApp {
    spawn_app_with(|s| {
        if let Some(ttl) = ttl {
            s.access_ttl = ttl;
        }
        s.max_active_bookings = 0;
        // Every cell signs the admin in at once; the sign-in throttle has tests of its own.
        s.login_attempts = 0;
    })
    .await
}

/// One cell of the matrix: connect to `path` via `via`, revoke, observe the contract's outcome.
/// Every cell has its own users and station, so cells running side by side cannot see each
/// other's changes (an all-stations feed looks at its own station's events only).
async fn case(app: &TestApp, path: &str, via: Via, revocation: Revocation) {
    let label = format!("{path} via {via:?}, {revocation:?}");
    // Tokens may be short-lived here (the expiry case): the admin signs in for this cell.
    let admin_token = sign_in(app, &app.admin.email).await.access;
    let admin = Some(admin_token.as_str());
    let role = match revocation {
        Revocation::Demote => "admin",
        Revocation::Reassign => "operator",
        _ => "user",
    };
    let user = app.user(role).await;
    let decoy = app.user("user").await.token;
    let operator = (revocation == Revocation::Reassign).then_some(user.id);
    let station = app
        .post(
            "/api/stations",
            admin,
            json!({"name": format!("Cell of {}", user.id), "operator_id": operator}),
        )
        .await
        .expect(201)["id"]
        .as_i64()
        .unwrap();
    app.post(
        &format!("/api/stations/{station}/batteries"),
        admin,
        json!({"serial": format!("CELL-{station}"), "model": "Cell Battery"}),
    )
    .await
    .expect(201);
    let who = sign_in(app, &user.email).await;
    let path = path.replace("{S}", &station.to_string());
    let multiplexed = path == "/ws";
    let mut client = connect(app, &path, via, &who, &decoy).await;
    if multiplexed && revocation == Revocation::Demote {
        client.send_text(r#"{"type":"subscribe","channel":"system"}"#).await;
        until(&mut client, |m| m["type"] == "subscribed" && m["channel"] == "system").await;
    }
    if multiplexed && revocation == Revocation::Reassign {
        // Subscribed on sign-in — which must have read the station before it is taken away.
        let name = format!("station:{station}");
        until(&mut client, |m| {
            m["type"] == "subscribed" && m["channel"] == name.as_str()
        })
        .await;
    }
    if multiplexed && revocation != Revocation::Reassign {
        // (An operator is subscribed to their own stations on sign-in.)
        client
            .send_text(&json!({"type": "subscribe", "channel": format!("station:{station}")}).to_string())
            .await;
        until(&mut client, |m| m["type"] == "subscribed" && m["channel"] != "system").await;
    }
    answers(&mut client).await;

    let since = Instant::now();
    match revocation {
        Revocation::Deactivate => {
            app.patch(&format!("/api/users/{}", who.id), admin, json!({"active": false}))
                .await
                .expect(200);
        }
        Revocation::Demote => {
            app.patch(&format!("/api/users/{}", who.id), admin, json!({"role": "user"}))
                .await
                .expect(200);
        }
        Revocation::Reassign => {
            app.patch(&format!("/api/stations/{station}"), admin, json!({"operator_id": null}))
                .await
                .expect(200);
        }
        Revocation::Logout => {
            app.post("/api/auth/logout", None, json!({"refresh_token": who.refresh}))
                .await
                .expect(204);
        }
        Revocation::Expiry => {}
    }

    match revocation {
        Revocation::Deactivate | Revocation::Logout => {
            let want = if revocation == Revocation::Deactivate {
                4003
            } else {
                4001
            };
            let (code, after) = closed(&mut client, since).await;
            assert_eq!(code, Some(want), "{label}");
            assert!(after < REVOCATION_DEADLINE, "{label}: closed after {after:?}");
            // And the token buys nothing anywhere any more.
            let rest = app.get("/api/me", Some(&who.access)).await;
            let (status, error) = if want == 4003 {
                (403, "account_disabled")
            } else {
                (401, "invalid_token")
            };
            rest.expect_error(status, error);
            let mut again = Client::connect(app, &format!("{path}?token={}", who.access)).await;
            assert_eq!(again.next().await["close"], want, "{label}: reconnecting");
        }
        Revocation::Expiry => {
            if multiplexed {
                let warned = until(&mut client, |m| m["type"] == "token_expiring").await;
                assert!(warned["expires_in"].as_i64().unwrap() >= 1, "{label}: {warned}");
            }
            assert_eq!(client.close_code().await, Some(4002), "{label}");
            app.get("/api/me", Some(&who.access))
                .await
                .expect_error(401, "token_expired");
        }
        Revocation::Demote | Revocation::Reassign => {
            if multiplexed && revocation == Revocation::Demote {
                let gone = until(&mut client, |m| m["type"] == "unsubscribed" && m["channel"] == "system").await;
                assert_eq!(gone["reason"], "forbidden", "{label}: {gone}");
            }
            if multiplexed {
                // Requests act as the account is now: no more staff actions at this station.
                client
                    .send_text(
                        &json!({"type": "request", "request_id": "after", "action": "set_station_status",
                                "data": {"station_id": station, "status": "maintenance"}})
                        .to_string(),
                    )
                    .await;
                let refused = until(&mut client, |m| m["request_id"] == "after").await;
                assert_eq!(refused["type"], "error", "{label}: {refused}");
                assert_eq!(refused["error"]["code"], "forbidden", "{label}: {refused}");
            }
            // Personal data stops at once: a booking made now shows no booker.
            if path != "/ws/notifications/" {
                let driver = app.user("user").await;
                app.book(station, &driver).await;
                let booked = until(&mut client, |m| {
                    m["type"] == "battery_booked" && m["station_id"] == station
                })
                .await;
                assert!(booked.get("user").is_none(), "{label}: {booked}");
            }
            answers(&mut client).await;
        }
    }
}

const SEED_PATHS: [&str; 3] = ["/ws/stations/", "/ws/stations/{S}/", "/ws/notifications/"];
const SEED_VIA: [Via; 3] = [Via::Header, Via::Query, Via::Cookie];
const WS_VIA: [Via; 5] = [Via::Header, Via::Query, Via::Cookie, Via::InBand, Via::InBandAsAnother];

/// Every way in, on every endpoint, for one kind of revocation.
async fn matrix(revocation: Revocation, ttl: Option<u64>) {
    let app = scene(ttl).await;
    let mut cells: Vec<(&str, Via)> = WS_VIA.iter().map(|via| ("/ws", *via)).collect();
    for path in SEED_PATHS {
        // A station's own feed is the operator's case; the others follow the same rule.
        cells.extend(SEED_VIA.iter().map(|via| (path, *via)));
    }
    let cases = cells.iter().map(|(path, via)| case(&app, path, *via, revocation));
    futures_util::future::join_all(cases).await;
}

#[actix_web::test]
async fn deactivation_closes_every_connection_with_4003() {
    matrix(Revocation::Deactivate, None).await;
}

#[actix_web::test]
async fn logout_closes_the_sessions_connections_with_4001() {
    matrix(Revocation::Logout, None).await;
}

#[actix_web::test]
async fn a_demoted_admin_keeps_nothing_of_the_role() {
    matrix(Revocation::Demote, None).await;
}

#[actix_web::test]
async fn an_operator_taken_off_a_station_loses_it_at_once() {
    matrix(Revocation::Reassign, None).await;
}

#[actix_web::test]
async fn connections_close_with_4002_when_their_token_expires() {
    matrix(Revocation::Expiry, Some(6)).await;
}

/// On `/ws` a renewal in band moves the expiry: the old `exp` passes without a close, the new one
/// is announced and then closes. Anonymous connections never expire.
#[actix_web::test]
async fn a_renewed_connection_lives_on_and_anonymous_ones_never_expire() {
    let app = &scene(Some(6)).await;
    let (email, who) = subject(app, "user").await;
    let mut anonymous = Client::connect(app, "/ws/stations/").await;
    assert_eq!(anonymous.next_json().await["type"], "connection_established");
    let mut client = connect(app, "/ws", Via::Header, &who, "").await;
    until(&mut client, |m| m["type"] == "token_expiring").await;
    // A second after the warning, renew: the new token outlives the old one's exp (`exp` is
    // in whole seconds, and a renewal that expires no later is not warned about again).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let renewed = sign_in(app, &email).await;
    client
        .send_text(&json!({"type": "authenticate", "token": renewed.access}).to_string())
        .await;
    until(&mut client, |m| m["type"] == "authenticated").await;
    // The next thing is the new token's warning — the old exp (sooner) closed nothing.
    let next = loop {
        let message = client.next().await;
        if message["type"] != "subscribed" && message["type"] != "inventory_update" {
            break message;
        }
    };
    assert_eq!(next["type"], "token_expiring", "{next}");
    assert_eq!(client.close_code().await, Some(4002));
    // The anonymous feed outlived both tokens.
    answers(&mut anonymous).await;
}

/// A client with no fresher token renews with the one it has: it is told `token_expiring` once,
/// not again after each such renewal (which would be a loop of warnings and renewals), and the
/// connection closes with 4002 at `exp`.
#[actix_web::test]
async fn renewing_with_the_same_token_is_not_warned_again() {
    let app = &scene(Some(4)).await;
    let (_, who) = subject(app, "user").await;
    let mut client = connect(app, "/ws", Via::Header, &who, "").await;
    until(&mut client, |m| m["type"] == "token_expiring").await;
    let mut renewals = 0;
    loop {
        client
            .send_text(&json!({"type": "authenticate", "token": who.access}).to_string())
            .await;
        until(&mut client, |m| m["type"] == "authenticated").await;
        renewals += 1;
        if renewals == 3 {
            break;
        }
    }
    // Everything after the renewals up to the close: no second warning.
    loop {
        let message = client.next().await;
        if let Some(code) = message.get("close") {
            assert_eq!(code, 4002, "{message}");
            break;
        }
        assert_ne!(message["type"], "token_expiring", "{message}");
    }
}

/// Logout ends one sign-in session; the user's others go on. `?all=true` ends every one.
#[actix_web::test]
async fn logout_ends_one_session_and_all_ends_every_one() {
    let app = &scene(None).await;
    let (email, first) = subject(app, "user").await;
    let second = sign_in(app, &email).await;
    let third = sign_in(app, &email).await;
    let mut on_second = connect(app, "/ws/notifications/", Via::Header, &second, "").await;
    app.post("/api/auth/logout", None, json!({"refresh_token": first.refresh}))
        .await
        .expect(204);
    app.get("/api/me", Some(&first.access))
        .await
        .expect_error(401, "invalid_token");
    app.post("/api/auth/refresh", None, json!({"refresh_token": first.refresh}))
        .await
        .expect_error(401, "invalid_token");
    app.get("/api/me", Some(&second.access)).await.expect(200);
    answers(&mut on_second).await;
    // Logging out twice is no error.
    app.post("/api/auth/logout", None, json!({"refresh_token": first.refresh}))
        .await
        .expect(204);
    // A logout by refresh token works whatever access token rides along (clients often log out
    // once theirs has expired).
    let fourth = sign_in(app, &email).await;
    app.post(
        "/api/auth/logout",
        Some("expired-or-garbage"),
        json!({"refresh_token": fourth.refresh}),
    )
    .await
    .expect(204);
    app.post("/api/auth/refresh", None, json!({"refresh_token": fourth.refresh}))
        .await
        .expect_error(401, "invalid_token");

    let since = Instant::now();
    app.post("/api/auth/logout?all=true", Some(&third.access), json!({}))
        .await
        .expect(204);
    let (code, after) = closed(&mut on_second, since).await;
    assert_eq!(code, Some(4001));
    assert!(after < REVOCATION_DEADLINE, "closed after {after:?}");
    for token in [&second.access, &third.access] {
        app.get("/api/me", Some(token)).await.expect_error(401, "invalid_token");
    }
    for refresh in [&second.refresh, &third.refresh] {
        app.post("/api/auth/refresh", None, json!({"refresh_token": refresh}))
            .await
            .expect_error(401, "invalid_token");
    }
    // `?all=true` needs to know whose sessions; neither a token nor a refresh token is a 401/422.
    app.post("/api/auth/logout?all=true", None, json!({}))
        .await
        .expect_error(401, "not_authenticated");
    app.post("/api/auth/logout", None, json!({}))
        .await
        .expect_error(422, "validation_failed");
}

/// A change to a user that takes nothing away — here another of their sign-in sessions ending —
/// hides personal data only until the re-check: an admin's dashboard shows bookers again.
#[actix_web::test]
async fn an_admin_keeps_personal_data_when_another_session_ends() {
    let app = &scene(None).await;
    let (email, desk) = subject(app, "admin").await;
    let phone = sign_in(app, &email).await;
    let station = app.station("Desk", None).await;
    let mut client = connect(app, "/ws/stations/", Via::Header, &desk, "").await;
    answers(&mut client).await;
    app.post("/api/auth/logout", None, json!({"refresh_token": phone.refresh}))
        .await
        .expect(204);
    // Events committed before the re-check lands may hide the booker; one after it shows them.
    let driver = app.user("user").await;
    for attempt in 0..100 {
        app.battery(station, &format!("DESK-{attempt}")).await;
        app.book(station, &driver).await;
        let booked = until(&mut client, |m| {
            m["type"] == "battery_booked" && m["station_id"] == station
        })
        .await;
        if booked.get("user").is_some() {
            assert_eq!(booked["user"], driver.email.as_str(), "{booked}");
            return;
        }
    }
    panic!("the admin never saw a booker again after another session ended");
}

/// A rotated refresh token presented again ends its whole session: the thief's successor tokens
/// and live connections die with it. Other sessions of the user are untouched.
#[actix_web::test]
async fn a_reused_refresh_token_ends_its_session() {
    let app = &scene(None).await;
    let (email, stolen) = subject(app, "user").await;
    let other = sign_in(app, &email).await;
    let successor = app
        .post("/api/auth/refresh", None, json!({"refresh_token": stolen.refresh}))
        .await
        .expect(200);
    let successor_access = successor["access_token"].as_str().unwrap().to_owned();
    let successor_refresh = successor["refresh_token"].as_str().unwrap().to_owned();
    let thief = SignIn {
        id: stolen.id,
        access: successor_access.clone(),
        refresh: successor_refresh.clone(),
    };
    let mut live = connect(app, "/ws", Via::Query, &thief, "").await;
    answers(&mut live).await;

    let since = Instant::now();
    app.post("/api/auth/refresh", None, json!({"refresh_token": stolen.refresh}))
        .await
        .expect_error(401, "invalid_token");
    let (code, after) = closed(&mut live, since).await;
    assert_eq!(code, Some(4001));
    assert!(after < REVOCATION_DEADLINE, "closed after {after:?}");
    app.get("/api/me", Some(&successor_access))
        .await
        .expect_error(401, "invalid_token");
    app.post("/api/auth/refresh", None, json!({"refresh_token": successor_refresh}))
        .await
        .expect_error(401, "invalid_token");
    app.get("/api/me", Some(&other.access)).await.expect(200);
    app.post("/api/auth/refresh", None, json!({"refresh_token": other.refresh}))
        .await
        .expect(200);
}

/// Signed in band as another user, a connection answers to that user: the first user's
/// deactivation leaves it be, the second's closes it.
#[actix_web::test]
async fn a_connection_answers_to_the_user_it_signed_in_as_last() {
    let app = &scene(None).await;
    let (_, first) = subject(app, "user").await;
    let (_, second) = subject(app, "user").await;
    let mut client = connect(app, "/ws", Via::InBandAsAnother, &second, &first.access).await;
    app.patch(
        &format!("/api/users/{}", first.id),
        Some(&app.admin.token),
        json!({"active": false}),
    )
    .await
    .expect(200);
    // The re-check of the first user's connections has had time to arrive; this one is not theirs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    answers(&mut client).await;
    app.patch(
        &format!("/api/users/{}", second.id),
        Some(&app.admin.token),
        json!({"active": false}),
    )
    .await
    .expect(200);
    assert_eq!(client.close_code().await, Some(4003));
}

/// A connection refused after the upgrade gets its Close as its only frame: no
/// `connection_established` first.
#[actix_web::test]
async fn a_refused_connection_gets_only_its_close() {
    let open = spawn_app_with(|_| {}).await;
    let private = spawn_app_with(|s| s.public_feeds = false).await;
    let cases: [(&TestApp, &str, u16); 4] = [
        (&open, "/ws/stations/987654321/", 4004),
        (&open, "/ws/stations/not-a-number/", 4004),
        (&open, "/ws/notifications/", 4001),
        (&private, "/ws/stations/", 4001),
    ];
    for (app, path, code) in cases {
        let mut client = Client::connect(app, path).await;
        let first = client.next().await;
        assert_eq!(
            first["close"], code,
            "{path}: the first frame must be the Close, got {first}"
        );
    }
}
