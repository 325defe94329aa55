//! The request extractor: finds the caller's token, verifies it, and loads the caller.
//!
//! A token is taken, in this order, from `Authorization: Bearer …`, the `token` query parameter,
//! and the `swapcast_token` cookie (CONTRACT §3). A request that carries a bad or expired token is
//! refused even on a public route, rather than silently treated as anonymous.

use std::collections::HashMap;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use super::origin;
use super::sessions;
use super::tokens::Credentials;
use super::Caller;
use crate::domain::users;
use crate::domain::values::Role;
use crate::error::{Error, Result};
use crate::state::AppState;

pub const COOKIE_NAME: &str = "swapcast_token";

/// Where a token came from; a cookie is sent by browsers on cross-site requests too, so the
/// WebSocket upgrade checks the Origin of cookie-authenticated connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Cookie,
}

/// The token of a request and where it was found.
pub fn find_token(req: &HttpRequest) -> Result<Option<(String, TokenSource)>> {
    if let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let value = header.to_str().map_err(|_| Error::InvalidToken)?;
        return match value.strip_prefix("Bearer ").map(str::trim) {
            Some(token) if !token.is_empty() => Ok(Some((token.to_owned(), TokenSource::Header))),
            _ => Err(Error::InvalidToken),
        };
    }
    if let Ok(query) = web::Query::<HashMap<String, String>>::from_query(req.query_string()) {
        if let Some(token) = query.get("token").filter(|t| !t.is_empty()) {
            return Ok(Some((token.clone(), TokenSource::Query)));
        }
    }
    Ok(req
        .cookie(COOKIE_NAME)
        .map(|c| c.value().to_owned())
        .filter(|t| !t.is_empty())
        .map(|t| (t, TokenSource::Cookie)))
}

/// Verifies a token and loads its user: the role and activity that count are the database's, and
/// the token's sign-in session must not have ended.
pub async fn authenticate(state: &AppState, token: &str) -> Result<(Caller, Credentials)> {
    let credentials = state.keys.verify(token)?.credentials()?;
    Ok((load_caller(state, credentials).await?, credentials))
}

/// A user as they are now, for credentials already verified: a user who no longer exists or
/// whose sign-in session ended is an invalid token, a deactivated one is refused.
pub async fn load_caller(state: &AppState, credentials: Credentials) -> Result<Caller> {
    let (id, session) = (credentials.user, credentials.session);
    let ticket = match state.hub.actors.get(id, session) {
        Ok(actor) => return Ok(actor),
        Err(ticket) => ticket,
    };
    let (user, live) = state
        .read(move |conn| Ok((users::find(conn, id)?, sessions::is_live(conn, id, session)?)))
        .await?;
    let user = user.ok_or(Error::InvalidToken)?;
    if !user.active {
        return Err(Error::AccountDisabled);
    }
    if !live {
        return Err(Error::InvalidToken);
    }
    let actor = Caller {
        id,
        role: Role::from_db(&user.role)?,
        email: user.email,
        display_name: user.display_name,
    };
    state.hub.actors.put(actor.clone(), session, ticket);
    Ok(actor)
}

/// The caller of a request: `None` when no token was sent.
pub struct RequestCaller(pub Option<Caller>);

impl RequestCaller {
    /// The caller, or 401 for an anonymous request.
    pub fn actor(&self) -> Result<&Caller> {
        self.0.as_ref().ok_or(Error::Unauthenticated)
    }
}

impl FromRequest for RequestCaller {
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<RequestCaller>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = find_token(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let cross_site = state
            .as_ref()
            .is_some_and(|state| !origin::write_allowed(req, &state.settings.allowed_origins));
        Box::pin(async move {
            let Some((token, source)) = token? else {
                return Ok(RequestCaller(None));
            };
            // A cookie rides along on a cross-site write; a bearer token never does by itself.
            if source == TokenSource::Cookie && cross_site {
                return Err(Error::CrossSiteRequest);
            }
            let state = state.ok_or_else(|| Error::Internal(anyhow::anyhow!("AppState missing")))?;
            authenticate(&state, &token)
                .await
                .map(|(actor, _)| RequestCaller(Some(actor)))
        })
    }
}
