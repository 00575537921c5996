//! End-to-end tests: the gateway spawned in-process, real upstreams on loopback, real clients.

mod auth;
mod balancing;
mod edge_filters;
mod examples;
mod filters;
mod observe;
mod proxy;
mod ratelimit;
mod reload;
mod support;
