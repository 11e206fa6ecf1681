//! The properties every scenario checks, one per file (the layout of
//! openraft's `tests-turmoil/src/invariants/`).

pub mod failover_time;
pub mod no_lost_write;
pub mod single_answerer;
