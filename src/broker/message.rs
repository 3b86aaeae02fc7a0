//! What one change becomes on the stream, as plain data.
//!
//! The mapping lives here, apart from the client library, so it is checked without a broker:
//! the body is the change's JSON (the very bytes SSE sends), the publishing id is the change's
//! seq, and everything a consumer may want to filter or route on is repeated as properties.
//! Application properties are strings on purpose: the protocol crate frames small integers
//! wrongly, which stalls the connection.

use std::sync::Arc;

use pipeline::{Change, Timestamp};

/// The MIME type of every body.
pub const CONTENT_TYPE: &str = "application/json";

/// One message ready for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The change's seq: the broker's deduplication id, the message id, the SSE id.
    pub publishing_id: u64,
    /// The routing key, also the message's subject and its filter value.
    pub routing_key: String,
    /// The body's `event` field.
    pub event: &'static str,
    /// The service the change is about, if any.
    pub service_name: Option<String>,
    /// The revision of the snapshot the change belongs to.
    pub revision: u64,
    /// When the change's input was observed (the message's creation time).
    pub created_at: Timestamp,
    /// The change's JSON, shared with every other sink.
    pub body: Arc<str>,
}

impl Outgoing {
    pub fn from_change(change: &Change) -> Self {
        Outgoing {
            publishing_id: change.seq,
            routing_key: change.routing_key(),
            event: change.kind.event(),
            service_name: change.kind.service_name().map(str::to_owned),
            revision: change.revision,
            created_at: change.at,
            body: change.json(),
        }
    }

    /// The application properties, in a fixed order, all strings.
    pub fn application_properties(&self) -> Vec<(&'static str, String)> {
        let mut props = vec![
            ("routing_key", self.routing_key.clone()),
            ("event", self.event.to_owned()),
        ];
        if let Some(name) = &self.service_name {
            props.push(("service_name", name.clone()));
        }
        props.push(("revision", self.revision.to_string()));
        props
    }

    /// A generous estimate of the bytes this message adds to a publish frame: the body, the
    /// properties (the routing key appears three times: subject, property, filter value) and
    /// the fixed AMQP overhead.
    pub fn frame_bytes(&self) -> usize {
        const FIXED_OVERHEAD: usize = 256;
        self.body.len()
            + 3 * self.routing_key.len()
            + self.service_name.as_ref().map_or(0, String::len)
            + FIXED_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline::{ChangeKind, SourceHealth};

    #[test]
    fn a_change_maps_to_its_seq_key_and_json() {
        let change = Change::new(
            41,
            42,
            Timestamp(1_700_000_000_123),
            ChangeKind::MetricsUpdated {
                service_name: "web".to_owned(),
                metrics: None,
            },
        );
        let out = Outgoing::from_change(&change);
        assert_eq!(out.publishing_id, 41);
        assert_eq!(out.routing_key, "metrics.web");
        assert_eq!(out.event, "metrics.updated");
        assert_eq!(out.service_name.as_deref(), Some("web"));
        assert_eq!(out.revision, 42);
        assert_eq!(out.created_at, Timestamp(1_700_000_000_123));
        assert_eq!(out.body, change.json());
        assert_eq!(
            out.application_properties(),
            [
                ("routing_key", "metrics.web".to_owned()),
                ("event", "metrics.updated".to_owned()),
                ("service_name", "web".to_owned()),
                ("revision", "42".to_owned()),
            ]
        );
        assert!(out.frame_bytes() > out.body.len());
    }

    #[test]
    fn changes_about_no_service_omit_the_service_name() {
        let change = Change::new(
            7,
            7,
            Timestamp(0),
            ChangeKind::HealthCheck {
                source: SourceHealth::new(Timestamp(0)),
            },
        );
        let props = Outgoing::from_change(&change).application_properties();
        assert_eq!(
            props.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["routing_key", "event", "revision"]
        );
    }
}
