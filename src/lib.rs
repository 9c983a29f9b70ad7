//! wsgimux: one HTTP front door for many Python WSGI apps, each run as supervised child
//! processes under its own interpreter.
//!
//! Layout (see ARCHITECTURE.md): `preflight::load` reads and checks a `config`; `app` starts the
//! `supervisor` (children) and hands everything to a `reload::Reloader`, the only writer of the
//! live snapshot (`proxy::Live`: the route table and the front's settings). `server` accepts
//! connections (HTTP/1.1 through the `gate`) and hands each request to `proxy`, which relays
//! it over `upstream` connections and logs it (`accesslog`).

pub mod accesslog;
pub mod account;
pub mod acme;
pub mod activation;
pub mod admin;
pub mod app;
pub mod check;
pub mod config;
pub mod control;
pub mod dates;
pub mod error;
pub mod explain;
pub mod express;
pub mod front_thread;
pub mod gate;
pub mod http1;
pub mod interpreter;
pub mod leftover;
pub mod logfile;
pub mod manpage;
pub mod metrics;
pub mod native;
pub mod preflight;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod runtime_dir;
pub mod sdnotify;
pub mod server;
pub mod spawn;
pub mod statics;
pub mod status;
pub mod supervisor;
pub mod tls;
pub mod trigger;
pub mod trust;
pub mod upstream;
pub mod watch;
