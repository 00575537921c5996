//! The payment service over real sockets, each storage test on SQLite and (with
//! `TEST_DATABASE_URL`) PostgreSQL.

mod binary;
mod helpers;

mod cards;
mod events;
mod fraud;
mod idempotency;
mod intents;
mod ledger;
mod processor;
mod recovery;
mod refunds;
