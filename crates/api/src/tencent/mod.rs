//! The Tencent Cloud API 3.0 dialect (mongodb 2019-07-25), wire contract in
//! `../shared/spec/tencent-tc3.md`. So far its building blocks: both request
//! signatures (`signature`) and the flattened parameters of GET and form
//! requests (`params`); the request layer, shared with the Alibaba dialect's
//! authentication, key lookup, replay and throttling, comes next
//! (`docs/status.md`, issue 11).

pub mod layer;
pub mod ops;
pub mod params;
pub mod signature;
