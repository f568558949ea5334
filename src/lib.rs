//! streamherd: keeps many streaming-API connections alive, parses what they
//! deliver and hands every event to sinks. `cli` is the command line (and
//! what a custom binary calls), `config` reads and validates the config,
//! `app` starts and stops the service, `control` serves the control API,
//! `sim` embeds the simulator when it is built in, `coverage` reports what
//! the file archive holds. See README.md for the actor map.

pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod coverage;
pub mod sim;

pub use config::Registries;
