//! The product service over real sockets, each storage test on SQLite and (with
//! `TEST_DATABASE_URL`) PostgreSQL.

mod binary;
mod helpers;

mod cache;
mod events;
mod inventory;
mod products;
mod reservations;
mod returns;
