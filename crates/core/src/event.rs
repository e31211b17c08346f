//! The event log contract: every mutation writes its new state and appends events in one transaction.

use chrono::{DateTime, Utc};

/// The object an event belongs to, e.g. (`session`, `<session id>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AggregateRef {
    /// Kind of aggregate (`instance`, `org`, `user`, `session`, …).
    pub aggregate_type: String,
    /// Identifier of the aggregate, unique within its type.
    pub aggregate_id: String,
}

/// An event to append, before it has a sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Dotted event type, e.g. `session.added`.
    pub event_type: String,
    /// Event data; must not contain secrets in the clear.
    pub payload: serde_json::Value,
}

/// Who and what a write is for: the aggregate, its owner, the caller, and the expected state.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteIntent {
    /// The aggregate being changed.
    pub aggregate: AggregateRef,
    /// Organization or instance that owns the aggregate.
    pub resource_owner: String,
    /// Id of the caller (user or system) performing the change.
    pub creator: String,
    /// When `Some(n)`, the write fails with `Aborted` unless the aggregate's last sequence is `n`
    /// (0 = the aggregate must be new). When `None`, concurrent writers are serialized by retrying.
    pub expected_sequence: Option<u64>,
    /// The events to append, in order; at least one.
    pub events: Vec<NewEvent>,
}

/// A stored event as read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// The aggregate the event belongs to.
    pub aggregate: AggregateRef,
    /// Per-aggregate counter, starting at 1, without gaps.
    pub sequence: u64,
    /// Dotted event type.
    pub event_type: String,
    /// Event data.
    pub payload: serde_json::Value,
    /// Owner of the aggregate at the time of the event.
    pub resource_owner: String,
    /// Caller that caused the event.
    pub creator: String,
    /// Commit time of the event.
    pub created_at: DateTime<Utc>,
}

/// The change metadata every mutation answers (`details` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    /// Sequence of the aggregate's last event.
    pub sequence: u64,
    /// Time of the aggregate's first event.
    pub creation_date: DateTime<Utc>,
    /// Time of the aggregate's last event.
    pub change_date: DateTime<Utc>,
    /// Organization or instance owning the aggregate.
    pub resource_owner: String,
}
