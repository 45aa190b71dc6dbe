pub mod config;
pub mod driver;
pub mod netconf;
pub mod proto;
