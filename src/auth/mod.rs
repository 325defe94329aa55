//! Who is calling and what they may do: password hashing, tokens, sign-in sessions, the request
//! extractor, and the one authorization policy (CONTRACT §2) used by REST, WebSocket actions and
//! subscriptions alike.

pub mod callers;
pub mod extract;
pub mod guard;
pub mod origin;
pub mod password;
pub mod policy;
pub mod sessions;
pub mod tokens;

use crate::domain::ids::UserId;
use crate::domain::values::Role;

/// An authenticated caller, as of this request: role and activity are read from the database (or
/// [`callers`], which forgets a user the moment a change to them is announced), not trusted from
/// the token, so a demotion takes effect on the very next request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub id: UserId,
    pub role: Role,
    pub email: String,
    /// How presence names them to a station's staff.
    pub display_name: String,
}

/// A signed-in connection's identity: the caller as last read, and the credentials of the token it
/// signed in with — which sign-in session it belongs to, and when it stops counting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub actor: Caller,
    pub credentials: tokens::Credentials,
}
