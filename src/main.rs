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
        #[arg(long, short, value_name = "FILE", default_value = "wsgimux.yaml")]
        config: PathBuf,
    },
    /// Validate a config file, probe every interpreter, import every app (as its processes
    /// will) and print the route table.
    Check {
        /// The config file.
        #[arg(long, short, value_name = "FILE", default_value = "wsgimux.yaml")]
        config: PathBuf,
        /// Do not import the apps (for apps whose import has side effects).
        #[arg(long)]
        no_import: bool,
    },
    /// Make the running server apply its config file now; prints the outcome. Exits 0 when
    /// applied, 1 when rejected or when an app's new processes did not start, 2 when no server
    /// answers.
    Reload {
        /// The config file the server was started with.
        #[arg(long, short, value_name = "FILE", default_value = "wsgimux.yaml")]
        config: PathBuf,
        /// The server's control socket (default: found from the config file).
        #[arg(long, value_name = "SOCKET", env = "WSGIMUX_CONTROL")]
        control: Option<PathBuf>,
        /// How long to wait for the outcome (e.g. 90s, 5min).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = wsgimux::config::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Restart these apps' processes without downtime (new ones start and answer before the
    /// old ones drain): for code deploys. Exits 0 when done, 1 when an app's new processes did
    /// not start (it keeps its old ones) or an app is unknown, 2 when no server answers.
    Restart {
        /// The apps to restart.
        #[arg(required = true)]
        apps: Vec<String>,
        /// The config file the server was started with.
        #[arg(long, short, value_name = "FILE", default_value = "wsgimux.yaml")]
        config: PathBuf,
        /// The server's control socket (default: found from the config file).
        #[arg(long, value_name = "SOCKET", env = "WSGIMUX_CONTROL")]
        control: Option<PathBuf>,
        /// How long to wait for the outcome (e.g. 90s, 5min).
        #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = wsgimux::config::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show every app of the running server: routes, interpreter, worker, generation, and per
    /// process pid, state, uptime, restarts, requests, in flight, errors, p50/p99; and the
    /// last reload. Exits 2 when no server answers.
    Status {
        /// The config file the server was started with.
        #[arg(long, short, value_name = "FILE", default_value = "wsgimux.yaml")]
        config: PathBuf,
        /// The server's control socket (default: found from the config file).
        #[arg(long, value_name = "SOCKET", env = "WSGIMUX_CONTROL")]
        control: Option<PathBuf>,
        /// Print JSON (for scripts) instead of text.
        #[arg(long)]
        json: bool,
        /// Print the Python stack of every thread in each of APP's processes instead (a
        /// live look at what a stuck app is doing).
        #[arg(long, value_name = "APP")]
        stacks: Option<String>,
    },
    /// A live view of the running server's apps, busiest first (requests per second over the
    /// last minute, 5xx per second, worst p99, in flight, processes, memory), redrawn every
    /// two seconds until interrupted, like `uwsgitop`. Exits 2 when no server answers.
    Top {
        /// The config file the server was started with.
        #[arg(long, short, value_name = "FILE", default_value = "wsgimux.yaml")]
        config: PathBuf,
        /// The server's control socket (default: found from the config file).
        #[arg(long, value_name = "SOCKET", env = "WSGIMUX_CONTROL")]
        control: Option<PathBuf>,
        /// Print one view and exit (for scripts and a terminal without redraws).
        #[arg(long)]
        once: bool,
    },
    /// Serve one WSGI app without a config file, like `mod_wsgi-express start-server`.
    Run(wsgimux::express::Express),
    /// Show which listener, route and app (or static folder) serves a URL, and the SCRIPT_NAME
    /// and PATH_INFO the app sees: asked of the running server when one answers (what it serves
    /// now), else read from the config file.
    Explain {
        /// The config file.
        #[arg(long, short, value_name = "FILE", default_value = "wsgimux.yaml")]
        config: PathBuf,
        /// The server's control socket (default: found from the config file).
        #[arg(long, value_name = "SOCKET", env = "WSGIMUX_CONTROL")]
        control: Option<PathBuf>,
        /// The URL, e.g. http://example.com/blog/post?id=1
        url: String,
    },
    /// Add the local CA of `tls: internal` listeners to this machine's trust store (the macOS
    /// System keychain, Debian/Ubuntu's or Fedora's CA bundle), making it if there is none.
    /// Needs root for the trust store.
    Trust {
        /// The config file (its `acme.storage` holds the CA).
        #[arg(long, short, value_name = "FILE", default_value = "wsgimux.yaml")]
        config: PathBuf,
    },
    /// Remove the local CA of `tls: internal` listeners from this machine's trust store. Needs
    /// root.
    Untrust {
        /// The config file (its `acme.storage` holds the CA).
        #[arg(long, short, value_name = "FILE", default_value = "wsgimux.yaml")]
        config: PathBuf,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) for wsgimux.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the wsgimux(1) manual page (roff): every command and option, files, signals,
    /// environment, exit status, examples.
    Manpage,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_log(&cli.command);
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
    let result = runtime.block_on(run(cli.command));
    // Children and connection tasks have been stopped; do not wait for stray blocking tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            // Every error's message already names its cause; `{:#}` would repeat it.
            if wsgimux::logfile::json_log() {
                tracing::error!("{e}");
            } else {
                // After what the log's queue holds, in order.
                wsgimux::logfile::flush_all();
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    };
    // What the log queues still hold is written before the process ends.
    wsgimux::logfile::flush_all();
    code
}

/// Runs one command; the exit code for those that choose their own (reload, status).
async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check { config, no_import } => {
            let checked = wsgimux::check::check(&config, !no_import).await?;
            for w in &checked.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", checked.report);
            Ok(())
        }
        Command::Serve { config } => {
            wsgimux::app::serve(&config).await?;
            Ok(())
        }
        Command::Reload {
            config,
            control,
            timeout,
        } => return Ok(reload(&control_socket(&config, control), timeout).await),
        Command::Status {
            config,
            control,
            json,
            stacks,
        } => return Ok(status(&control_socket(&config, control), json, stacks).await),
        Command::Restart {
            apps,
            config,
            control,
            timeout,
        } => {
            let socket = control_socket(&config, control);
            let report = wsgimux::control::restart(&socket, apps, timeout).await;
            return Ok(print_report(report));
        }
        Command::Run(opts) => run_express(opts).await,
        Command::Top {
            config,
            control,
            once,
        } => return Ok(top(&control_socket(&config, control), once).await),
        Command::Explain {
            config,
            control,
            url,
        } => return explain(&config, control, url).await,
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cli, "wsgimux", &mut std::io::stdout());
            Ok(())
        }
        Command::Trust { config } => {
            print!("{}", wsgimux::trust::trust(&config)?);
            Ok(())
        }
        Command::Untrust { config } => {
            print!("{}", wsgimux::trust::untrust(&config)?);
            Ok(())
        }
        Command::Manpage => {
            let cli = <Cli as clap::CommandFactory>::command();
            print!("{}", wsgimux::manpage::render(&cli));
            Ok(())
        }
    }
    .map(|()| ExitCode::SUCCESS)
}

