//! wsgimux: one HTTP front door for many Python WSGI apps, each run as supervised child
//! processes under its own interpreter. See ARCHITECTURE.md for the layout.

pub mod config;
pub mod routes;
