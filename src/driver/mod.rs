pub mod sys;
pub mod tun;
