//! The one rule for handing a message to a session: never wait. A session whose mailbox
//! (`SWAPCAST_SEND_QUEUE` long, like its socket's queue) is full is told it overflowed and dropped
//! by the caller, so one stuck reader neither grows memory nor slows anyone else. Station events
//! do not come this way: registries write them through the session's outlet, which keeps the same
//! bound.

use actix::prelude::*;

use super::messages::ToSession;

/// What became of a delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The session is gone or overflowed; the caller forgets it.
    Drop,
}

pub fn deliver(to: &Recipient<ToSession>, message: ToSession) -> Delivery {
    match to.try_send(message) {
        Ok(()) => Delivery::Queued,
        Err(SendError::Full(_)) => {
            // `do_send` ignores the mailbox bound: this one message always gets through.
            to.do_send(ToSession::Overflowed);
            Delivery::Drop
        }
        Err(SendError::Closed(_)) => Delivery::Drop,
    }
}
