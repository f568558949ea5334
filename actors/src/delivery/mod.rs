//! How parsed events leave a connection: the hand-off to every sink
//! (`handoff`) and the window that writes once what two overlapping
//! connections both delivered (`dedup`).

pub mod dedup;
pub mod handoff;
