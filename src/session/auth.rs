//! The MQTT side of enhanced authentication (5.0 section 4.12): one
//! exchange of AUTH packets driving an [`auth::enhanced`] method, sans IO.
//!
//! Where it runs, and why:
//! * At CONNECT, before the connection is placed, the network layer drives
//!   an [`AuthExchange`] itself (`net::Connection::attach`): there is no
//!   session yet, and there must be none until the client is
//!   authenticated (a takeover or a clean start must not happen for an
//!   impostor). It reads packets, feeds them to
//!   [`AuthExchange::handle_auth`], writes what it returns, and stops at
//!   [`AuthExchange::deadline`] (`connect_timeout_ms` from the accept).
//! * For re-authentication (AUTH 0x19 on an open connection,
//!   [MQTT-4.12.1-1]) the [`Session`](super::Session) holds the exchange
//!   in its connection state; its deadline joins the session's
//!   `poll_timeout`, so the shard's sweep ends a stalled one.
//!
//! The method's work runs inline (SCRAM's server side costs a few HMACs);
//! nothing here waits for anything but the client, so the acknowledgement
//! barrier is not needed: other packets keep flowing during a
//! re-authentication (5.0 section 4.12.1).
//!
//! [`auth::enhanced`]: crate::auth::enhanced

use crate::auth::enhanced::{Authenticator, Authenticators, Conversation, Step};
use crate::protocol::{Auth, AuthProperties, ReasonCode};
use bytes::Bytes;
use bytestring::ByteString;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to do after a step of the exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Send this AUTH 0x18 (Continue authentication) and wait for the
    /// client's next AUTH [MQTT-4.12.0-2].
    Continue(Auth),
    /// Authenticated: the data goes into the CONNACK (or the AUTH 0x00
    /// that ends a re-authentication), with the method [MQTT-4.12.0-5].
    Success(Option<Bytes>),
    /// Refused with this code: CONNACK before the connection is accepted
    /// [MQTT-4.12.0-4], DISCONNECT after [MQTT-4.12.1-2]; then the
    /// connection closes.
    Failed(ReasonCode),
}

/// One exchange in progress: after the server's AUTH 0x18, waiting for
/// the client's.
#[derive(Debug)]
pub struct AuthExchange {
    method: ByteString,
    conversation: Box<dyn Conversation>,
    deadline: Instant,
}

impl AuthExchange {
    /// Starts an exchange for a CONNECT with `method` and `data`: the
    /// method is looked up in `methods` (unknown: 0x8C Bad authentication
    /// method [MQTT-4.12.0-1]). The exchange is returned when the outcome
    /// is [`AuthOutcome::Continue`], to be ended by `deadline`.
    pub fn start(
        methods: &Authenticators,
        deadline: Instant,
        method: &ByteString,
        data: Option<&Bytes>,
    ) -> (Option<Self>, AuthOutcome) {
        match methods.get(method) {
            Some(authenticator) => Self::start_with(authenticator, deadline, method, data),
            None => (None, AuthOutcome::Failed(ReasonCode::BadAuthenticationMethod)),
        }
    }

    /// Starts an exchange with a known method (a re-authentication).
    pub fn start_with(
        authenticator: &Arc<dyn Authenticator>,
        deadline: Instant,
        method: &ByteString,
        data: Option<&Bytes>,
    ) -> (Option<Self>, AuthOutcome) {
        let (step, conversation) = authenticator.start(data.map_or(&[][..], |data| &data[..]));
        let outcome = outcome(method, step);
        let exchange = match (&outcome, conversation) {
            (AuthOutcome::Continue(_), Some(conversation)) => {
                Some(Self { method: method.clone(), conversation, deadline })
            }
            // A method that continues without a conversation is broken:
            // refusing is the safe answer.
            (AuthOutcome::Continue(_), None) => {
                return (None, AuthOutcome::Failed(ReasonCode::NotAuthorized))
            }
            _ => None,
        };
        (exchange, outcome)
    }

    /// The client's AUTH. It must continue the exchange (0x18,
    /// [MQTT-4.12.0-3]) with the same method ([MQTT-4.12.0-5]); anything
    /// else is a Protocol Error. After any outcome but
    /// [`AuthOutcome::Continue`] the exchange is over.
    pub fn handle_auth(&mut self, auth: &Auth) -> AuthOutcome {
        if auth.reason != ReasonCode::ContinueAuthentication
            || auth.properties.authentication_method.as_ref() != Some(&self.method)
        {
            return AuthOutcome::Failed(ReasonCode::ProtocolError);
        }
        let data = auth.properties.authentication_data.as_deref().unwrap_or_default();
        outcome(&self.method, self.conversation.step(data))
    }

    /// When the exchange fails if the client has not answered.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The method of the exchange.
    pub fn method(&self) -> &ByteString {
        &self.method
    }
}

/// The deadline of an exchange started at `now` that may last `timeout`.
pub fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout).unwrap_or(now)
}

/// The AUTH packet the server sends: the method is always there
/// [MQTT-4.12.0-5].
pub fn auth_packet(method: &ByteString, reason: ReasonCode, data: Option<Bytes>) -> Auth {
    Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(method.clone()),
            authentication_data: data,
            ..AuthProperties::default()
        },
    }
}

fn outcome(method: &ByteString, step: Step) -> AuthOutcome {
    let data = |data: Vec<u8>| (!data.is_empty()).then(|| Bytes::from(data));
    match step {
        Step::Continue(next) => AuthOutcome::Continue(auth_packet(
            method,
            ReasonCode::ContinueAuthentication,
            data(next),
        )),
        Step::Success(last) => AuthOutcome::Success(data(last)),
        Step::Fail => AuthOutcome::Failed(ReasonCode::NotAuthorized),
    }
}
