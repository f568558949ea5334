//! The Twitter v1.1 streaming family: filter, sample, user and site
//! streams. `source` registers the kinds; `config` and `spec` validate a
//! source; `shards` and `plan` split it into connections (pure);
//! `family` keeps the plan true as follows change (make-before-break,
//! control streams); `protocol` runs one connection (`request` signs it,
//! `framing` and `classify` read it; `kinds` is the event catalogue;
//! `watermark` keeps what was written for the next start's restart gap).

pub mod classify;
pub mod config;
pub mod control_stream;
pub mod family;
pub mod follows;
pub mod framing;
pub mod kinds;
pub mod plan;
pub mod protocol;
pub mod request;
pub mod shards;
pub mod source;
pub mod spec;
pub mod watermark;
