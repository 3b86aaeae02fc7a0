//! The event-sourced core of swarm-registry.
//!
//! Inputs (polls, events, commands) are folded by one owner into immutable [`Snapshot`]s; every
//! transition emits [`Change`]s numbered by one monotonic revision. Nothing here performs IO:
//! sources and sinks live in the service crate and talk to this one through [`Registry`].
//!
//! - [`model`]: plain data (what a source reports, what clients see).
//! - [`labels`]: labels to scaling configuration, never dropping a service for a typo.
//! - [`fold`]: the pure transition function.
//! - [`record`]: a registered service and a service's metrics, as snapshots and changes hold them.
//! - [`snapshot`]: persistent state, the change log, and change application.
//! - [`change`]: the emitted facts, their names, and their shared JSON rendering.
//! - [`driver`]: the owning task, lock-free reads, gap-free subscriptions.

pub mod change;
pub mod driver;
pub mod fold;
pub mod labels;
pub mod model;
pub mod record;
pub mod snapshot;

pub use change::{Change, ChangeKind};
pub use driver::{
    clock_floor, Driver, Registry, RegistryConfig, RegistryStopped, Submitted, Subscription,
    Update, CATCH_UP_BATCH,
};
pub use fold::{Folder, Input, Transition};
pub use labels::LabelRules;
pub use model::{
    LabelError, Metrics, ScalingMetric, ServiceEntry, ServiceMode, ServiceSpec, SourceError,
    SourceHealth, SourceStatus, Thresholds, Timestamp, UnsampledTask,
};
pub use record::{Key, MetricsRecord, ServiceMap, ServiceRecord};
pub use snapshot::{services_after, ChangeLog, HistoryGone, Snapshot};
