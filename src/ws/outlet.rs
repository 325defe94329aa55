//! The sending half of a session: its socket, and where each channel stands in its stream. The
//! session and its thread's registry share it; the registry writes live events through it with a
//! call, the session everything else. The rule it keeps: live events are held while a channel
//! catches up (a snapshot or a replay from the log), and no event is sent twice or out of order.
//! What needs the session actor (waiting for the kernel, closing, stopping) is left as state the
//! session attends to.

use std::time::{Duration, Instant};

use actix_http::ws::CloseReason;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::socket::{self, Flushed, Socket};
use crate::events::wire::Frame;
use crate::realtime::messages::{Attention, Channel};

/// What the session must do for its outlet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// The connection broke, or the close handshake is complete.
    Stop,
    /// The client is a slow consumer: close with 1013.
    CloseOverflowed,
    /// Channels fell behind their live events: catch each up from the log, after the id given.
    Rejoin(Vec<(Channel, u64, i64)>),
    /// Frames wait for the kernel: wait until the socket is writable, then [`Outlet::writable`].
    WaitForKernel,
    Nothing,
}

struct ChannelState {
    /// Which subscription of the channel this is: a catch-up still running for an earlier one
    /// (unsubscribed, then subscribed again) must not feed this one.
    generation: u64,
    /// The generation the subscription began as (catching up again after falling behind makes a
    /// new `generation`, not a new subscription): a watch made for an earlier one — perhaps as
    /// another user, before a sign-in changed who the connection is — feeds it nothing.
    joined: u64,
    /// `Some` while catching up: the live events that arrived meanwhile.
    held: Option<Vec<(i64, Frame)>>,
    /// Notices that are not events (`viewer_joined`) that arrived while catching up: they go out
    /// after the held events, so a subscriber that has its snapshot misses none.
    held_notices: Vec<Frame>,
    /// The newest event id sent on this channel.
    last_sent: i64,
    /// `Some(n)` once live events after `n` were let go because the reader was behind (the
    /// queue, or the events held during a catch-up, past the bound): the channel takes no more
    /// live events until it has caught up again from the log, after `n`, at the reader's pace.
    behind_from: Option<i64>,
}

pub struct Outlet {
    socket: Socket,
    /// A connection watches a few channels at most: a list is quicker to search than a map.
    channels: Vec<(Channel, ChannelState)>,
    /// Frames queued, or events held, beyond this make the client a slow consumer.
    send_queue: usize,
    /// The kernel takes no more for now: frames queue until the session's waiter flushes them.
    blocked: bool,
    /// The session has a waiter out for the kernel.
    waiting: bool,
    /// A Close frame is queued: nothing else is sent.
    closing: bool,
    /// The Close frame is written and FIN sent.
    close_sent: bool,
    /// Over the queue bound: the session is to close with 1013.
    overflowed: bool,
    /// The connection broke: the session is to stop.
    failed: bool,
    /// The registry has told the session to attend (once until it does).
    poked: bool,
    /// Catch-ups waiting for the socket to take what they handed over before the next chunk.
    drains: Vec<oneshot::Sender<()>>,
    /// When the socket last took a frame, or a catch-up began to wait: a catch-up that waits
    /// long past it has a reader that stopped.
    progress: Instant,
    /// When the kernel last took frames it had refused (its buffer was full): the reader read.
    /// Frames the kernel takes at once say nothing — it takes them from a dead peer too, until
    /// its buffer fills.
    kernel_drained: Option<Instant>,
    /// The generation the next subscription gets.
    generations: u64,
}

/// Frames a catch-up hands over at a time: each channel catching up has at most this many in the
/// queue, and the next ones only once the socket has taken them (CONTRACT §4.4 v2).
pub const CATCHUP_CHUNK: usize = 256;

