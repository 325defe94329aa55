//! Builds the running server: the pool (migrated), the signing keys, the HTTP server on a
//! listener it binds itself (port 0 in tests), and the background sweeper.

use std::net::TcpListener;
use std::sync::Arc;

use actix_http::HttpService;
use actix_service::map_config;
use actix_web::dev::{AppConfig, Server};
use actix_web::middleware::{from_fn, NormalizePath};
use actix_web::{web, App};
use anyhow::Context;

use crate::auth::guard::LoginGuard;
use crate::auth::{password, tokens};
use crate::config::Settings;
use crate::db::writer::Writer;
use crate::db::{self, Pool};
use crate::domain::users::{self, Registration, UserView};
use crate::domain::values::{DisplayName, Email, Password, Role};
use crate::domain::{self as domain_mod, import};
use crate::error::Error;
use crate::events::log;
use crate::realtime::messages::ShutDownAll;
use crate::realtime::Hub;
use crate::state::AppState;
use crate::{http, sweeper, ws};

/// The kernel send buffer of each connection. Fixed rather than autotuned (which grows to 4 MiB on
/// Linux) so a client that stops reading holds little memory, and its session's queue fills and
/// overflows (close 1013) instead of the kernel buffering for it without bound.
const SOCKET_SEND_BUFFER: usize = 256 * 1024;

/// How long open WebSockets get to receive their 1001 Close before the server stops accepting
/// and lets in-flight requests finish.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// The longest in-flight requests may take to finish after a stop signal.
const SHUTDOWN_TIMEOUT_SECS: u64 = 10;

pub struct Application {
    port: u16,
    server: Server,
    hub: Hub,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let state = prepare(settings).await?;
        let listener = TcpListener::bind(&state.settings.bind)
            .with_context(|| format!("cannot listen on {}", state.settings.bind))?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(state.clone());
        let app = move || {
            App::new()
                .app_data(data.clone())
                .wrap(NormalizePath::trim())
                .wrap(from_fn(http::request_log::trace_requests))
                .configure(ws::configure)
                .configure(http::configure)
        };
        // Assembled from actix-web's parts (as `HttpServer` does) to add the upgrade service:
        // WebSocket sessions own their connections rather than living inside an HTTP dispatcher.
        let local = listener.local_addr()?;
        let server = Server::build()
            // Signals are handled in `run_until_stopped`, which first closes every WebSocket with 1001.
            .disable_signals()
            .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
            .listen("swapcast", listener, move || {
                HttpService::build()
                    .local_addr(local)
                    .on_connect_ext(|stream: &actix_web::rt::net::TcpStream, _: &mut _| {
                        if let Err(e) = socket2::SockRef::from(stream).set_send_buffer_size(SOCKET_SEND_BUFFER) {
                            tracing::debug!(error = %e, "cannot size the send buffer; keeping the kernel's");
                        }
                    })
                    .upgrade(ws::upgrade::service(app.clone()))
                    .finish(map_config(app(), |_| AppConfig::default()))
                    .tcp()
            })?
            .run();
        let hub = state.hub.clone();
        sweeper::spawn(state);
        tracing::info!(port, "swapcast is serving");
        Ok(Application { port, server, hub })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGINT or SIGTERM; then every WebSocket gets Close 1001, in-flight requests
    /// finish, and this returns.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let hub = self.hub;
        let cluster = hub.clone();
        actix_web::rt::spawn(async move {
            stop_signal().await;
            tracing::info!("stopping: closing WebSockets, finishing requests");
            hub.registry.broadcast_and_wait(ShutDownAll).await;
            actix_web::rt::time::sleep(CLOSE_GRACE).await;
            handle.stop(true).await;
        });
        let served = self.server.await;
        cluster.leave_cluster().await;
        served
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

async fn stop_signal() {
    use actix_web::rt::signal;
    #[cfg(unix)]
    {
        let mut term = match signal::unix::signal(signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                // If SIGINT cannot be listened for either, there is no signal to wait for: stop now.
                let _ = signal::ctrl_c().await;
                return;
            }
        };
        tokio_select(signal::ctrl_c(), term.recv()).await;
    }
    #[cfg(not(unix))]
    {
        // An error here means no signal can arrive: stop now rather than never.
        let _ = signal::ctrl_c().await;
    }
}

