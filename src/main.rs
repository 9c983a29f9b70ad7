//! The `wsgimux` command line: parses arguments, sets up logging, runs a command and turns its
//! outcome into an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wsgimux",
    version,
    about = "One HTTP front door for many Python WSGI apps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the apps of a config file until SIGTERM or SIGINT.
    Serve {
        /// The config file.
        #[arg(long, short, default_value = "wsgimux.yaml")]
        config: PathBuf,
    },
    /// Validate a config file, probe every interpreter and print the route table.
    Check {
        /// The config file.
        #[arg(long, short, default_value = "wsgimux.yaml")]
        config: PathBuf,
    },
    /// Make the running server apply its config file now; prints the outcome. Exits 0 when
    /// applied, 1 when rejected or when an app's new processes did not start, 2 when no server
    /// answers.
    Reload {
        /// The config file the server was started with.
        #[arg(long, short, default_value = "wsgimux.yaml")]
        config: PathBuf,
        /// How long to wait for the outcome (e.g. 90s, 5m).
        #[arg(long, default_value = "10m", value_parser = wsgimux::config::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show which listener, route and app would serve a URL, and the SCRIPT_NAME and
    /// PATH_INFO the app would see.
    Explain {
        /// The config file.
        #[arg(long, short, default_value = "wsgimux.yaml")]
        config: PathBuf,
        /// The URL, e.g. http://example.com/blog/post?id=1
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("WSGIMUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<ExitCode> = runtime.block_on(async {
        match cli.command {
            Command::Check { config } => {
                let (config, apps) = wsgimux::app::load(&config).await?;
                print!("{}", wsgimux::app::describe_routes(&config, &apps));
                Ok(())
            }
            Command::Serve { config } => {
                wsgimux::app::serve(&config).await?;
                Ok(())
            }
            Command::Reload { config, timeout } => return Ok(reload(&config, timeout).await),
            Command::Explain { config, url } => {
                let (config, apps) = wsgimux::app::load(&config).await?;
                let stores: Vec<wsgimux::tls::CertStore> = config
                    .tls
                    .values()
                    .map(wsgimux::tls::CertStore::load)
                    .collect::<Result<_, _>>()?;
                let certified = |host: &str| stores.iter().any(|s| s.covers(host));
                print!(
                    "{}",
                    wsgimux::explain::explain(&config, &apps, &url, certified)?
                );
                Ok(())
            }
        }
        .map(|()| ExitCode::SUCCESS)
    });
    // Children and connection tasks have been stopped; do not wait for stray blocking tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            // Every error's message already names its cause; `{:#}` would repeat it.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `wsgimux reload`: asks the server, prints its report.
async fn reload(config: &std::path::Path, timeout: std::time::Duration) -> ExitCode {
    use wsgimux::control::{self, Request, Response};
    let dir = wsgimux::app::runtime_dir_of(config);
    match control::request(&dir, &Request::Reload, timeout).await {
        Ok(Response::Reload(report)) => {
            let ok = report.outcome.succeeded();
            if ok {
                println!("{}", report.summary);
            } else {
                eprintln!("{}", report.summary);
                for e in &report.errors {
                    eprintln!("  {e}");
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(Response::Error(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