impl Outlet {
    pub fn new(socket: Socket, send_queue: usize) -> Outlet {
        Outlet {
            socket,
            channels: Vec::new(),
            send_queue,
            blocked: false,
            waiting: false,
            closing: false,
            close_sent: false,
            overflowed: false,
            failed: false,
            poked: false,
            drains: Vec::new(),
            progress: Instant::now(),
            kernel_drained: None,
            generations: 0,
        }
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Starts a channel, holding its live events until [`Outlet::go_live`]; returns the
    /// subscription's generation, which its catch-up names. `None` if it is already there.
    pub fn join(&mut self, channel: Channel) -> Option<u64> {
        if self.has(channel) {
            return None;
        }
        self.generations += 1;
        let state = ChannelState {
            generation: self.generations,
            joined: self.generations,
            held: Some(Vec::new()),
            held_notices: Vec::new(),
            last_sent: i64::MIN,
            behind_from: None,
        };
        self.channels.push((channel, state));
        Some(self.generations)
    }

    /// Whether `generation` is the channel's subscription now.
    pub fn is_current(&self, channel: Channel, generation: u64) -> bool {
        self.channels
            .iter()
            .any(|(c, state)| *c == channel && state.generation == generation)
    }

    /// The newest generation handed out: every subscription begun so far has one at most this.
    pub fn generations(&self) -> u64 {
        self.generations
    }

    pub fn leave(&mut self, channel: Channel) -> bool {
        let before = self.channels.len();
        self.channels.retain(|(c, _)| *c != channel);
        self.channels.len() < before
    }

    pub fn has(&self, channel: Channel) -> bool {
        self.channels.iter().any(|(c, _)| *c == channel)
    }

    pub fn is_live(&self, channel: Channel) -> bool {
        self.channels
            .iter()
            .any(|(c, state)| *c == channel && state.held.is_none())
    }

    pub fn channels(&self) -> Vec<Channel> {
        self.channels.iter().map(|(c, _)| *c).collect()
    }

    /// Writes a frame now, or queues it behind those the kernel has not taken.
    pub fn send(&mut self, frame: Bytes) {
        if self.closing {
            return;
        }
        self.socket.push(frame);
        self.flush_unless_blocked();
    }

    /// Live events of a channel: sent, or held while the channel catches up.
    pub fn live(&mut self, channel: Channel, generation: u64, items: &mut dyn Iterator<Item = (i64, &Frame)>) {
        if self.closing {
            return;
        }
        let bound = self.bound();
        let Some(state) = state_of(&mut self.channels, channel).filter(|s| s.joined <= generation) else {
            return;
        };
        for (event_id, frame) in items {
            if state.behind_from.is_some() {
                break;
            }
            match &mut state.held {
                Some(held) if held.len() >= self.send_queue => {
                    let first = held.first().map_or(event_id, |(id, _)| *id);
                    held.clear();
                    state.behind_from = Some(first - 1);
                }
                Some(held) => held.push((event_id, frame.clone())),
                None if self.socket.queued() >= bound => state.behind_from = Some(event_id - 1),
                None => queue_event(&mut self.socket, state, event_id, frame),
            }
        }
        self.flush_unless_blocked();
    }

    /// Part of what a channel needs before its live events: a snapshot (no ids) or replayed
    /// events (ids). `drained` is told once the socket has taken all of it — the catch-up's cue
    /// for its next part — and dropped untold if the channel or the connection goes first.
    pub fn catch_up(
        &mut self,
        channel: Channel,
        generation: u64,
        items: Vec<(Option<i64>, Frame)>,
        drained: oneshot::Sender<()>,
    ) {
        if self.closing {
            return;
        }
        let Some(state) =
            state_of(&mut self.channels, channel).filter(|s| s.generation == generation && s.held.is_some())
        else {
            return;
        };
        for (event_id, frame) in items {
            match event_id {
                Some(event_id) => queue_event(&mut self.socket, state, event_id, &frame),
                None => self.socket.push(frame.bytes().clone()),
            }
        }
        if self.drains.is_empty() {
            self.progress = Instant::now();
        }
        self.drains.push(drained);
        self.flush_unless_blocked();
        if self.socket.queued() == 0 {
            self.drained();
        }
    }

    /// Whether a catch-up has waited longer than `limit` without the socket taking a frame: the
    /// reader stopped, and is closed with 1013 like any slow consumer.
    pub fn stalled(&self, limit: Duration) -> bool {
        !self.drains.is_empty() && self.progress.elapsed() > limit
    }

    /// Whether the reader made room in the kernel's buffer within `limit`: a peer working through
    /// a backlog is alive though its Pong waits behind what it has not read yet.
    pub fn reader_read_within(&self, limit: Duration) -> bool {
        self.kernel_drained.is_some_and(|at| at.elapsed() <= limit)
    }

    /// Whether a catch-up waits for the socket to take what it handed over.
    pub fn catching_up(&self) -> bool {
        !self.drains.is_empty()
    }

    fn drained(&mut self) {
        for drained in self.drains.drain(..) {
            let _ = drained.send(());
        }
    }

    /// The channel is caught up through `position`: the held events that are newer go out.
    pub fn go_live(&mut self, channel: Channel, generation: u64, position: i64) {
        if self.closing {
            return;
        }
        let Some(state) = state_of(&mut self.channels, channel).filter(|s| s.generation == generation) else {
            return;
        };
        state.last_sent = state.last_sent.max(position);
        for (event_id, frame) in state.held.take().unwrap_or_default() {
            queue_event(&mut self.socket, state, event_id, &frame);
        }
        for frame in std::mem::take(&mut state.held_notices) {
            self.socket.push(frame.bytes().clone());
        }
        self.flush_unless_blocked();
    }

    /// A channel's message that is not an event and must not be missed once subscribed (a
    /// presence notice): sent when live, held while catching up — at most [`HELD_NOTICES`],
    /// the oldest let go past that (`presence` tells the whole anew).
    pub fn notice(&mut self, channel: Channel, generation: u64, frame: &Frame) {
        if self.closing {
            return;
        }
        let Some(state) = state_of(&mut self.channels, channel).filter(|s| s.joined <= generation) else {
            return;
        };
        if state.held.is_some() {
            if state.held_notices.len() >= HELD_NOTICES {
                state.held_notices.remove(0);
            }
            state.held_notices.push(frame.clone());
            return;
        }
        self.socket.push(frame.bytes().clone());
        self.flush_unless_blocked();
    }

    /// The channels that fell behind and are not catching up yet: each starts catching up again
    /// (a new generation, its live events held from now) and is returned with the id to replay
    /// from. Events up to what the channel sent already are skipped when they come again.
    fn rejoins(&mut self) -> Vec<(Channel, u64, i64)> {
        let mut due = Vec::new();
        for (channel, state) in &mut self.channels {
            if let (Some(after), None) = (state.behind_from, &state.held) {
                self.generations += 1;
                state.generation = self.generations;
                state.held = Some(Vec::new());
                state.behind_from = None;
                due.push((*channel, self.generations, after));
            }
        }
        due
    }

    /// Frames the queue may hold before live events wait in the log: the bound, and a chunk for
    /// each channel catching up (which hands over no more until that is taken).
    fn bound(&self) -> usize {
        let catching_up = self.channels.iter().filter(|(_, state)| state.held.is_some()).count();
        self.send_queue + CATCHUP_CHUNK * catching_up
    }

    /// Queues Close after what is queued (after what is under way only, if `drop_unsent`). False
    /// if the session was already closing.
    pub fn close(&mut self, reason: Option<CloseReason>, drop_unsent: bool) -> bool {
        if self.closing {
            return false;
        }
        if drop_unsent {
            self.socket.drop_unsent();
        }
        // Catch-ups under way end here: nothing more goes out.
        self.drains.clear();
        self.socket.push(socket::close_frame(reason));
        self.closing = true;
        self.flush_unless_blocked();
        true
    }

    /// The session's waiter: the kernel takes more now.
    pub fn writable(&mut self) {
        self.waiting = false;
        let before = self.socket.queued();
        self.flush();
        if self.socket.queued() < before {
            self.kernel_drained = Some(Instant::now());
        }
    }

    /// A Close is queued (or sent): nothing else goes out.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The Close is written and FIN sent.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// What the session must do now — the session is attending, so the registry may poke it
    /// again later. Asking for the kernel's attention counts as having a waiter out.
    pub fn attend(&mut self, peer_gone: bool) -> Need {
        self.poked = false;
        if self.failed || (self.close_sent && peer_gone) {
            Need::Stop
        } else if self.overflowed && !self.closing {
            Need::CloseOverflowed
        } else if self.behind() && !self.closing {
            Need::Rejoin(self.rejoins())
        } else if self.blocked && !self.waiting {
            self.waiting = true;
            Need::WaitForKernel
        } else {
            Need::Nothing
        }
    }

    /// Writes what is queued.
    fn flush(&mut self) {
        self.blocked = false;
        let before = self.socket.queued();
        let flushed = self.socket.flush();
        if self.socket.queued() < before {
            self.progress = Instant::now();
        }
        self.flushed(flushed);
    }

    fn flush_unless_blocked(&mut self) {
        if self.blocked {
            self.check_queue();
        } else {
            self.flush();
        }
    }

    fn flushed(&mut self, flushed: Flushed) {
        match flushed {
            Flushed::All => {
                self.drained();
                if self.closing && !self.close_sent {
                    self.close_sent = true;
                    self.socket.finish();
                }
            }
            Flushed::Blocked => {
                self.blocked = true;
                self.check_queue();
            }
            Flushed::Failed => self.failed = true,
        }
    }

    /// Live events wait in the log once the queue is at the bound ([`Outlet::live`]); what else
    /// fills it past twice the bound — answers to a client that sends requests and never reads
    /// them — makes a slow consumer.
    fn check_queue(&mut self) {
        if !self.closing && self.socket.queued() > 2 * self.bound() {
            self.overflowed = true;
        }
    }

    fn behind(&self) -> bool {
        self.channels
            .iter()
            .any(|(_, state)| state.behind_from.is_some() && state.held.is_none())
    }

    /// Whether the session has something to do: stop, close, catch a channel up, or wait for the
    /// kernel.
    fn wants_attention(&self) -> bool {
        self.failed || (self.overflowed && !self.closing) || (self.blocked && !self.waiting) || self.behind()
    }
}

/// A channel's place in the stream (a free function, so the socket stays borrowable beside it).
fn state_of(channels: &mut [(Channel, ChannelState)], channel: Channel) -> Option<&mut ChannelState> {
    channels.iter_mut().find(|(c, _)| *c == channel).map(|(_, state)| state)
}

/// Queues an event the channel has not sent yet; the caller flushes once for the lot.
/// Notices held per channel while it catches up.
const HELD_NOTICES: usize = 64;

fn queue_event(socket: &mut Socket, state: &mut ChannelState, event_id: i64, frame: &Frame) {
    if event_id > state.last_sent {
        state.last_sent = event_id;
        socket.push(frame.bytes().clone());
    }
}

impl crate::realtime::messages::Outlet for Outlet {
    fn live(&mut self, channel: Channel, generation: u64, items: &mut dyn Iterator<Item = (i64, &Frame)>) -> Attention {
        Outlet::live(self, channel, generation, items);
        if self.failed || self.overflowed {
            self.poked = true;
            Attention::Drop
        } else if self.wants_attention() && !self.poked {
            self.poked = true;
            Attention::Poke
        } else {
            Attention::None
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::domain::ids::StationId;

    const STATION: Channel = Channel::Station(StationId(1));

    /// An outlet over loopback, and the peer's raw stream.
    async fn outlet(send_queue: usize) -> (Outlet, super::super::socket::Inbound, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let ((ours, _), peer) = tokio::try_join!(listener.accept(), peer).unwrap();
        let (socket, inbound) = Socket::split(ours, BytesMut::new(), 1024);
        (Outlet::new(socket, send_queue), inbound, peer)
    }

    fn event(id: i64) -> (i64, Frame) {
        (id, Frame::text(&format!("{{\"event_id\":{id}}}")))
    }

    /// The text of every frame the peer has received so far (up to `n`).
    async fn read_texts(peer: &mut tokio::net::TcpStream, n: usize) -> Vec<String> {
        let mut wire = BytesMut::new();
        let mut texts = Vec::new();
        while texts.len() < n {
            let mut chunk = [0u8; 4096];
            let read = peer.read(&mut chunk).await.unwrap();
            assert!(read > 0, "closed after {texts:?}");
            wire.extend_from_slice(&chunk[..read]);
            while let Some((_, _, payload)) = actix_http::ws::Parser::parse(&mut wire, false, usize::MAX).unwrap() {
                texts.push(String::from_utf8(payload.unwrap().to_vec()).unwrap());
            }
        }
        texts
    }

    #[actix::test]
    async fn live_events_wait_for_the_catch_up_and_none_is_sent_twice() {
        let (mut out, _inbound, mut peer) = outlet(16).await;
        let generation = out.join(STATION).expect("joined");
        assert!(out.join(STATION).is_none(), "joined once");
        assert!(!out.is_live(STATION));
        // Live events arrive while the snapshot is on its way: held, not sent.
        let (e5, e6, e7) = (event(5), event(6), event(7));
        let early = [(5, &e5.1), (6, &e6.1), (7, &e7.1)];
        out.live(STATION, generation, &mut early.into_iter());
        let (drained, taken) = oneshot::channel();
        out.catch_up(STATION, generation, vec![(None, Frame::text("snapshot"))], drained);
        taken.await.expect("the kernel took the snapshot at once");
        // The snapshot reflects everything up to 6: only 7 is newer.
        out.go_live(STATION, generation, 6);
        assert!(out.is_live(STATION));
        // A late duplicate of 7 and an older event are skipped; 8 goes out.
        let (e4, e8) = (event(4), event(8));
        out.live(
            STATION,
            generation,
            &mut [(7, &e7.1), (4, &e4.1), (8, &e8.1)].into_iter(),
        );
        assert_eq!(
            read_texts(&mut peer, 3).await,
            ["snapshot", "{\"event_id\":7}", "{\"event_id\":8}"]
        );
        assert_eq!(out.attend(false), Need::Nothing);
    }

    /// A connection that signs in as someone else leaves its channels and joins them anew; what a
    /// watch of the earlier subscription still had in flight (another user's event or staff
    /// notice) reaches nothing.
    #[actix::test]
    async fn a_new_subscription_gets_nothing_meant_for_the_last_one() {
        let (mut out, _inbound, mut peer) = outlet(16).await;
        let before = out.join(STATION).expect("joined");
        assert!(out.leave(STATION));
        let now = out.join(STATION).expect("joined again");
        let (drained, taken) = oneshot::channel();
        out.catch_up(STATION, now, vec![(None, Frame::text("snapshot"))], drained);
        taken.await.expect("the kernel took the snapshot at once");
        out.go_live(STATION, now, 0);
        let (old, new) = (event(1), event(2));
        out.live(STATION, before, &mut [(1, &old.1)].into_iter());
        out.notice(STATION, before, &Frame::text("an earlier viewer's notice"));
        out.live(STATION, now, &mut [(2, &new.1)].into_iter());
        out.notice(STATION, now, &Frame::text("notice"));
        assert_eq!(
            read_texts(&mut peer, 3).await,
            ["snapshot", "{\"event_id\":2}", "notice"]
        );
    }

    /// More live events than the queue allows while a channel catches up: the channel lets them
    /// go and, once caught up, catches up again from the log after the first it let go — every
    /// event arrives, once and in order, and nobody is closed.
    #[actix::test]
    async fn a_channel_that_falls_behind_catches_up_again_from_the_log() {
        let (mut out, _inbound, mut peer) = outlet(2).await;
        let first = out.join(STATION).expect("joined");
        let events: Vec<(i64, Frame)> = (1..=5).map(event).collect();
        let burst = |out: &mut Outlet, ids: std::ops::RangeInclusive<usize>| {
            crate::realtime::messages::Outlet::live(
                out,
                STATION,
                first,
                &mut events[ids].iter().map(|(id, f)| (*id, f)),
            )
        };
        assert_eq!(burst(&mut out, 0..=2), Attention::None, "held past the bound: let go");
        let (drained, _taken) = oneshot::channel();
        out.catch_up(STATION, first, vec![(None, Frame::text("snapshot"))], drained);
        out.go_live(STATION, first, 0);
        let Need::Rejoin(due) = out.attend(false) else {
            panic!("no catch-up from the log")
        };
        let [(channel, second, after)] = due[..] else {
            panic!("{due:?}")
        };
        assert_eq!((channel, after), (STATION, 0));
        assert_eq!(out.attend(false), Need::Nothing, "one catch-up at a time");
        // Event 4 comes live while the log replays 1 to 3.
        assert_eq!(burst(&mut out, 3..=3), Attention::None);
        let (drained, _taken) = oneshot::channel();
        let replayed = events[0..=2].iter().map(|(id, f)| (Some(*id), f.clone())).collect();
        out.catch_up(STATION, second, replayed, drained);
        out.go_live(STATION, second, 3);
        burst(&mut out, 4..=4);
        let texts = read_texts(&mut peer, 6).await;
        let want: Vec<String> = std::iter::once("snapshot".to_owned())
            .chain((1..=5).map(|id| format!("{{\"event_id\":{id}}}")))
            .collect();
        assert_eq!(texts, want);
    }

    #[actix::test]
    async fn a_close_stops_everything() {
        let (mut out, _inbound, _peer) = outlet(2).await;
        assert!(out.close(None, true));
        assert!(!out.close(None, true), "one Close");
        assert!(out.is_closing());
        // Nothing more goes out after the Close, and once the peer is gone the session stops.
        out.send(Frame::text("late").bytes().clone());
        assert!(out.close_sent());
        assert_eq!(out.attend(true), Need::Stop);
    }

    #[actix::test]
    async fn a_full_kernel_asks_for_one_waiter() {
        let (mut out, _inbound, _peer) = outlet(1_000_000).await;
        let big = Frame::text(&"x".repeat(64 * 1024));
        // The peer reads nothing: sooner or later the kernel refuses.
        let mut blocked = false;
        for _ in 0..10_000 {
            out.send(big.bytes().clone());
            if out.attend(false) == Need::WaitForKernel {
                blocked = true;
                break;
            }
        }
        assert!(blocked, "the kernel never filled");
        assert_eq!(out.attend(false), Need::Nothing, "one waiter at a time");
        out.writable();
        // Still full (nobody reads): a waiter is asked for again.
        assert_eq!(out.attend(false), Need::WaitForKernel);
    }
}
