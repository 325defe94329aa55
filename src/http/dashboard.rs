//! The pages and the client library they are built on, compiled into the binary, so there is no
//! front-end build and nothing to deploy beside the server: `GET /` (the live dashboard),
//! `GET /console` (the protocol console) and `GET /client.js` — the very file the npm package
//! ships (`clients/js/swapcast.js`), one source for both.

use actix_web::http::header;
use actix_web::HttpResponse;

const DASHBOARD: &str = include_str!("dashboard.html");
const CONSOLE: &str = include_str!("console.html");
const CLIENT: &str = include_str!("../../clients/js/swapcast.js");

fn served(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

pub async fn page() -> HttpResponse {
    served("text/html; charset=utf-8", DASHBOARD)
}

pub async fn console() -> HttpResponse {
    served("text/html; charset=utf-8", CONSOLE)
}

pub async fn client() -> HttpResponse {
    served("text/javascript; charset=utf-8", CLIENT)
}
