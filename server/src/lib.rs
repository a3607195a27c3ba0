//! mirrord-server: the session engine, shared by the CLI (`mirrord`) and the IDE daemon
//! (`mirrord-server`).
//!
//! A session owns one agent (spawned for the target, reached through [`agent::AgentConnector`])
//! and one layer proxy: the unix control socket whose path goes to the program as
//! `MIRRORD_PROXY_ADDR`, and loopback TCP listeners that carry each outgoing TCP flow.

pub mod agent;
pub mod browser;
pub mod cli;
pub mod config_file;
pub mod daemon;
pub mod exec;
pub mod http_sniff;
pub mod https_delivery;
pub mod incoming;
pub mod kube;
pub mod limits;
pub mod paths;
pub mod proxy;
pub mod remote_env;
pub mod seccomp;
pub mod session;
pub mod traffic;
