//! Alibaba Cloud's RPC dialect (rds 2014-08-15, dds 2015-12-01, polardb
//! 2017-08-01), as measured from the official SDKs in
//! `shared/spec/alibaba-rpc.md`.

pub mod signature;

pub mod dds;
pub mod polardb;
pub mod policy;
pub mod rds;
pub mod rpc;
pub mod shared;
pub mod xml;

pub use rpc::RpcConfig;
