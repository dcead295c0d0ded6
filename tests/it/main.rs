//! Integration tests: the real binary, driven over stdio MCP by rmcp's client, with real agent
//! processes and a real DuckDB file in a temp dir. One test crate, several modules, so the
//! project links one test binary.

mod cli;
mod cluster;
mod cluster_store;
mod dashboard;
mod disk_full;
mod durability;
mod engines;
mod harness;
mod mcp_http;
mod openapi;
mod pg;
mod plugin;
mod progress;
mod protocol;
mod refusals;
mod rest;
mod retention;
mod runners;
mod scheduling;
mod socket;
mod stub_http;
mod told;
mod tools;
#[cfg(target_os = "linux")]
mod torture;
mod webhooks;
mod workflows;
mod worktrees;
