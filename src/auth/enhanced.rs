//! Enhanced authentication (MQTT 5.0 section 4.12): the small interface an
//! authentication method implements, and the set of methods a broker
//! offers.
//!
//! A method sees only the Authentication Data of each packet: it never
//! sees MQTT packets, reason codes or clocks. The MQTT side of the
//! exchange (AUTH packets, CONNACK, the deadline, re-authentication) is
//! `session::AuthExchange`, which drives a [`Conversation`]. A method's
//! work must be cheap (microseconds, as SCRAM's server side is): it runs
//! on the shard that reads the packets. A method whose checks cost
//! milliseconds must hand them to a thread pool like [`super::pool`]
//! through the session's acknowledgement barrier instead.

use std::fmt;
use std::sync::Arc;

/// What a method answers to the client's Authentication Data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// More is needed: send this data (AUTH 0x18, Continue authentication)
    /// and step again with the client's answer.
    Continue(Vec<u8>),
    /// Authenticated: send this data with the success (CONNACK or AUTH
    /// 0x00); may be empty.
    Success(Vec<u8>),
    /// Not authenticated (wrong credentials, unknown user or malformed
    /// data): nothing is told to the client beyond Not authorized.
    Fail,
}

/// An authentication method (SCRAM-SHA-256, ...): starts conversations.
pub trait Authenticator: Send + Sync + fmt::Debug {
    /// The Authentication Method name clients ask for (e.g. `SCRAM-SHA-256`).
    fn method(&self) -> &'static str;

    /// Answers the client's first Authentication Data (from CONNECT or
    /// from an AUTH 0x19 Re-authenticate; empty when the client sent none).
    /// On [`Step::Continue`] the conversation for the next steps comes
    /// with it.
    fn start(&self, data: &[u8]) -> (Step, Option<Box<dyn Conversation>>);
}

/// One exchange of a method after its first step.
pub trait Conversation: Send + fmt::Debug {
    /// Answers the client's next Authentication Data.
    fn step(&mut self, data: &[u8]) -> Step;
}

/// The methods a broker offers; shared by every shard.
#[derive(Debug, Default, Clone)]
pub struct Authenticators {
    methods: Vec<Arc<dyn Authenticator>>,
}

impl Authenticators {
    /// Adds `method` (replacing one of the same name).
    pub fn add(&mut self, method: Arc<dyn Authenticator>) {
        self.methods.retain(|m| m.method() != method.method());
        self.methods.push(method);
    }

    /// The method named `name`, matched exactly (method names are case
    /// sensitive, like every MQTT string).
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Authenticator>> {
        self.methods.iter().find(|m| m.method() == name)
    }

    /// Whether no method is offered.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}
