//! An engine as a node of a cluster on PostgreSQL: its identity and the background duties that
//! keep the cluster whole.
//!
//! - [`Lifeline`]: joins the cluster, renews the node's lease, and says when the cluster has
//!   given the node up (its attempts must then stop: their outcomes would be refused), and leaves
//!   at shutdown.
//! - [`rescuer`]: while this node is the leader, takes over the running tasks of nodes whose
//!   lease expired and settles them as crash recovery does.
//! - [`Cluster`] (`scheduler.rs`): what the service asks of a node — submit, read, cancel,
//!   wait, all on the shared database — and `attempts.rs`, the claim loop and the attempts this
//!   node runs.
//! - `handoffs.rs`: tells this machine's sessions of the ends of what they handed off that
//!   other nodes recorded.
//! - `changes.rs`: the node's change feed for the dashboard's live pages, read from the
//!   database while somebody watches.
//! - [`warden`]: the process beside each node that stops its agents if the node dies.
//! - `workflows.rs`: workflows on the cluster — the tools' calls, and the step owed after a
//!   workflow's task ends, taken under the workflow's row lock by the pure rules of
//!   `workflow_steps.rs`.

mod attempts;
mod changes;
mod handoffs;
pub mod lifeline;
mod node;
pub mod rescuer;
mod scheduler;
pub mod warden;
mod workflow_steps;
mod workflows;

pub use lifeline::Lifeline;
pub use node::{
    host_binding, node_id, parse_queues, this_host, valid_queue, QueueError, DEFAULT_QUEUE,
};
pub use scheduler::{Cluster, ClusterConfig, Leaving};
