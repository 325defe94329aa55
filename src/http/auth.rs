//! `/api/auth/*` and `/api/me`: registration, sign-in sessions, the current user.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::body::{self, Body};
use crate::auth::extract::{authenticate, find_token, RequestCaller, TokenSource, COOKIE_NAME};
use crate::auth::origin;
use crate::auth::sessions::Rotation;
use crate::auth::{password, sessions};
use crate::clock::now_ms;
use crate::db;
use crate::domain::users::{self, Registration, UserView};
use crate::domain::values::{DisplayName, Email, Password, Role};
use crate::error::{Error, Result};
use crate::router::Router;
use crate::state::AppState;

pub fn routes(r: &mut impl Router) {
    r.route(Method::POST, "/auth/register", register)
        .route(Method::POST, "/auth/login", login)
        .route(Method::POST, "/auth/refresh", refresh)
        .route(Method::POST, "/auth/logout", logout)
        .route(Method::GET, "/me", me);
}

#[derive(Deserialize)]
struct RegisterRequest {
    email: String,
    password: String,
    display_name: String,
}

async fn register(state: web::Data<AppState>, body: Body<RegisterRequest>) -> Result<HttpResponse> {
    let input = body.value;
    let email = Email::parse(&input.email)?;
    let display_name = DisplayName::parse(&input.display_name)?;
    let password = Password::parse(input.password)?;
    let password_hash = state.login.hash(move || password::hash(&password)).await??;
    let registration = Registration {
        email,
        display_name,
        password_hash,
    };
    let user = state
        .change(move |ch| users::create(ch, &registration, Role::User))
        .await?;
    Ok(HttpResponse::Created().json(json!({ "user": user })))
}

#[derive(Deserialize)]
struct LoginRequest {
    email: String,
    password: String,
}

async fn login(state: web::Data<AppState>, req: HttpRequest, body: Body<LoginRequest>) -> Result<HttpResponse> {
    // Setting the session cookie from another site would sign the browser into the attacker's
    // account (login CSRF).
    let wants_cookie = body::query(&req)?
        .get("cookie")
        .is_some_and(|v| v == "true" || v == "1");
    if wants_cookie && origin::from_another_site(&req, &state.settings.allowed_origins) {
        return Err(Error::CrossSiteRequest);
    }
    let LoginRequest { email, password } = body.value;
    // A malformed email cannot belong to anyone: the same answer as a wrong password.
    let email = Email::parse(&email).map_err(|_| Error::InvalidCredentials)?;
    let account = email.as_str().to_owned();
    // A throttled account is refused before any hash is spent, the right password too; the
    // attempt counts from here, so sign-ins waiting for a hash cannot pass the limit together.
    let attempt = state.login.reserve(&account)?;
    let checked = async {
        let user = state.read(move |conn| users::find_by_email(conn, &email)).await?;
        state
            .login
            .hash(move || match user {
                Some(user) if password::verify(&password, &user.password_hash) => Ok(user),
                Some(_) => Err(Error::InvalidCredentials),
                None => {
                    password::waste_verification(&password);
                    Err(Error::InvalidCredentials)
                }
            })
            .await
    }
    .await;
    let user = match checked {
        Ok(Ok(user)) => {
            state.login.succeeded(&account);
            user
        }
        // A wrong password: the attempt stays counted.
        Ok(Err(e)) => return Err(e),
        // The password was never checked (no turn to hash, no database): no attempt was spent.
        Err(e) => {
            state.login.release(&account, attempt);
            return Err(e);
        }
    };
    let (keys, ttl) = (state.keys.clone(), state.settings.refresh_ttl);
    let session = state
        .read(move |conn| db::write(conn, |conn| sessions::start(conn, &keys, ttl, user, now_ms())))
        .await?;
    let mut response = HttpResponse::Ok();
    if wants_cookie {
        response.cookie(session_cookie(&session.access_token, state.keys.access_ttl));
    }
    Ok(response.json(session))
}

/// The browser session cookie: unreadable by scripts, never sent cross-site.
fn session_cookie(token: &str, max_age_secs: u64) -> Cookie<'static> {
    Cookie::build(COOKIE_NAME, token.to_owned())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(max_age_secs as i64))
        .finish()
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(state: web::Data<AppState>, body: Body<RefreshRequest>) -> Result<HttpResponse> {
    let presented = body.value.refresh_token;
    let (keys, ttl) = (state.keys.clone(), state.settings.refresh_ttl);
    let rotation = state
        .change_then(
            move |ch| sessions::rotate(ch.conn, &keys, ttl, &presented, ch.now),
            |rotation, hub| {
                if let Rotation::Reused(user) = rotation {
                    hub.user_changed(*user);
                }
            },
        )
        .await?;
    match rotation {
        Rotation::Rotated(session) => Ok(HttpResponse::Ok().json(session)),
        // The session it belonged to has just ended, its live connections with it.
        Rotation::Reused(_) => Err(Error::InvalidToken),
    }
}

#[derive(Deserialize)]
struct LogoutRequest {
    refresh_token: Option<String>,
}

/// Ends the sign-in session of the refresh token; `?all=true` ends every session of the signed-in
/// caller. Either way its access tokens are refused from then on and its live connections close.
///
/// Only `?all=true` looks at the caller's access token: a logout by refresh token works with an
/// expired (or no, or a bad) access token, which is when clients often log out.
async fn logout(state: web::Data<AppState>, req: HttpRequest, body: Body<LogoutRequest>) -> Result<HttpResponse> {
    // Clearing the session cookie from another site would sign a dashboard out.
    if req.cookie(COOKIE_NAME).is_some() && origin::from_another_site(&req, &state.settings.allowed_origins) {
        return Err(Error::CrossSiteRequest);
    }
    let all = body::query(&req)?.get("all").is_some_and(|v| v == "true" || v == "1");
    let presented = body.value.refresh_token;
    let everywhere = if all {
        let (token, source) = find_token(&req)?.ok_or(Error::Unauthenticated)?;
        if source == TokenSource::Cookie && !origin::write_allowed(&req, &state.settings.allowed_origins) {
            return Err(Error::CrossSiteRequest);
        }
        Some(authenticate(&state, &token).await?.0.id)
    } else {
        None
    };
    if everywhere.is_none() && presented.is_none() {
        return Err(Error::field(
            "refresh_token",
            "is required (or ?all=true to end every session)",
        ));
    }
    state
        .change_then(
            move |ch| {
                let mut ended = match &presented {
                    Some(token) => sessions::end(ch.conn, token, ch.now)?,
                    None => None,
                };
                if let Some(user) = everywhere {
                    sessions::end_all(ch.conn, user, ch.now)?;
                    ended = Some(user);
                }
                Ok(ended)
            },
            |ended, hub| {
                if let Some(user) = ended {
                    hub.user_changed(*user);
                }
            },
        )
        .await?;
    let mut gone = session_cookie("", 0);
    gone.make_removal();
    Ok(HttpResponse::NoContent().cookie(gone).finish())
}

async fn me(state: web::Data<AppState>, caller: RequestCaller) -> Result<HttpResponse> {
    let id = caller.actor()?.id;
    let user = state
        .read(move |conn| UserView::from_row(users::get(conn, id)?))
        .await?;
    Ok(HttpResponse::Ok().json(user))
}
