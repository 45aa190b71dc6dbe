pub mod config;
pub mod control;
pub mod daemon;
pub mod driver;
pub mod keygen;
pub mod netconf;
pub mod os;
pub mod proto;
