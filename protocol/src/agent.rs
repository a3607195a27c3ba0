//! Messages between the server and the agent.
//!
//! Every connection to the agent opens with [`AgentHello`] → [`AgentWelcome`]. What follows
//! depends on the channel:
//! - [`AgentChannel::Control`]: [`ControlRequest`]s with ids, answered by [`AgentMessage`]s (which
//!   may also carry events the agent pushes);
//! - [`AgentChannel::Tcp`]: one [`crate::net::ConnectReply`], then raw bytes;
//! - [`AgentChannel::Udp`]: one [`crate::net::UdpOpenReply`], then every datagram as one frame holding a
//!   [`Datagram`] in each direction.

use crate::net::{Family, ResolveResult};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    pub version: u32,
    pub token: String,
    pub channel: AgentChannel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentChannel {
    Control,
    Tcp { remote: SocketAddr },
    Udp { remote: SocketAddr, dns: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentWelcome {
    Welcome { version: u32, agent_pid: u32 },
    Refused { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    pub id: u64,
    pub body: AgentRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    Resolve { name: String, family: Family },
    Ping,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    Response { id: u64, body: AgentResponse },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentResponse {
    Resolved(ResolveResult),
    Pong,
    Error(String),
}

/// One UDP datagram on a UDP channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datagram(pub Vec<u8>);
