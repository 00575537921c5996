//! The user service over real sockets, each test on SQLite and (with `TEST_DATABASE_URL`)
//! PostgreSQL.

mod binary;
mod helpers;

mod accounts;
mod admin;
mod events;
mod login;
mod refresh;
mod service_tokens;
mod sessions;
