//! The notification service over real sockets: events on a real bus, a real SQLite or
//! PostgreSQL database, mail to files or to a real SMTP server (aiosmtpd).

mod binary;
mod email;
mod helpers;
mod inbox;
mod live;
mod queue;
mod smtp;
