//! One connection, for every family: the generic `StreamActor` and the
//! `Protocol` a family implements (`actor`), the reconnect rules (`backoff`,
//! `backoff_actor`), live counters (`stats`), and the transports a protocol
//! opens — chunked HTTP bodies, Server-Sent Events, WebSockets (`http`,
//! `link`, `sse`), and the data-liveness rule (`liveness`).

pub mod actor;
pub mod backoff;
pub mod backoff_actor;
pub mod http;
pub mod link;
pub mod liveness;
pub mod sse;
pub mod stats;
