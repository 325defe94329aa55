//! `GET /api/events`: the event log, for audit and debugging (admins).

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use super::body;
use crate::auth::extract::RequestCaller;
use crate::auth::policy;
use crate::domain::{Listing, Page};
use crate::error::Result;
use crate::events::{log, EventRecord};
use crate::router::Router;
use crate::state::AppState;

pub fn routes(r: &mut impl Router) {
    r.route(Method::GET, "/events", list);
}

/// `?after=N` (or the `cursor` of the previous page) and `?limit=M`, oldest first.
async fn list(state: web::Data<AppState>, caller: RequestCaller, req: HttpRequest) -> Result<HttpResponse> {
    policy::require_admin(caller.actor()?)?;
    let query = body::query(&req)?;
    let page = body::page(&query)?;
    let after = body::int_param(&query, "after")?.or(page.after).unwrap_or(0);
    let page = Page {
        after: Some(after),
        ..page
    };
    let events = state.read(move |conn| log::after(conn, after, page.fetch())).await?;
    let listing = Listing::from_rows(page, events, |e| e.id.0, |e| Ok(EventRecord::from(e)))?;
    Ok(HttpResponse::Ok().json(listing))
}
