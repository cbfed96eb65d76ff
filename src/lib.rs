//! ringmq: a thread-per-core MQTT broker.
//!
//! Module rules (see `design.md`): `protocol` and `session` are sans-IO.

pub mod config;
pub mod message;
pub mod protocol;
pub mod session;
