//! A stand-in for a session in the actors' unit tests: takes every message and does nothing.

use actix::prelude::*;

use super::messages::ToSession;

pub struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<ToSession> for Sink {
    type Result = ();
    fn handle(&mut self, _: ToSession, _: &mut Context<Self>) {}
}
