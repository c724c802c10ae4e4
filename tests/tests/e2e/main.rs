//! The end-to-end suite, one test binary (it links once): each module covers one part of the
//! contract against real gateway processes over real sockets.

mod archive;
mod auth;
mod centrifuge;
mod chaos;
mod cluster;
mod commands;
mod config;
mod contract;
mod emulation;
mod failover;
mod hardening;
mod http_api;
mod lifecycle;
mod limits;
mod loadgen_smoke;
mod nginx;
mod offsets;
mod ops;
mod presence;
mod proxies;
mod publish_outcome;
mod recovery;

mod slow_consumer;
mod tls;
mod webhooks;
