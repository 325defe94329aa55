//! Builds the running server: the pool (migrated), the signing keys, the HTTP server on a
//! listener it binds itself (port 0 in tests), and the background sweeper.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::{Logger, NormalizePath};
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::auth::{password, tokens};
use crate::config::Settings;
use crate::db::{self, Pool};
use crate::domain::users::{self, Registration, UserView};
use crate::domain::values::{DisplayName, Email, Password, Role};
use crate::domain::{self as domain_mod};
use crate::state::AppState;
use crate::{http, sweeper};

/// Access-log line: method, path without the query string (which may carry a token), status,
/// size, time.
const ACCESS_LOG_FORMAT: &str = "%{method}xi %U %s %b %Dms";

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let state = prepare(settings).await?;
        let listener = TcpListener::bind(&state.settings.bind)
            .with_context(|| format!("cannot listen on {}", state.settings.bind))?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .wrap(NormalizePath::trim())
                .wrap(Logger::new(ACCESS_LOG_FORMAT).custom_request_replace("method", |req| req.method().to_string()))
                .configure(http::configure)
        })
        .listen(listener)?
        .run();
        sweeper::spawn(state);
        tracing::info!(port, "swapcast is serving");
        Ok(Application { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Opens and migrates the database, off the async threads.
pub async fn open_database(settings: &Settings) -> anyhow::Result<Pool> {
    let (url, size) = (settings.database_url.clone(), settings.db_pool_size);
    actix_web::rt::task::spawn_blocking(move || {
        let pool = db::connect(&url, size)?;
        db::migrate(&mut *pool.get()?)?;
        Ok::<_, anyhow::Error>(pool)
    })
    .await?
}

async fn prepare(settings: Settings) -> anyhow::Result<AppState> {
    let pool = open_database(&settings).await?;
    let secret = match &settings.jwt_secret {
        Some(secret) => secret.clone(),
        None => {
            tracing::warn!("SWAPCAST_JWT_SECRET is not set: using a generated secret kept in the database");
            let pool = pool.clone();
            actix_web::rt::task::spawn_blocking(move || tokens::stored_secret(&mut *pool.get()?)).await??
        }
    };
    let keys = tokens::TokenKeys::new(secret.as_bytes(), settings.access_ttl);
    Ok(AppState {
        pool,
        settings: Arc::new(settings),
        keys: Arc::new(keys),
    })
}

/// `swapcast create-admin`: the first admin of a fresh deployment.
pub async fn create_admin(
    settings: &Settings,
    email: &str,
    password: String,
    display_name: &str,
) -> anyhow::Result<UserView> {
    let pool = open_database(settings).await?;
    let registration = Registration {
        email: Email::parse(email).map_err(|e| anyhow::anyhow!("email: {e:?}"))?,
        display_name: DisplayName::parse(display_name).map_err(|e| anyhow::anyhow!("display name: {e:?}"))?,
        password_hash: password::hash(&Password::parse(password).map_err(|e| anyhow::anyhow!("password: {e:?}"))?)?,
    };
    actix_web::rt::task::spawn_blocking(move || {
        let mut conn = pool.get()?;
        let created = domain_mod::commit(&mut conn, |ch| users::create(ch, &registration, Role::Admin))?;
        Ok(created.value)
    })
    .await?
}
