//! Pure protocol code, no IO and no actors: request building and signing,
//! byte framing of stream bodies, and message classification.

pub mod classify;
pub mod framing;
pub mod mastodon;
pub mod mastodon_streams;
pub mod request;
pub mod sse;
