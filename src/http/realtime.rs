//! `GET /api/realtime/stats` (admins): live connections and viewers per station,
//! summed over the cluster's nodes and per node.

use actix_web::http::Method;
use actix_web::{web, HttpResponse};
use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::auth::extract::RequestCaller;
use crate::auth::policy;
use crate::domain::ids::StationId;
use crate::error::Result;
use crate::realtime::messages::RegistryStats;
use crate::router::Router;
use crate::state::AppState;

pub fn routes(r: &mut impl Router) {
    r.route(Method::GET, "/realtime/stats", stats);
}

async fn stats(state: web::Data<AppState>, caller: RequestCaller) -> Result<HttpResponse> {
    policy::require_admin(caller.actor()?)?;
    let local = state.hub.registry.stats().await;
    let mut nodes = vec![(state.hub.node.to_string(), local)];
    if let Some(backplane) = &state.hub.backplane {
        nodes.extend(backplane.peers());
    }
    Ok(HttpResponse::Ok().json(cluster_view(&nodes)))
}

/// Each node's numbers, and their sums: the cluster as one server.
fn cluster_view(nodes: &[(String, RegistryStats)]) -> Value {
    let mut viewers: BTreeMap<StationId, usize> = BTreeMap::new();
    for (_, stats) in nodes {
        for (station, count) in &stats.stations {
            *viewers.entry(*station).or_default() += count;
        }
    }
    let sum = |field: fn(&RegistryStats) -> usize| nodes.iter().map(|(_, stats)| field(stats)).sum::<usize>();
    let per_node: Vec<_> = nodes
        .iter()
        .map(|(node, stats)| {
            json!({
                "node": node,
                "connections": stats.connections,
                "subscriptions": stats.subscriptions,
                "all_stations_viewers": stats.all_stations,
                "stations": stations_json(stats.stations.iter().map(|(s, v)| (*s, *v))),
            })
        })
        .collect();
    json!({
        "connections": sum(|s| s.connections),
        "subscriptions": sum(|s| s.subscriptions),
        "all_stations_viewers": sum(|s| s.all_stations),
        "stations": stations_json(viewers.into_iter()),
        "nodes": per_node,
    })
}

fn stations_json(stations: impl Iterator<Item = (StationId, usize)>) -> Vec<Value> {
    stations
        .map(|(station, viewers)| json!({"station_id": station, "viewers": viewers}))
        .collect()
}