/// Waits for whichever of two futures finishes first.
async fn tokio_select<A: std::future::Future, B: std::future::Future>(a: A, b: B) {
    futures_util::future::select(Box::pin(a), Box::pin(b)).await;
}

/// HS256 with a short secret is brute-forced offline from a single token.
const MIN_JWT_SECRET_BYTES: usize = 32;

/// The `settings` row naming the cluster: nodes sharing a database share it.
const CLUSTER_SETTING: &str = "cluster_id";

async fn prepare(settings: Settings) -> anyhow::Result<AppState> {
    let pool = open_database(&settings).await?;
    let secret = match &settings.jwt_secret {
        Some(secret) if secret.len() < MIN_JWT_SECRET_BYTES => anyhow::bail!(
            "SWAPCAST_JWT_SECRET is {} bytes; it must be at least {MIN_JWT_SECRET_BYTES} (a short HS256 secret can be guessed offline from one token). Leave it unset to have one generated and kept in the database.",
            secret.len()
        ),
        Some(secret) => secret.clone(),
        None => {
            tracing::warn!("SWAPCAST_JWT_SECRET is not set: using a generated secret kept in the database");
            let pool = pool.clone();
            actix_web::rt::task::spawn_blocking(move || tokens::stored_secret(&mut *pool.get()?)).await??
        }
    };
    let keys = tokens::TokenKeys::new(secret.as_bytes(), settings.access_ttl);
    let last_event_id = {
        let pool = pool.clone();
        actix_web::rt::task::spawn_blocking(move || log::latest_id(&mut *pool.get()?).map_err(anyhow::Error::from))
            .await??
    };
    let mut hub = Hub::start(
        pool.clone(),
        last_event_id,
        crate::metrics::node_name(settings.node_id.as_deref()),
    );
    if let Some(url) = &settings.nats_url {
        let pool = pool.clone();
        let cluster = actix_web::rt::task::spawn_blocking(move || {
            db::stored_setting(&mut *pool.get()?, CLUSTER_SETTING, || {
                tokens::random_secret()[..12].to_owned()
            })
            .map_err(anyhow::Error::from)
        })
        .await??;
        hub.join_cluster(url, &cluster).await?;
        tracing::info!(node = &*hub.node, cluster, "joined the cluster");
    }
    let metrics = hub.metrics.clone();
    let writer = Writer::start(&settings.database_url, move |conn, changes, more| {
        metrics.write_batches.inc();
        metrics.batched_changes.inc_by(changes.len() as u64);
        let batched = &metrics.batched_changes;
        let mut counted = || more().inspect(|_| batched.inc());
        crate::domain::commit::batch(conn, changes, &mut counted)
    })?;
    let settings_login_attempts = settings.login_attempts;
    // Argon2 hashes on at most half the cores, so a flood of sign-ins leaves the rest to
    // requests that need no hash.
    let hashers = std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1));
    Ok(AppState {
        pool,
        writer,
        settings: Arc::new(settings),
        keys: Arc::new(keys),
        hub,
        login: Arc::new(LoginGuard::new(settings_login_attempts, hashers)),
        snapshots: Arc::default(),
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

/// `swapcast import`: the stations file, then the batteries file, each in one transaction. Their
/// events go to the log; a running server delivers them as it does another node's.
pub async fn import(
    settings: &Settings,
    stations: Option<std::path::PathBuf>,
    batteries: Option<std::path::PathBuf>,
) -> anyhow::Result<Vec<String>> {
    let pool = open_database(settings).await?;
    actix_web::rt::task::spawn_blocking(move || {
        let mut conn = pool.get()?;
        let mut report = Vec::new();
        for (path, is_stations) in [(stations, true), (batteries, false)] {
            let Some(path) = path else { continue };
            let started = std::time::Instant::now();
            let file = std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            );
            let loaded = domain_mod::commit(&mut conn, |ch| {
                if is_stations {
                    Ok(import::stations(ch, file)?)
                } else {
                    Ok(import::batteries(ch, file)?)
                }
            })
            .map_err(|e| match e {
                Error::Validation(fields) => anyhow::anyhow!(
                    "{}: nothing imported: {}",
                    path.display(),
                    fields
                        .into_iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                other => anyhow::anyhow!("{}: nothing imported: {other}", path.display()),
            })?;
            let what = if is_stations { "stations" } else { "batteries" };
            report.push(format!(
                "{}: {} {what} in {:.1} s",
                path.display(),
                loaded.value,
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(report)
    })
    .await?
}
