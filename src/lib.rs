//! tcpmuxd: a TCPMUX (RFC 1078) server that hands each connection to the
//! program of the service its client names.

pub mod acl;
pub mod admission;
pub mod cli;
pub mod config;
pub mod exec_format;
pub mod launch;
pub mod limits;
pub mod listen;
pub mod log;
pub mod msp;
pub mod notify;
pub mod probe;
pub mod proxy;
pub mod server;
pub mod sessions;
pub mod startup;
pub mod summary;
pub mod sync;
pub mod tcpmux;
