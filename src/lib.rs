//! orchestr8-async: durable background agents behind an MCP server.
//!
//! Data flows one way: frontends ([`mcp`] through [`frontend`] and [`link`], [`rest`],
//! [`dashboard`]) → the service core ([`service`]) → the [`scheduler`] and the [`store`] →
//! [`runner`]s → the [`notifier`]. See ARCHITECTURE.md.

pub mod agents;
pub mod api;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod copy;
pub mod dashboard;
pub mod engine;
pub mod frontend;
pub mod limits;
pub mod link;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod notifier;
pub mod progress;
pub mod rest;
pub mod runner;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod workspace;
