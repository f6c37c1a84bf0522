//! corecast's gateway: the Socket.IO server, one glommio shard per core.
pub mod config;
