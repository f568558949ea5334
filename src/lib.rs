//! streamherd: keeps many streaming-API connections alive, parses what they
//! deliver and hands every event to sinks. See README.md for the actor map.

pub mod app;
pub mod config;
pub mod control;