/// `wsgimux run`: one app without a config file, its banner, and its folder removed after.
async fn run_express(opts: wsgimux::express::Express) -> anyhow::Result<()> {
    let cwd = std::env::current_dir()?;
    let config = opts.write(&cwd)?;
    let shown = config.clone();
    let banner: wsgimux::app::Banner = Box::new(move |apps, urls| {
        let (python, worker) = apps
            .first()
            .map(|a| (a.describe_python(), a.worker.to_string()))
            .unwrap_or_default();
        wsgimux::express::banner(&opts, &shown, &python, &worker, urls)
    });
    let served = wsgimux::app::serve_with(&config, Some(banner)).await;
    // This run's own folder: nobody else reads it.
    if let Some(root) = config.parent() {
        let _ = std::fs::remove_dir_all(root);
    }
    served?;
    Ok(())
}

/// `wsgimux explain`: the running server says what serves the URL now; without one, the file
/// does.
async fn explain(
    config: &std::path::Path,
    control: Option<PathBuf>,
    url: String,
) -> anyhow::Result<ExitCode> {
    // The running server says what serves the URL now; without one, the file does.
    let socket = control_socket(config, control);
    let limit = std::time::Duration::from_secs(5);
    let served = match wsgimux::control::explain(&socket, url.clone(), limit).await {
        Ok(e) => {
            print!("{}", e.text);
            println!("  source       : the running server ({})", socket.display());
            e.served
        }
        Err(wsgimux::control::ControlError::NotRunning { .. }) => {
            let (config, apps) = wsgimux::preflight::load(config).await?;
            let stores: Vec<wsgimux::tls::CertStore> = config
                .tls
                .values()
                .map(wsgimux::tls::CertStore::load)
                .collect::<Result<_, _>>()?;
            let certified = |host: &str| stores.iter().any(|s| s.covers(host));
            let e = wsgimux::explain::explain(&config, &apps, &url, certified)?;
            print!("{}", e.text);
            e.served
        }
        Err(e) => return Err(e.into()),
    };
    // Like a failed lookup: nothing would answer this URL.
    Ok(if served {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// wsgimux's own log on stderr: text, or JSON lines when the served config says
/// `log_format: json` (read before the config is checked, so the check's messages use it).
fn init_log(command: &Command) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WSGIMUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match command {
        Command::Serve { config } => std::fs::read_to_string(config)
            .map(|t| wsgimux::config::log_format_hint(&t) == wsgimux::config::LogFormat::Json)
            .unwrap_or(false),
        _ => false,
    };
    wsgimux::logfile::set_json_log(json);
    // Serving: through stderr's queue, so no thread waits for stderr's reader (`logfile`).
    let serving = matches!(command, Command::Serve { .. } | Command::Run(_));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || -> Box<dyn std::io::Write> {
            match serving {
                true => Box::new(wsgimux::logfile::stderr()),
                false => Box::new(std::io::stderr()),
            }
        });
    if json {
        log.json()
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        log.with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// The control socket to ask: the one named, else the one of the server started with
/// `config` (any spelling of the file).
fn control_socket(config: &std::path::Path, named: Option<PathBuf>) -> PathBuf {
    named.unwrap_or_else(|| {
        let file = wsgimux::preflight::config_path(config);
        wsgimux::control::socket_for_config(&file)
    })
}

/// `wsgimux reload`: asks the server, prints its report.
async fn reload(socket: &std::path::Path, timeout: std::time::Duration) -> ExitCode {
    print_report(wsgimux::control::reload(socket, timeout).await)
}

/// A reload's or restart's report: its summary, and what went wrong; the exit code.
fn print_report(
    report: Result<wsgimux::trigger::Report, wsgimux::control::ControlError>,
) -> ExitCode {
    match report {
        Ok(report) if report.outcome.succeeded() => {
            println!("{}", report.summary);
            ExitCode::SUCCESS
        }
        Ok(report) => {
            eprintln!("{}", report.summary);
            // A rejection's summary names its first problem already.
            let shown = usize::from(report.outcome == wsgimux::trigger::Outcome::Rejected);
            for e in report.errors.iter().skip(shown) {
                eprintln!("  {e}");
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `wsgimux top`: the apps busiest first, redrawn every two seconds (or once).
async fn top(socket: &std::path::Path, once: bool) -> ExitCode {
    loop {
        let limit = std::time::Duration::from_secs(10);
        let report = match wsgimux::control::status(socket, limit).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let frame = wsgimux::status::top::render_frame(&report);
        if once {
            print!("{frame}");
            return ExitCode::SUCCESS;
        }
        // Home and clear, then the frame: one write, so the terminal does not flicker.
        print!("\x1b[H\x1b[2J{frame}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}

/// `wsgimux status --stacks APP`: asks the server, prints the stacks.
async fn stacks(socket: &std::path::Path, app: String, json: bool) -> ExitCode {
    let limit = std::time::Duration::from_secs(10);
    let found = match wsgimux::control::stacks(socket, app.clone(), limit).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if json {
        if let Err(code) = print_json(&found, "the stacks") {
            return code;
        }
    } else {
        print!("{}", wsgimux::status::stacks::render_text(&app, &found));
    }
    if found.iter().all(|p| p.stacks.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `wsgimux status`: asks the server, prints its answer (or, with `--stacks`, the app's
/// stacks).
async fn status(socket: &std::path::Path, json: bool, stacks_of: Option<String>) -> ExitCode {
    if let Some(app) = stacks_of {
        return stacks(socket, app, json).await;
    }
    let report = match wsgimux::control::status(socket, std::time::Duration::from_secs(10)).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if !json {
        print!("{}", wsgimux::status::render_text(&report));
        return ExitCode::SUCCESS;
    }
    print_json(&report, "the status").map_or_else(|code| code, |()| ExitCode::SUCCESS)
}

/// Prints `value` as pretty JSON; exit code 1 (after saying so) when it cannot be encoded.
fn print_json(value: &impl serde::Serialize, what: &str) -> Result<(), ExitCode> {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: cannot encode {what}: {e}");
            Err(ExitCode::from(1))
        }
    }
}
