//! The wsgimux(1) manual page, in roff: every subcommand with its arguments and options, made
//! from the command line's own definition (so it cannot drift from `--help`), then what a man
//! page owes its reader — files, signals, environment, exit status, examples. One page: it
//! names no other wsgimux page, since there are none.
//!
//! Hand-written rather than clap_mangen's: that renders a page per subcommand and a main page
//! that only points at them. Pure: returns text.

use std::fmt::Write as _;

/// The page for `cli` (the `wsgimux` command and its subcommands).
pub fn render(cli: &clap::Command) -> String {
    let name = cli.get_name();
    let version = cli.get_version().unwrap_or("");
    let mut out = String::new();
    let _ = writeln!(
        out,
        ".TH WSGIMUX 1 \"\" \"{name} {version}\" \"User Commands\""
    );
    out.push_str(".SH NAME\n");
    let _ = writeln!(
        out,
        "{name} \\- {}",
        text(&cli.get_about().map(|a| a.to_string()).unwrap_or_default())
    );
    out.push_str(".SH SYNOPSIS\n");
    for sub in visible(cli) {
        let _ = writeln!(out, ".B {name} {}\n{}\n.br", sub.get_name(), usage(sub));
    }
    out.push_str(DESCRIPTION);
    out.push_str(".SH COMMANDS\n");
    for sub in visible(cli) {
        command(&mut out, name, sub);
    }
    out.push_str(".SH GLOBAL OPTIONS\n.TP\n.B \\-h, \\-\\-help\nPrint the help of wsgimux or of a command.\n.TP\n.B \\-V, \\-\\-version\nPrint the version.\n");
    out.push_str(REST);
    out
}

