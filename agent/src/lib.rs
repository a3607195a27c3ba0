//! mirrord-agent as a library: the parts that are useful (and testable) on their own. The agent
//! binary (`main.rs`) uses them from here.

pub mod redirect;
