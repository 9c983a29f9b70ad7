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
    let result: anyhow::Result<()> = runtime.block_on(async {
        match cli.command {
            Command::Check { config } => {
                let (config, apps) = wsgimux::app::load(&config).await?;
                print!("{}", wsgimux::app::describe_routes(&config, &apps));
                Ok(())
            }
            Command::Serve { config } => {
                let (config, apps) = wsgimux::app::load(&config).await?;
                wsgimux::app::serve(config, apps).await?;
                Ok(())
            }
        }
    });
    // Children and connection tasks have been stopped; do not wait for stray blocking tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error's message already names its cause; `{:#}` would repeat it.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
