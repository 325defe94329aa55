//! The connection after the upgrade, owned by its session rather than by an HTTP dispatcher: no
//! buffers are kept for an idle socket, and outbound frames are written from the bytes the
//! registry encoded once for every recipient. Only what the kernel will not take yet is queued,
//! as references to those same bytes.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{CloseReason, Codec, Frame as WsFrame, OpCode, Parser, ProtocolError};
use actix_web::rt::net::TcpStream;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;

/// How many queued frames one write hands the kernel at most.
const WRITE_BATCH: usize = 64;
/// How much is read at a time when a client sends.
const READ_CHUNK: usize = 4096;

/// What became of a flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything is written.
    All,
    /// The kernel's buffer is full: wait for [`Socket::writable`], then flush again.
    Blocked,
    /// The connection is broken.
    Failed,
}

/// The sending side of a connection.
pub struct Socket {
    io: Arc<TcpStream>,
    /// Frames, or the unwritten end of one, the kernel has not taken yet; oldest first.
    queue: VecDeque<Bytes>,
    /// The front of the queue is partly written.
    front_started: bool,
}

impl Socket {
    /// The socket and its receiving side. `already_read` is what arrived with the upgrade request.
    pub fn split(io: TcpStream, already_read: BytesMut, max_message: usize) -> (Socket, Inbound) {
        let io = Arc::new(io);
        let inbound = Inbound {
            io: io.clone(),
            buf: already_read,
            codec: Codec::new().max_size(max_message),
            failed: false,
        };
        let socket = Socket {
            io,
            queue: VecDeque::new(),
            front_started: false,
        };
        (socket, inbound)
    }

    /// Frames waiting for the kernel.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues a frame behind the others; [`Socket::flush`] writes it.
    pub fn push(&mut self, frame: Bytes) {
        self.queue.push_back(frame);
    }

    /// Forgets every frame not yet begun (a frame partly written must be finished, or the stream
    /// is garbage from there on).
    pub fn drop_unsent(&mut self) {
        self.queue.truncate(usize::from(self.front_started));
    }

    /// Writes queued frames until they are all out or the kernel takes no more.
    pub fn flush(&mut self) -> Flushed {
        while !self.queue.is_empty() {
            // One frame (the usual case) is a plain write: cheaper in the kernel than a vector.
            let result = if self.queue.len() == 1 {
                self.io.try_write(&self.queue[0])
            } else {
                let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
                let mut count = 0;
                for (slot, frame) in slices.iter_mut().zip(&self.queue) {
                    *slot = IoSlice::new(frame);
                    count += 1;
                }
                self.io.try_write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => return Flushed::Failed,
                Ok(written) => self.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Flushed::Failed,
            }
        }
        // An emptied queue that once grew gives its memory back: idle sockets keep nothing.
        if self.queue.capacity() > WRITE_BATCH {
            self.queue = VecDeque::new();
        }
        Flushed::All
    }

    fn consume(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.queue.front_mut() else { return };
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
                self.front_started = false;
            } else {
                front.advance(written);
                self.front_started = true;
                written = 0;
            }
        }
    }

    /// Resolves when the kernel takes more (or the connection fails: the next flush says so).
    pub fn writable(&self) -> impl Future<Output = ()> + 'static {
        let io = self.io.clone();
        async move {
            let _ = poll_fn(|cx| io.poll_write_ready(cx)).await;
        }
    }

    /// Sends FIN after the Close frame: the client sees the end, and its own FIN ends [`Inbound`].
    pub fn finish(&self) {
        let _ = socket2::SockRef::from(&*self.io).shutdown(Shutdown::Write);
    }
}

/// The receiving side: client frames, decoded as they arrive. The buffer holds only an unfinished
/// frame and is released whenever it empties.
pub struct Inbound {
    io: Arc<TcpStream>,
    buf: BytesMut,
    codec: Codec,
    /// A frame was malformed: what follows is read and dropped until the peer closes, so the
    /// socket is not reset with unread data before the Close frame reaches the client.
    failed: bool,
}

