//! `GET /`: the live dashboard — one HTML page with its script and styles inline, compiled into
//! the binary, so there is no front-end build and nothing to deploy beside the server.

use actix_web::http::header;
use actix_web::HttpResponse;

const PAGE: &str = include_str!("dashboard.html");

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(PAGE)
}
