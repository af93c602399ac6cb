//! End-to-end tests: the real `stowage` binary (server and CLI) against real
//! PostgreSQL servers. One test binary with submodules links once.

mod alibaba;
mod cli;
mod download;
mod download_pg;
mod harness;
mod mongo;
mod mysql;
mod nodes;
mod postgres;
mod s3;
mod safety;
mod schedule;
mod sdk;
mod sharded;
