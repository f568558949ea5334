//! How parsed events travel from a connection to the sinks: the planner's
//! hand-off to every sink (`handoff`), the window that writes once what two
//! overlapping connections both delivered (`dedup`), the acknowledgements
//! that let positions advance only past written events (`ack`), and the disk
//! queue that takes a sink's overflow (`spill`).

pub mod ack;
pub mod dedup;
pub mod handoff;
pub mod spill;