fn visible(cli: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cli.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// A command's arguments in one line: `[\-\-config FILE] APPS…`.
fn usage(cmd: &clap::Command) -> String {
    let mut parts = Vec::new();
    for arg in cmd.get_arguments().filter(|a| !skipped(a)) {
        let value = value_name(arg);
        let part = match arg.get_long() {
            Some(long) if arg.get_action().takes_values() => {
                format!("[\\fB\\-\\-{}\\fR \\fI{value}\\fR]", roff_dash(long))
            }
            Some(long) => format!("[\\fB\\-\\-{}\\fR]", roff_dash(long)),
            None if arg.is_required_set() => format!("\\fI{value}\\fR"),
            None => format!("[\\fI{value}\\fR]"),
        };
        let repeated = matches!(arg.get_action(), clap::ArgAction::Append)
            || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
        parts.push(if repeated { format!("{part}...") } else { part });
    }
    parts.join(" ")
}

/// `--help` and `--version` are said once, under GLOBAL OPTIONS.
fn skipped(arg: &clap::Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version")
}

fn value_name(arg: &clap::Arg) -> String {
    arg.get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
}

/// One command: its synopsis, what it does, its arguments and options.
fn command(out: &mut String, name: &str, cmd: &clap::Command) {
    let _ = writeln!(out, ".SS {name} {}", cmd.get_name());
    let about = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = writeln!(out, "{}", text(&sentence(&about)));
    for arg in cmd.get_arguments().filter(|a| !skipped(a)) {
        let value = value_name(arg);
        let head = match (arg.get_short(), arg.get_long()) {
            (Some(s), Some(l)) if arg.get_action().takes_values() => {
                format!(
                    "\\fB\\-{s}\\fR, \\fB\\-\\-{}\\fR \\fI{value}\\fR",
                    roff_dash(l)
                )
            }
            (None, Some(l)) if arg.get_action().takes_values() => {
                format!("\\fB\\-\\-{}\\fR \\fI{value}\\fR", roff_dash(l))
            }
            (Some(s), Some(l)) => format!("\\fB\\-{s}\\fR, \\fB\\-\\-{}\\fR", roff_dash(l)),
            (_, Some(l)) => format!("\\fB\\-\\-{}\\fR", roff_dash(l)),
            _ => format!("\\fI{value}\\fR"),
        };
        let mut help = sentence(
            &arg.get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default(),
        );
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && arg.get_action().takes_values() {
            let _ = write!(help, " Default: {}.", defaults.join(", "));
        }
        if let Some(env) = arg.get_env() {
            let _ = write!(help, " Also from ${}.", env.to_string_lossy());
        }
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        if !possible.is_empty() && arg.get_action().takes_values() {
            let _ = write!(help, " One of: {}.", possible.join(", "));
        }
        let _ = writeln!(out, ".TP\n{head}\n{}", text(help.trim()));
    }
}

/// Help text ends its sentence (clap drops a doc comment's last period).
fn sentence(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() || s.ends_with(['.', ')', ':']) {
        s.to_string()
    } else {
        format!("{s}.")
    }
}

/// Text as roff reads it: backslashes written out, a line never starting with a control
/// character, hyphens that are minus signs (options) left to `roff_dash`.
fn text(s: &str) -> String {
    s.lines()
        .map(|line| {
            let line = line.replace('\\', "\\e");
            if line.starts_with(['.', '\'']) {
                format!("\\&{line}")
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An option's name with its hyphens as roff's minus signs (so it can be copied and searched).
fn roff_dash(s: &str) -> String {
    s.replace('-', "\\-")
}

const DESCRIPTION: &str = r#".SH DESCRIPTION
.B wsgimux
puts one HTTP front door in front of many Python WSGI applications, each run as supervised
child processes under the interpreter or virtualenv its config names: a Python 2.7 app and a
Python 3.13 app side by side, on one port. It routes by Host and path (with WSGI's
SCRIPT_NAME and PATH_INFO), restarts what crashes, applies config edits without dropping a
request, and reports on every app.
.PP
The config is one YAML file (default
.IR ./wsgimux.yaml );
.B wsgimux check
validates it and names the file, line and key of every problem.
"#;

const REST: &str = r#".SH FILES
.TP
.I ./wsgimux.yaml
The config file when \fB\-\-config\fR is not given. Relative paths in it are resolved against
its folder, through any symbolic link each time processes start.
.TP
.I $XDG_RUNTIME_DIR/wsgimux/HASH/ \fRor\fP /tmp/wsgimux\-UID/HASH/
The default runtime dir of a config (its HASH names the config's path as given): the apps'
Unix sockets, the control socket \fIcontrol.sock\fR that \fBreload\fR, \fBrestart\fR,
\fBstatus\fR and \fBexplain\fR use, and the records of running children. Removed at a clean
stop. The worker files, once per build, are in \fIworkers\-HASH/\fR beside it. Set
\fBruntime_dir\fR in the config to choose another folder.
.TP
.I acme/ \fRbeside the config, or\fP acme.storage
Certificates of \fBtls: acme\fR listeners (one file per name, 0600, with its key), the ACME
account, HTTP\-01 answers and order locks (share the folder between hosts behind one load
balancer), and in \fIinternal/\fR the local CA of \fBtls: internal\fR listeners, which
\fBtrust\fR adds to the system trust store.
.TP
.I access_log\fR, \fPlog_dir
Files the config may name for the access log and each app's output; reopened on SIGUSR1.
.SH SIGNALS
.TP
.B SIGHUP
Reload the config file now (as \fBwsgimux reload\fR does).
.TP
.BR SIGTERM ", " SIGINT
Stop: stop accepting, finish the requests under way (up to 20 s), then stop every app's
processes (TERM, then KILL after 10 s).
.TP
.B SIGUSR1
Reopen the log files (after logrotate or newsyslog moved them).
.SH ENVIRONMENT
.TP
.B WSGIMUX_LOG
What wsgimux logs, as a tracing filter (default \fIinfo\fR; e.g. \fIdebug\fR,
\fIwsgimux=debug\fR).
.TP
.B WSGIMUX_CONTROL
The control socket for \fBreload\fR, \fBrestart\fR, \fBstatus\fR and \fBexplain\fR,
instead of the one found from the config file.
.TP
.B WSGIMUX_FRONT_THREADS
How many threads serve connections (default: one per two cores).
.TP
.B WSGIMUX_WATCHER
\fIpoll\fR: watch files by polling, for file systems that send no change events (NFS, some
container volumes).
.TP
.B XDG_RUNTIME_DIR
Where default runtime dirs go (in \fIwsgimux/\fR), when it is set and short enough for
socket paths; else \fI/tmp/wsgimux\-UID\fR.
.TP
.BR LISTEN_FDS ", " LISTEN_PID ", " LISTEN_FDNAMES
Listening sockets passed by systemd (socket activation), taken for the \fBlisten\fR entries
with the same address. launchd's sockets are taken the same way.
.TP
.B NOTIFY_SOCKET
systemd's notification socket (\fBType=notify\fR): READY, RELOADING, STOPPING, STATUS and
WATCHDOG messages.
.TP
.BR PYTHONHOME ", " PYTHONPATH ", " VIRTUAL_ENV
Not passed on to apps (they belong to one Python); set them per app with \fBenv:\fR.
.SH EXIT STATUS
.TP
.B 0
Done: served until stopped; the config checks out; the reload or restart was applied (or had
nothing to change); something answers the URL (\fBexplain\fR).
.TP
.B 1
Refused or failed: a problem in the config (each named at its line), a reload rejected or an
app's new processes did not start, an unknown app, nothing answers the URL (\fBexplain\fR).
.TP
.B 2
No server answers on the control socket (\fBreload\fR, \fBrestart\fR, \fBstatus\fR).
.SH EXAMPLES
Check a config, serve it, and look at it:
.PP
.nf
.RS
wsgimux check \-\-config /etc/wsgimux/wsgimux.yaml
wsgimux serve \-\-config /etc/wsgimux/wsgimux.yaml
wsgimux status \-\-config /etc/wsgimux/wsgimux.yaml
.RE
.fi
.PP
Deploy new code without dropping a request, then apply an edited config:
.PP
.nf
.RS
ln \-sfn releases/42 current
wsgimux restart shop \-\-config current/wsgimux.yaml
wsgimux reload \-\-config current/wsgimux.yaml
.RE
.fi
.PP
Which app serves a URL, and what SCRIPT_NAME and PATH_INFO it sees:
.PP
.nf
.RS
wsgimux explain \-\-config wsgimux.yaml http://shop.example.com/cart/add
.RE
.fi
.PP
Serve one app without a config, as mod_wsgi\-express does:
.PP
.nf
.RS
wsgimux run app.wsgi \-\-python ~/venvs/shop \-\-port 8000
.RE
.fi
"#;
