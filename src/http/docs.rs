//! `GET /api/openapi.json` and `GET /api/asyncapi.json`: the protocol documents of the HTTP and
//! WebSocket APIs, hand-written in `docs/` and compiled into the binary, so the running server
//! always describes itself (the `protocol_docs` tests hold the documents to what it serves).

use actix_web::http::{header, Method};
use actix_web::HttpResponse;

use crate::router::Router;

const OPENAPI: &str = include_str!("../../docs/openapi.json");
const ASYNCAPI: &str = include_str!("../../docs/asyncapi.json");

pub fn routes(r: &mut impl Router) {
    r.route(Method::GET, "/openapi.json", openapi)
        .route(Method::GET, "/asyncapi.json", asyncapi);
}

async fn openapi() -> HttpResponse {
    document(OPENAPI)
}

async fn asyncapi() -> HttpResponse {
    document(ASYNCAPI)
}

fn document(text: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documents_are_json() {
        for text in [OPENAPI, ASYNCAPI] {
            serde_json::from_str::<serde_json::Value>(text).expect("a JSON document");
        }
    }
}
