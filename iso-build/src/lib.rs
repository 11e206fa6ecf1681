//! `tandem-iso`: builds the installable tandem ISO and carries the installer,
//! first-boot and VIP stop steps that run inside it. See docs/install.md.

pub mod answer;
pub mod build;
pub mod dialogue;
pub mod error;
pub mod firstboot;
pub mod install;
pub mod render;
pub mod stage;
pub mod vip;
