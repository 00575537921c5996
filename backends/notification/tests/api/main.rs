//! The notification service over real sockets: events on a real bus, a real SQLite or
//! PostgreSQL database, mail to files or to a real SMTP server (aiosmtpd),
//! web push to a push service on a real socket that checks and decrypts what it gets.

mod binary;
mod channels;
mod email;
mod helpers;
mod inbox;
mod live;
mod push;
mod pushserver;
mod queue;
mod smtp;
