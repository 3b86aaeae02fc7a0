//! The event-sourced core of swarm-registry.
//!
//! Inputs (polls, events, commands) are folded by one owner into immutable [`Snapshot`]s; every
//! transition emits [`Change`]s numbered by one monotonic revision. Nothing here performs IO:
//! sources and sinks live in the service crate and talk to this one through [`Registry`].
//!
//! - [`model`]: plain data (what a source reports, what clients see).
//! - [`labels`]: labels to scaling configuration, never dropping a service for a typo.
//! - [`fold`]: the pure transition function.
//! - [`snapshot`]: persistent state, the change log, and change application.
//! - [`change`]: the emitted facts and their shared JSON rendering.
//! - [`driver`]: the owning task, lock-free reads, gap-free subscriptions.

pub mod change;
pub mod driver;
pub mod fold;
pub mod labels;
pub mod model;
pub mod snapshot;

pub use change::{Change, ChangeKind};
pub use driver::{
    clock_floor, Driver, Registry, RegistryConfig, RegistryStopped, Subscription, Update,
};
pub use fold::{Folder, Input, Transition};
pub use labels::LabelRules;
pub use model::{
    ConfigError, Metrics, ScalingMetric, ServiceEntry, ServiceMode, ServiceSpec, SourceError,
    SourceHealth, SourceStatus, Thresholds, Timestamp, UnsampledTask,
};
pub use snapshot::{
    ChangeLog, HistoryGone, Key, MetricsRecord, ServiceMap, ServiceRecord, Snapshot,
};
