//! The hand-over from HTTP to a WebSocket session. An upgrade request is answered by the same app
//! as any other (routing, middleware, the handshake checks, authentication); when the answer is a
//! 101 carrying a [`Handover`], the connection itself goes to the session. Nothing of the HTTP
//! dispatcher outlives the handshake: no per-connection buffers, no second task per socket.

use std::rc::Rc;

use actix_codec::Framed;
use actix_http::body::{BodySize, MessageBody};
use actix_http::h1::{self, Message};
use actix_http::{ConnectionType, Request, Response, StatusCode};
use actix_service::{fn_factory, fn_service, IntoServiceFactory, Service, ServiceFactory};
use actix_web::body::BoxBody;
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web::rt::net::TcpStream;
use bytes::BytesMut;
use futures_util::SinkExt;

type Connection = Framed<TcpStream, h1::Codec>;

/// Put in a 101 response by a WebSocket handler: what takes the connection once the response is
/// written (the stream, and whatever the client sent after its request).
pub struct Handover(Box<dyn FnOnce(TcpStream, BytesMut)>);

impl Handover {
    pub fn new(start: impl FnOnce(TcpStream, BytesMut) + 'static) -> Handover {
        Handover(Box::new(start))
    }
}

/// The service the HTTP/1 dispatcher gives `Connection: Upgrade` requests to: the app (one more
/// instance per worker) answers, then the connection is handed over or closed.
pub fn service<F, I, S, B>(
    app: F,
) -> impl ServiceFactory<(Request, Connection), Config = (), Response = (), Error = actix_web::Error, InitError = ()>
where
    F: Fn() -> I + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    S::InitError: std::fmt::Debug,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    fn_factory(move || {
        let factory = app().into_factory();
        async move {
            // The app sees the Host header for links and origins; this default only stands in for
            // a request without one.
            let app = Rc::new(factory.new_service(AppConfig::default()).await.map_err(|e| {
                tracing::error!(error = ?e, "cannot build the app for upgrades");
            })?);
            Ok(fn_service(move |(req, connection): (Request, Connection)| {
                let app = app.clone();
                async move {
                    let response = match app.call(req).await {
                        Ok(response) => Response::from(response.map_into_boxed_body()),
                        Err(e) => Response::from(e.error_response()),
                    };
                    answer(response, connection).await.map_err(actix_web::Error::from)
                }
            }))
        }
    })
}

/// Writes the app's answer; a 101 with a [`Handover`] gives the connection away, anything else
/// (a refused handshake, an upgrade to something else) is sent with its body and the connection
/// closed.
async fn answer(mut response: Response<BoxBody>, mut connection: Connection) -> std::io::Result<()> {
    let handover = response.extensions_mut().remove::<Handover>();
    let (mut head, body) = response.into_parts();
    if let (Some(Handover(start)), StatusCode::SWITCHING_PROTOCOLS) = (handover, head.status()) {
        connection.send(Message::Item((head, BodySize::None))).await?;
        let parts = connection.into_parts();
        start(parts.io, parts.read_buf);
        return Ok(());
    }
    let body = actix_web::body::to_bytes(body).await.unwrap_or_default();
    head.head_mut().set_connection_type(ConnectionType::Close);
    connection
        .send(Message::Item((head, BodySize::Sized(body.len() as u64))))
        .await?;
    connection.send(Message::Chunk(Some(body))).await?;
    connection.send(Message::Chunk(None)).await
}
