//! placeholder
pub mod service;
