//! The cluster transport: other ringmq nodes reached through NATS
//! (issue 17; design.md, "Beyond one VM").
//!
//! * [`subject`]: MQTT topics and filters as NATS subjects.

pub mod subject;
