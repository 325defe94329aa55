//! `/api/users/*`: the admin's view of users and their roles.

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::body::{self, Body};
use crate::auth::extract::RequestCaller;
use crate::auth::sessions;
use crate::domain::ids::UserId;
use crate::domain::users::{self, UserPatch};
use crate::domain::values::{DisplayName, Role};
use crate::error::Result;
use crate::router::Router;
use crate::state::AppState;

pub fn routes(r: &mut impl Router) {
    r.route(Method::GET, "/users", list)
        .route(Method::PATCH, "/users/{id}", update);
}

async fn list(state: web::Data<AppState>, caller: RequestCaller, req: HttpRequest) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let page = body::page(&body::query(&req)?)?;
    Ok(HttpResponse::Ok().json(state.read(move |conn| users::list(conn, &actor, page)).await?))
}

#[derive(Deserialize)]
struct PatchUser {
    role: Option<Role>,
    active: Option<bool>,
    display_name: Option<String>,
}

async fn update(
    state: web::Data<AppState>,
    caller: RequestCaller,
    id: web::Path<i64>,
    body: Body<PatchUser>,
) -> Result<HttpResponse> {
    let actor = caller.actor()?.clone();
    let id = UserId(id.into_inner());
    let input = body.value;
    let patch = UserPatch {
        role: input.role,
        active: input.active,
        display_name: input.display_name.as_deref().map(DisplayName::parse).transpose()?,
    };
    Ok(HttpResponse::Ok().json(
        state
            .change_then(
                move |ch| {
                    let user = users::update(ch, &actor, id, &patch)?;
                    if !user.active {
                        sessions::end_all(ch.conn, id, ch.now)?;
                    }
                    Ok(user)
                },
                |user, hub| hub.user_changed(user.id),
            )
            .await?,
    ))
}