impl Stream for Inbound {
    type Item = Result<WsFrame, ProtocolError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.failed {
                this.buf.clear();
            } else if !this.buf.is_empty() {
                match this.codec.decode(&mut this.buf) {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) => {}
                    Err(e) => {
                        this.failed = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            if this.buf.is_empty() && this.buf.capacity() > 0 {
                this.buf = BytesMut::new();
            }
            if ready!(this.io.poll_read_ready(cx)).is_err() {
                return Poll::Ready(None);
            }
            this.buf.reserve(READ_CHUNK);
            match this.io.try_read_buf(&mut this.buf) {
                Ok(0) => return Poll::Ready(None),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                // A broken connection has nothing more to read.
                Err(_) => return Poll::Ready(None),
            }
        }
    }
}

/// Control frames, encoded for a server (unmasked).
pub fn control(op: OpCode, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(payload.len() + 2);
    Parser::write_message(&mut buf, payload, op, true, false);
    buf.freeze()
}

pub fn close_frame(reason: Option<CloseReason>) -> Bytes {
    let mut buf = BytesMut::new();
    Parser::write_close(&mut buf, reason, false);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::wire::Frame;

    /// A connected pair over loopback: our socket, and the peer's raw stream.
    async fn pair() -> (Socket, Inbound, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let ((ours, _), peer) = tokio::try_join!(listener.accept(), peer).unwrap();
        let (socket, inbound) = Socket::split(ours, BytesMut::new(), 1024);
        (socket, inbound, peer)
    }

    /// Every frame the peer received, parsed as a client would; panics on a torn frame.
    async fn frames_read_by(mut peer: tokio::net::TcpStream) -> Vec<(OpCode, usize)> {
        use tokio::io::AsyncReadExt;
        let mut wire = Vec::new();
        peer.read_to_end(&mut wire).await.unwrap();
        let mut wire = BytesMut::from(&wire[..]);
        let mut frames = Vec::new();
        while !wire.is_empty() {
            let (_, op, payload) = Parser::parse(&mut wire, false, usize::MAX)
                .unwrap()
                .expect("only whole frames on the wire");
            frames.push((op, payload.map_or(0, |p| p.len())));
        }
        frames
    }

    /// A client that stops reading fills the kernel; dropping what is unsent still finishes the
    /// frame under way, so the Close that follows is read as a frame, not as garbage.
    #[actix::test]
    async fn dropping_the_unsent_keeps_the_frame_under_way_whole() {
        let (mut socket, _inbound, peer) = pair().await;
        let frame = Frame::text(&"x".repeat(10_000));
        let mut sent = 0;
        while {
            socket.push(frame.bytes().clone());
            socket.flush() == Flushed::All
        } {
            sent += 1;
            assert!(sent < 100_000, "the kernel never filled");
        }
        socket.drop_unsent();
        assert!(socket.queued() <= 1);
        socket.push(close_frame(None));
        // The peer now reads; the rest goes out as the kernel takes it.
        let reader = tokio::spawn(frames_read_by(peer));
        while socket.flush() == Flushed::Blocked {
            socket.writable().await;
        }
        socket.finish();
        let frames = reader.await.unwrap();
        let (last, texts) = frames.split_last().unwrap();
        assert_eq!(last.0, OpCode::Close);
        assert!(texts.iter().all(|(op, len)| *op == OpCode::Text && *len == 10_000));
        // Whatever had begun was finished: the frames that went out are all the sent ones, or one more.
        assert!(
            texts.len() == sent || texts.len() == sent + 1,
            "{} of {sent}",
            texts.len()
        );
    }

    /// What arrives with the upgrade request is read before anything from the socket.
    #[actix::test]
    async fn bytes_read_before_the_hand_over_come_first() {
        use futures_util::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let ((ours, _), _peer) = tokio::try_join!(listener.accept(), peer).unwrap();
        // A masked ping from a client, with payload "hi".
        let mask = [1u8, 2, 3, 4];
        let mut early = BytesMut::from(&[0x89u8, 0x82][..]);
        early.extend_from_slice(&mask);
        early.extend_from_slice(&[b'h' ^ mask[0], b'i' ^ mask[1]]);
        let (_socket, mut inbound) = Socket::split(ours, early, 1024);
        match inbound.next().await {
            Some(Ok(WsFrame::Ping(payload))) => assert_eq!(&payload[..], b"hi"),
            other => panic!("expected the early ping, got {other:?}"),
        }
    }
}
