//! Typed replicated settings: the keys of the replicated config that the node reads,
//! one module per namespace. (Validated by the server before a `SetConfig` is proposed.)

pub mod sip;

/// Config key that holds a node's maintenance flag (replicated, so the master knows).
pub fn maintenance_key(id: u64) -> String {
    format!("maintenance.{id}")
}
