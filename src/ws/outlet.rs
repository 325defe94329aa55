//! The sending half of a session: its socket, and where each channel stands in its stream. The
//! session and its thread's registry share it; the registry writes live events through it with a
//! call, the session everything else. The rule it keeps: live events are held while a channel
//! catches up (a snapshot or a replay from the log), and no event is sent twice or out of order.
//! What needs the session actor (waiting for the kernel, closing, stopping) is left as state the
//! session attends to.

use actix_http::ws::CloseReason;
use bytes::Bytes;

use super::socket::{self, Flushed, Socket};
use crate::events::wire::Frame;
use crate::realtime::messages::{Attention, Channel};

struct ChannelState {
    /// `Some` while catching up: the live events that arrived meanwhile.
    held: Option<Vec<(i64, Frame)>>,
    /// The newest event id sent on this channel.
    last_sent: i64,
}

pub struct Outlet {
    socket: Socket,
    /// A connection watches a few channels at most: a list is quicker to search than a map.
    channels: Vec<(Channel, ChannelState)>,
    /// Frames queued, or events held, beyond this make the client a slow consumer.
    send_queue: usize,
    /// The kernel takes no more for now: frames queue until the session's waiter flushes them.
    pub blocked: bool,
    /// The session has a waiter out for the kernel.
    pub waiting: bool,
    /// A Close frame is queued: nothing else is sent.
    pub closing: bool,
    /// The Close frame is written and FIN sent.
    pub close_sent: bool,
    /// Over the queue bound: the session is to close with 1013.
    pub overflowed: bool,
    /// The connection broke: the session is to stop.
    pub failed: bool,
    /// The registry has told the session to attend (once until it does).
    poked: bool,
}

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
        }
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Starts a channel, holding its live events until [`Outlet::go_live`]. False if it is
    /// already there.
    pub fn join(&mut self, channel: Channel) -> bool {
        if self.has(channel) {
            return false;
        }
        let state = ChannelState {
            held: Some(Vec::new()),
            last_sent: i64::MIN,
        };
        self.channels.push((channel, state));
        true
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
    pub fn live(&mut self, channel: Channel, items: &mut dyn Iterator<Item = (i64, &Frame)>) {
        if self.closing {
            return;
        }
        let Some(state) = state_of(&mut self.channels, channel) else {
            return;
        };
        for (event_id, frame) in items {
            match &mut state.held {
                Some(held) if held.len() >= self.send_queue => {
                    self.overflowed = true;
                    return;
                }
                Some(held) => held.push((event_id, frame.clone())),
                None => queue_event(&mut self.socket, state, event_id, frame),
            }
        }
        self.flush_unless_blocked();
    }

    /// What a channel needs before its live events: a snapshot (no ids) or replayed events.
    pub fn catch_up(&mut self, channel: Channel, items: Vec<(Option<i64>, Frame)>) {
        if self.closing {
            return;
        }
        let Some(state) = state_of(&mut self.channels, channel) else {
            return;
        };
        for (event_id, frame) in items {
            match event_id {
                Some(event_id) => queue_event(&mut self.socket, state, event_id, &frame),
                None => self.socket.push(frame.bytes().clone()),
            }
        }
        self.flush_unless_blocked();
    }

    /// The channel is caught up through `position`: the held events that are newer go out.
    pub fn go_live(&mut self, channel: Channel, position: i64) {
        if self.closing {
            return;
        }
        let Some(state) = state_of(&mut self.channels, channel) else {
            return;
        };
        state.last_sent = state.last_sent.max(position);
        for (event_id, frame) in state.held.take().unwrap_or_default() {
            queue_event(&mut self.socket, state, event_id, &frame);
        }
        self.flush_unless_blocked();
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
        self.socket.push(socket::close_frame(reason));
        self.closing = true;
        self.flush_unless_blocked();
        true
    }

    /// Writes what is queued (the session's waiter, once the kernel takes more).
    pub fn flush(&mut self) {
        self.blocked = false;
        let flushed = self.socket.flush();
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

    fn check_queue(&mut self) {
        if !self.closing && self.socket.queued() > self.send_queue {
            self.overflowed = true;
        }
    }

    /// Whether the session has something to do: stop, close, or wait for the kernel.
    pub fn wants_attention(&self) -> bool {
        self.failed || (self.overflowed && !self.closing) || (self.blocked && !self.waiting)
    }

    /// The session is attending now: the registry may poke it again later.
    pub fn attended(&mut self) {
        self.poked = false;
    }
}

/// A channel's place in the stream (a free function, so the socket stays borrowable beside it).
fn state_of(channels: &mut [(Channel, ChannelState)], channel: Channel) -> Option<&mut ChannelState> {
    channels.iter_mut().find(|(c, _)| *c == channel).map(|(_, state)| state)
}

/// Queues an event the channel has not sent yet; the caller flushes once for the lot.
fn queue_event(socket: &mut Socket, state: &mut ChannelState, event_id: i64, frame: &Frame) {
    if event_id > state.last_sent {
        state.last_sent = event_id;
        socket.push(frame.bytes().clone());
    }
}

impl crate::realtime::messages::Outlet for Outlet {
    fn live(&mut self, channel: Channel, items: &mut dyn Iterator<Item = (i64, &Frame)>) -> Attention {
        Outlet::live(self, channel, items);
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
