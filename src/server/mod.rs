//! The daemon: what its tasks share ([`state`]), the path of one TCPMUX
//! connection from accept to hand-off ([`connection`]), and its lifecycle
//! ([`lifecycle`]).

pub mod connection;
pub mod lifecycle;
pub mod state;

pub use connection::Outcome;
pub use lifecycle::serve;
pub use state::{Serves, State, Stats};
