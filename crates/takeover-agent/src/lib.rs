//! placeholder
pub mod fence;
pub mod service;
