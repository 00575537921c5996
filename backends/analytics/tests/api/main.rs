//! The analytics service over real sockets: a real SQLite or PostgreSQL database, facts on a
//! real bus, batches posted over HTTP.

mod binary;
mod dashboard;
mod facts;
mod helpers;
mod ingest;
mod privacy;
mod reports;
mod rollups;
