pub mod config;
pub mod control;
pub mod driver;
pub mod netconf;
pub mod proto;
