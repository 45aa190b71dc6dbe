pub mod config;
pub mod proto;
