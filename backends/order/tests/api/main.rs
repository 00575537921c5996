//! The order service over real sockets, each test on SQLite and (with `TEST_DATABASE_URL`)
//! PostgreSQL. Most tests run it against in-process fakes of the product and payment
//! services that follow the commerce contract (`fakes.rs`), with switches to inject
//! failures; `saga_real.rs` runs it against the real services (`real.rs`).

mod binary;
mod crash;
mod fakes;
mod helpers;
mod real;

mod after_sale;
mod orders;
mod saga;
mod saga_real;
mod store;
