//! Message Send Protocol (RFC 1159 version A, RFC 1312 version B) on TCP
//! and UDP: parse, check, deliver, reply.

pub mod deliver;
pub mod guard;
pub mod message;
pub mod serve;
pub mod tty;

pub use deliver::{Envelope, Transport};
pub use message::{Message, MspError, Version};
