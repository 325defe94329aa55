//! Notifications: persisted per user, never shown to anyone else.

use serde_json::json;

use crate::helpers::spawn_app;

#[actix_web::test]
async fn users_see_only_their_own_newest_first() {
    let app = spawn_app().await;
    let (alice, bob) = (app.user("user").await, app.user("user").await);
    let admin = Some(app.admin.token.as_str());
    for title in ["first", "second"] {
        let sent = app
            .post(
                "/api/notifications",
                admin,
                json!({"user_id": alice.id, "title": title, "message": "m"}),
            )
            .await
            .expect(201);
        assert_eq!(sent["level"], "info", "info is the default level");
        assert_eq!(sent["read_at"], serde_json::Value::Null);
    }
    let everyone = app
        .post(
            "/api/notifications",
            admin,
            json!({"all": true, "title": "all", "message": "m", "level": "warning"}),
        )
        .await;
    assert_eq!(everyone.expect(201)["sent"], 3, "admin, alice and bob");

    let mine = app.get("/api/notifications", Some(&alice.token)).await.expect(200);
    let titles: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["all", "second", "first"]);
    let bobs = app.get("/api/notifications", Some(&bob.token)).await.expect(200);
    assert_eq!(bobs["items"].as_array().unwrap().len(), 1);

    let id = mine["items"][0]["id"].as_i64().unwrap();
    let read = app
        .post(&format!("/api/notifications/{id}/read"), Some(&alice.token), json!({}))
        .await
        .expect(200);
    assert!(read["read_at"].is_string());
    let page = app
        .get("/api/notifications?limit=1", Some(&alice.token))
        .await
        .expect(200);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let next = page["next_cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/api/notifications?limit=5&cursor={next}"), Some(&alice.token))
        .await
        .expect(200);
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
}
