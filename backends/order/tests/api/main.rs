//! The order service over real sockets, each test on SQLite and (with `TEST_DATABASE_URL`)
//! PostgreSQL. The product and payment services are in-process fakes that follow the
//! commerce contract (`fakes.rs`), with switches to inject failures.

mod fakes;
mod helpers;

mod orders;
mod saga;
mod store;
