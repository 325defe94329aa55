//! `/api/notifications/*`: a user's own notifications, and the admin's sending of them.

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::body::{self, Body};
use crate::auth::extract::RequestCaller;
use crate::domain::ids::{NotificationId, UserId};
use crate::domain::notifications::{self, NotificationInput, Recipients};
use crate::domain::values::{Level, MessageText, Title};
use crate::error::{Error, Result};
use crate::router::Router;
use crate::state::AppState;

pub fn routes(r: &mut impl Router) {
    r.route(Method::GET, "/notifications", list)
        .route(Method::POST, "/notifications", send)
        .route(Method::POST, "/notifications/{id}/read", mark_read);
}

async fn list(state: web::Data<AppState>, caller: RequestCaller, req: HttpRequest) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let page = body::page(&body::query(&req)?)?;
    Ok(HttpResponse::Ok().json(state.read(move |conn| notifications::list(conn, &actor, page)).await?))
}

async fn mark_read(state: web::Data<AppState>, caller: RequestCaller, id: web::Path<i64>) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let id = NotificationId(id.into_inner());
    Ok(HttpResponse::Ok().json(state.change(move |ch| notifications::mark_read(ch, &actor, id)).await?))
}

#[derive(Deserialize)]
struct SendRequest {
    user_id: Option<i64>,
    #[serde(default)]
    all: bool,
    title: String,
    message: String,
    level: Option<Level>,
}

/// One user → 201 with the stored notification; everyone → 201 with how many were sent.
async fn send(state: web::Data<AppState>, caller: RequestCaller, body: Body<SendRequest>) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let input = body.value;
    let to = match (input.user_id, input.all) {
        (Some(id), false) => Recipients::User(UserId(id)),
        (None, true) => Recipients::All,
        _ => return Err(Error::field("user_id", "give either user_id or \"all\": true")),
    };
    let single = matches!(to, Recipients::User(_));
    let content = NotificationInput {
        title: Title::parse(&input.title)?,
        message: MessageText::parse(&input.message)?,
        level: input.level.unwrap_or(Level::Info),
    };
    let sent = state
        .change(move |ch| notifications::send(ch, &actor, &to, &content))
        .await?;
    Ok(match sent.first() {
        Some(only) if single => HttpResponse::Created().json(only),
        _ => HttpResponse::Created().json(json!({ "sent": sent.len() })),
    })
}
