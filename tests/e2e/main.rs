//! End-to-end tests: the gateway spawned in-process, real upstreams on loopback, real clients.

mod support;
