//! What can go wrong between the publisher and the broker.
//!
//! Every variant carries text, not the client library's error values: the publisher keeps the
//! last error for operators and compares failures across reconnects, and the library's errors
//! are neither cloneable nor stable across its versions. No variant ever holds a password.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("cannot create stream {stream:?}: {reason}")]
    CreateStream { stream: String, reason: String },
    #[error("cannot declare producer {producer:?} on stream {stream:?}: {reason}")]
    DeclareProducer {
        producer: String,
        stream: String,
        reason: String,
    },
    #[error("cannot ask for producer {producer:?}'s last publishing id: {reason}")]
    QuerySequence { producer: String, reason: String },
    #[error("publishing failed: {0}")]
    Publish(String),
    #[error("the broker refused publishing id {publishing_id}: {code}")]
    Refused { publishing_id: u64, code: String },
    #[error("{operation} took longer than {after:?}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },
    #[error("the connection to the broker was lost")]
    ConnectionLost,
    #[error("not connected to the broker")]
    NotConnected,
    /// The broker's dedup mark for our producer name is above every id this process sent:
    /// someone else publishes under the name, and our next ids would be dropped silently.
    #[error(
        "another writer publishes under this producer name: the broker's last publishing id is \
         {broker_last}, above the {sent_up_to} this registry sent; its changes would be \
         discarded as duplicates, so it stopped publishing (give each registry its own \
         RABBITMQ_PRODUCER_NAME, or stop one; a restart publishes again)"
    )]
    AnotherWriter { broker_last: u64, sent_up_to: u64 },
}
