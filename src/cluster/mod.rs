//! An engine as a node of a cluster on PostgreSQL: its identity and the background duties that
//! keep the cluster whole.
//!
//! - [`Lifeline`]: joins the cluster, renews the node's lease, and says when the cluster has
//!   given the node up (its attempts must then stop: their outcomes would be refused), and leaves
//!   at shutdown.
//! - [`rescuer`]: while this node is the leader, takes over the running tasks of nodes whose
//!   lease expired and settles them as crash recovery does.
//!
//! Not yet used by the engine: claiming and running tasks on a cluster is the next step.

mod lifeline;
mod node;
pub mod rescuer;

pub use lifeline::Lifeline;
pub use node::{node_id, parse_queues, QueueError};
