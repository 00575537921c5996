//! End-to-end tests: the gateway spawned in-process, real upstreams on loopback, real clients.

mod auth;
mod balancing;
mod dns;
mod edge_filters;
mod examples;
mod filters;
mod framing;
mod observe;
mod outlier;
mod proxy;
mod ratelimit;
mod raw;
mod reload;
mod slow_clients;
mod support;
mod tls;
