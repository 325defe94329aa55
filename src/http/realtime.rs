//! `GET /api/realtime/stats` (admins): live connections and viewers per station, per node.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::auth::extract::Caller;
use crate::auth::policy;
use crate::error::{Error, Result};
use crate::realtime::messages::StatsQuery;
use crate::state::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/realtime/stats", web::get().to(stats));
}

async fn stats(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse> {
    policy::require_admin(caller.actor()?)?;
    let stats = state
        .hub
        .registry
        .send(StatsQuery)
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("registry unavailable: {e}")))?;
    let stations: Vec<_> = stats
        .stations
        .iter()
        .map(|(station, viewers)| json!({"station_id": station, "viewers": viewers}))
        .collect();
    let node = json!({
        "node": &*state.hub.node,
        "connections": stats.connections,
        "subscriptions": stats.subscriptions,
        "all_stations_viewers": stats.all_stations,
        "stations": stations,
    });
    Ok(HttpResponse::Ok().json(json!({
        "connections": stats.connections,
        "subscriptions": stats.subscriptions,
        "all_stations_viewers": stats.all_stations,
        "stations": stations,
        "nodes": [node],
    })))
}
