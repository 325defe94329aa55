//! Route registration through one small trait, so the same `routes` functions can both serve the
//! routes and list them.
//!
//! actix-web has no public way to list the routes an `App` has registered, yet the protocol
//! documents (`docs/openapi.json`, `docs/asyncapi.json`) must name exactly the routes the server
//! serves. Every route is therefore declared once, against [`Router`]: [`Served`] registers it on
//! a [`web::ServiceConfig`] for real, [`Recorder`] only writes down its method and full path, and a
//! test compares that list with the documents.

use actix_web::http::Method;
use actix_web::{web, FromRequest, Handler, Responder};

/// Where routes are declared: a method, a path (under the current prefix) and a handler.
pub trait Router {
    fn route<F, Args>(&mut self, method: Method, path: &str, handler: F) -> &mut Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static;

    /// The path prefix routes are declared under now.
    fn prefix(&mut self) -> &mut String;

    /// Declares `routes` under a common path prefix (`/api`).
    fn scope(&mut self, prefix: &str, routes: impl FnOnce(&mut Self)) -> &mut Self
    where
        Self: Sized,
    {
        let outer = self.prefix().len();
        self.prefix().push_str(prefix);
        routes(self);
        self.prefix().truncate(outer);
        self
    }
}

/// Registers routes on an actix-web app. A prefix is written into each path rather than made an
/// actix `Scope`: the routes match the same, and the request log's route label
/// (`match_pattern`) is the same full pattern either way.
pub struct Served<'a> {
    cfg: &'a mut web::ServiceConfig,
    prefix: String,
}

impl<'a> Served<'a> {
    pub fn new(cfg: &'a mut web::ServiceConfig) -> Served<'a> {
        Served {
            cfg,
            prefix: String::new(),
        }
    }
}

impl Router for Served<'_> {
    fn route<F, Args>(&mut self, method: Method, path: &str, handler: F) -> &mut Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        let path = format!("{}{path}", self.prefix);
        self.cfg.route(&path, web::method(method).to(handler));
        self
    }

    fn prefix(&mut self) -> &mut String {
        &mut self.prefix
    }
}

/// Writes down each route's method and full path (in actix's `{name}` pattern syntax) and
/// registers nothing.
#[derive(Default)]
pub struct Recorder {
    prefix: String,
    routes: Vec<(Method, String)>,
}

impl Recorder {
    /// The routes `declare` declares, in declaration order.
    pub fn record(declare: impl FnOnce(&mut Recorder)) -> Vec<(Method, String)> {
        let mut recorder = Recorder::default();
        declare(&mut recorder);
        recorder.routes
    }
}

impl Router for Recorder {
    fn route<F, Args>(&mut self, method: Method, path: &str, _: F) -> &mut Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.routes.push((method, format!("{}{path}", self.prefix)));
        self
    }

    fn prefix(&mut self) -> &mut String {
        &mut self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn nothing() -> &'static str {
        ""
    }

    #[test]
    fn the_recorder_writes_full_paths_and_restores_the_prefix() {
        let routes = Recorder::record(|r| {
            r.route(Method::GET, "/", nothing)
                .scope("/api", |r| {
                    r.route(Method::POST, "/things", nothing);
                })
                .route(Method::PATCH, "/things/{id}", nothing);
        });
        assert_eq!(
            routes,
            vec![
                (Method::GET, "/".to_owned()),
                (Method::POST, "/api/things".to_owned()),
                (Method::PATCH, "/things/{id}".to_owned()),
            ]
        );
    }
}
