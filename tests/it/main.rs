//! Integration tests: the real binary, real interpreters, real sockets. One test binary, so
//! the build links once; each test gets its own temporary folder and a free port.

mod acme;
mod app_pages;
mod caps;
mod config_errors;
mod corpus;
mod deploy;
mod frameworks;
mod front;
mod harness;
mod history;
mod hostile;
mod layout;
mod limits;
mod native;
mod operating;
mod privileges;
mod protocol;
mod python_layouts;
mod reload;
mod routing;
mod runtime_area;
mod scale;
mod servers;
mod streaming;
mod stuck;
mod supervision;
mod tls;
mod uploads;
mod wsgi;
