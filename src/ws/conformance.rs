//! A WebSocket echo on the server's own socket layer — the hand-over, [`Socket`], the
//! [`Outlet`]'s writing and closing, and [`frames::classify`] — for the Autobahn conformance suite
//! (`.ci/run` drives it with kosoku). Built only with `--features conformance`, into the
//! `conformance-echo` binary: never part of the shipped server.

use std::net::TcpListener;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actix::prelude::*;
use actix_http::ws::{CloseReason, Frame as WsFrame, OpCode, Parser, ProtocolError};
use actix_http::HttpService;
use actix_service::map_config;
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;
use actix_web::{web, App, HttpRequest, HttpResponse};
use bytes::BytesMut;

use super::frames::{self, Incoming};
use super::inbound::Reassembly;
use super::outlet::{Need, Outlet};
use super::socket::{self, Socket};
use super::upgrade::{self, Handover};

/// Messages up to this size are echoed (Autobahn's case 9 goes to 16 MiB; CI runs the smaller ones).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Frames queued beyond this count close the echo (as a slow consumer would be).
const SEND_QUEUE: usize = 4096;
/// How long a closing echo waits for the client to hang up.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Serves the echo on `listener` until the process ends.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let app = || App::new().route("/", web::get().to(handshake));
    actix_web::dev::Server::build()
        .listen("conformance-echo", listener, move || {
            HttpService::build()
                .upgrade(upgrade::service(app))
                .finish(map_config(app(), |_| AppConfig::default()))
                .tcp()
        })?
        .run()
        .await
}

async fn handshake(req: HttpRequest) -> actix_web::Result<HttpResponse> {
    let mut response = HttpResponse::from(actix_http::ws::handshake(req.head())?.finish()).map_into_boxed_body();
    response.extensions_mut().insert(Handover::new(start));
    Ok(response)
}

fn start(io: TcpStream, already_read: BytesMut) {
    let (socket, inbound) = Socket::split(io, already_read, MAX_MESSAGE);
    Echo::create(move |ctx| {
        ctx.add_stream(inbound);
        Echo {
            out: Arc::new(Mutex::new(Outlet::new(socket, SEND_QUEUE))),
            fragments: Reassembly::new(MAX_MESSAGE),
            peer_gone: false,
        }
    });
}

struct Echo {
    out: Arc<Mutex<Outlet>>,
    fragments: Reassembly,
    peer_gone: bool,
}

impl Actor for Echo {
    type Context = Context<Echo>;
}

impl Echo {
    fn send(&mut self, frame: bytes::Bytes, ctx: &mut Context<Echo>) {
        self.out.lock().unwrap_or_else(PoisonError::into_inner).send(frame);
        self.attend(ctx);
    }

    fn attend(&mut self, ctx: &mut Context<Echo>) {
        let need = self
            .out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .attend(self.peer_gone);
        match need {
            Need::Stop => ctx.stop(),
            Need::CloseOverflowed => self.close(None, ctx),
            Need::WaitForKernel => {
                let writable = self
                    .out
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .socket()
                    .writable();
                ctx.spawn(writable.into_actor(self).map(|(), this, ctx| {
                    this.out.lock().unwrap_or_else(PoisonError::into_inner).writable();
                    this.attend(ctx);
                }));
            }
            // The echo server has no channels.
            Need::Rejoin(_) | Need::Nothing => {}
        }
    }

    fn close(&mut self, reason: Option<CloseReason>, ctx: &mut Context<Echo>) {
        if self
            .out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .close(reason, false)
        {
            ctx.run_later(CLOSE_LINGER, |_, ctx| ctx.stop());
        }
        self.attend(ctx);
    }
}

fn message(op: OpCode, payload: &[u8]) -> bytes::Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 10);
    Parser::write_message(&mut buf, payload, op, true, false);
    buf.freeze()
}

impl StreamHandler<Result<WsFrame, ProtocolError>> for Echo {
    fn handle(&mut self, frame: Result<WsFrame, ProtocolError>, ctx: &mut Context<Echo>) {
        if self.out.lock().unwrap_or_else(PoisonError::into_inner).is_closing() {
            return;
        }
        match frames::classify(frame, &mut self.fragments) {
            Incoming::Ping(payload) => self.send(socket::control(OpCode::Pong, &payload), ctx),
            Incoming::Pong | Incoming::Pending => {}
            Incoming::Text(text) => self.send(message(OpCode::Text, text.as_bytes()), ctx),
            Incoming::Binary(bytes) => self.send(message(OpCode::Binary, &bytes), ctx),
            Incoming::Closed(echo) => self.close(echo, ctx),
            Incoming::Refuse(code, reason) => self.close(
                Some(CloseReason {
                    code,
                    description: Some(reason.to_owned()),
                }),
                ctx,
            ),
            Incoming::Broken => ctx.stop(),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Echo>) {
        self.peer_gone = true;
        let out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        if !out.is_closing() || out.close_sent() {
            drop(out);
            ctx.stop();
        }
    }
}
