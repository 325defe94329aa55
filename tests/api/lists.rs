//! Lists: `{"items", "next_cursor"}`, `limit` and `cursor`, trailing slashes.

use serde_json::Value;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn cursors_walk_every_item_once() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.station(&format!("Station {i}"), None).await;
    }
    let mut seen = Vec::new();
    let mut path = "/api/stations?limit=2".to_owned();
    loop {
        let page = app.get(&path, None).await.expect(200);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|s| s["name"].as_str().unwrap().to_owned()));
        match &page["next_cursor"] {
            Value::String(cursor) => path = format!("/api/stations?limit=2&cursor={cursor}"),
            Value::Null => break,
            other => panic!("bad cursor {other}"),
        }
    }
    let expected: Vec<String> = (0..5).map(|i| format!("Station {i}")).collect();
    assert_eq!(seen, expected);
    let all = app.get("/api/stations", None).await.expect(200);
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    assert_eq!(all["next_cursor"], Value::Null);
    app.get("/api/stations?cursor=zzz", None)
        .await
        .expect_error(422, "validation_failed");
    app.get("/api/stations?limit=0", None)
        .await
        .expect_error(422, "validation_failed");
}

#[actix_web::test]
async fn inventory_counts_are_per_station() {
    let app = spawn_app().await;
    let driver = app.user("user").await;
    let a = app.station("A", None).await;
    let b = app.station("B", None).await;
    for i in 0..3 {
        app.battery(a, &format!("A-{i}")).await;
    }
    app.battery(b, "B-0").await;
    app.book(a, &driver).await;
    let list = app.get("/api/stations", None).await.expect(200);
    let counts: Vec<(i64, i64, i64)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["available_batteries"].as_i64().unwrap(),
                s["booked_batteries"].as_i64().unwrap(),
                s["total_batteries"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [(2, 1, 3), (1, 0, 1)]);
    let batteries = app
        .get(&format!("/api/stations/{a}/batteries?limit=2"), None)
        .await
        .expect(200);
    assert_eq!(batteries["items"].as_array().unwrap().len(), 2);
    assert!(batteries["next_cursor"].is_string());
}

#[actix_web::test]
async fn paths_take_an_optional_trailing_slash() {
    let app = spawn_app().await;
    let station = app.station("Slash", None).await;
    app.get("/api/stations/", None).await.expect(200);
    assert_eq!(
        app.get(&format!("/api/stations/{station}/"), None).await.expect(200)["name"],
        "Slash"
    );
    app.get("/healthz/", None).await.expect(200);
    assert_eq!(app.get("/readyz", None).await.expect(200)["database"], "ok");
}
