//! Test harness: finds interpreters, starts the real `wsgimux` binary on a free port in a
//! temporary folder, and speaks plain HTTP/1.1 to it over real sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_wsgimux");
pub const PROBE_APP: &str = include_str!("../apps/probe.py");

/// Where pyenv keeps its interpreters, if it is installed.
fn pyenv_root() -> Option<PathBuf> {
    if let Some(r) = std::env::var_os("PYENV_ROOT") {
        return Some(r.into());
    }
    if let Ok(out) = Command::new("pyenv").arg("root").output() {
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).trim().into());
        }
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv"))
}

/// An interpreter by version prefix ("2.7", "3.13") from pyenv, or "pypy3" from PATH.
pub fn find_python(version: &str) -> Option<PathBuf> {
    if version.starts_with("pypy") {
        let path = std::env::var_os("PATH")?;
        return std::env::split_paths(&path)
            .map(|d| d.join(version))
            .find(|p| p.is_file());
    }
    let versions = pyenv_root()?.join("versions");
    let mut found: Vec<PathBuf> = std::fs::read_dir(versions)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name == version || name.starts_with(&format!("{version}."))
        })
        .map(|e| e.path().join("bin/python"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// What was skipped and why, for the summary printed when the test binary exits.
static SKIPPED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Prints the skipped tests after libtest's own result line (libtest ends with `exit`, which
/// runs this): a skip is never mistaken for a pass. Written to stderr directly, past the
/// capture that hides a passing test's output.
extern "C" fn print_skipped() {
    use std::io::Write;
    let skipped = SKIPPED.lock().map(|s| s.clone()).unwrap_or_default();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "\nSKIPPED {} test(s) — their tools are missing here (WSGIMUX_REQUIRE_ALL=1 makes this a failure):",
        skipped.len()
    );
    for s in skipped {
        let _ = writeln!(err, "  {s}");
    }
}

/// Records a test as skipped (or, with WSGIMUX_REQUIRE_ALL=1, fails it): says why at once and
/// again in the summary at the end of the run.
pub fn skip(why: &str) {
    if std::env::var("WSGIMUX_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{why} and WSGIMUX_REQUIRE_ALL=1");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if let Ok(mut s) = SKIPPED.lock() {
        if s.is_empty() {
            // SAFETY: registers a plain function with no captured state.
            unsafe { libc::atexit(print_skipped) };
        }
        s.push(format!("{test}: {why}"));
    }
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "skipped {test}: {why}");
}

/// The interpreter, or None with a printed reason; with WSGIMUX_REQUIRE_ALL=1, a failure.
pub fn require_python(version: &str) -> Option<PathBuf> {
    match find_python(version) {
        Some(p) => Some(p),
        None => {
            skip(&format!("Python {version} is not installed"));
            None
        }
    }
}

/// A temporary folder holding a config and its apps.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Self {
        Site {
            dir: tempfile::Builder::new()
                .prefix("wsgimux-test-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write");
        p
    }

    /// Writes the probe app as `<dir>/probe.py`.
    pub fn probe(&self, dir: &str) -> PathBuf {
        self.write(&format!("{dir}/probe.py"), PROBE_APP)
    }

    pub fn config(&self, yaml: &str) -> PathBuf {
        let runtime = self.dir.path().join("run");
        let yaml = format!(
            "runtime_dir: {}\nlisten: [\"127.0.0.1:0\"]\n{yaml}",
            runtime.display()
        );
        self.write("wsgimux.yaml", &yaml)
    }

    /// A config with one app, `name`, serving the probe script under `python`; `extra` holds
    /// more of the app's keys, one per line ("mount: /v").
    pub fn one_app(&self, name: &str, python: &Path, extra: &[&str]) -> PathBuf {
        self.probe("app");
        let mut yaml = format!(
            "apps:\n  {name}:\n    python: {}\n    script: app/probe.py\n",
            python.display()
        );
        for line in extra {
            yaml.push_str(&format!("    {line}\n"));
        }
        self.config(&yaml)
    }

    /// `wsgimux check` on the site's config: (exit status, stdout, stderr).
    pub fn check(&self) -> (ExitStatus, String, String) {
        self.run(&["check"])
    }

    /// `wsgimux reload` for the site's config: (exit status, stdout, stderr).
    pub fn reload(&self) -> (ExitStatus, String, String) {
        self.run(&["reload", "--timeout", "60s"])
    }

    /// A `wsgimux` command with `--config` set to the site's config.
    fn run(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.path().join("wsgimux.yaml"))
            .output()
            .unwrap_or_else(|e| panic!("run wsgimux {args:?}: {e}"));
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    pub fn serve(&self) -> Server {
        Server::start(
            self.path().join("wsgimux.yaml"),
            self.path().join("wsgimux.log"),
        )
    }
}

/// A running `wsgimux serve`.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The lines printed on stdout before `ready:` (a JSON record's message).
    pub ready_lines: Vec<String>,
    /// Everything printed on stdout up to the first `ready:`, as printed.
    pub stdout: Vec<String>,
    pub log: PathBuf,
    /// The config it serves.
    pub config: PathBuf,
    tail: std::sync::Mutex<LogTail>,
}

/// The log's lines other than access-log lines, read incrementally.
#[derive(Default)]
struct LogTail {
    offset: u64,
    partial: Vec<u8>,
    lines: Vec<String>,
}

impl LogTail {
    fn read_more(&mut self, path: &Path) {
        use std::io::{Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return;
        };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in String::from_utf8_lossy(&complete).lines() {
            if !line.contains(" rt=") {
                self.lines.push(line.to_string());
            }
        }
    }
}

impl Server {
    pub fn start(config: PathBuf, log: PathBuf) -> Self {
        Self::start_binary(Path::new(BIN), config, log)
    }

    /// Starts `binary` (a copy of wsgimux somewhere else) as `serve --config config`.
    pub fn start_binary(binary: &Path, config: PathBuf, log: PathBuf) -> Self {
        Self::start_with(binary, config, log, &[])
    }

    /// `serve --config config` with environment variables set.
    pub fn start_with(binary: &Path, config: PathBuf, log: PathBuf, env: &[(&str, &str)]) -> Self {
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(binary)
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start wsgimux");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut ready_lines = Vec::new();
        let mut stdout = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(raw) => {
                    // With `log_format: json` each line is a record: its message is the line.
                    let line = serde_json::from_str::<serde_json::Value>(&raw)
                        .ok()
                        .and_then(|v| v["fields"]["message"].as_str().map(str::to_string))
                        .unwrap_or_else(|| raw.clone());
                    stdout.push(raw);
                    if let Some(addr) = line.strip_prefix("ready: http://") {
                        let addr = addr.parse().expect("ready address");
                        return Server {
                            child: Some(child),
                            addr,
                            ready_lines,
                            stdout,
                            log,
                            config,
                            tail: Default::default(),
                        };
                    }
                    ready_lines.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    panic!("wsgimux did not get ready; stdout: {ready_lines:?}\nlog:\n{log}");
                }
            }
        }
    }

    /// Waits (up to 10 s) until `app` holds at least `n` requests in flight, as `wsgimux
    /// status --json` counts them: the event a test that needs a request to be running waits
    /// for, rather than a sleep.
    pub fn wait_in_flight(&self, app: &str, n: u64) {
        let seen = eventually(Duration::from_secs(10), || {
            let out = Command::new(BIN)
                .args(["status", "--json", "--config"])
                .arg(&self.config)
                .output()
                .ok()?;
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let a = s["apps"].as_array()?.iter().find(|a| a["name"] == app)?;
            (a["in_flight"].as_u64()? >= n).then_some(())
        });
        assert!(seen.is_some(), "{app} never had {n} request(s) in flight");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// The pids the start-up line of `app` names.
    pub fn app_pids(&self, app: &str) -> Vec<u32> {
        let line = self
            .ready_lines
            .iter()
            .find(|l| l.starts_with(&format!("app {app}: ready")))
            .unwrap_or_else(|| panic!("no ready line for {app}: {:?}", self.ready_lines));
        let after = line.split(", pid ").nth(1).expect("pid list");
        let list = after.split(", route").next().unwrap_or("");
        list.split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line containing `needle`, waiting up to `limit` for it. Access-log lines
    /// are not searched (under load they are most of the log).
    pub fn wait_log(&self, needle: &str, limit: Duration) -> Option<String> {
        eventually(limit, || {
            let mut tail = self.tail.lock().ok()?;
            tail.read_more(&self.log);
            tail.lines.iter().find(|l| l.contains(needle)).cloned()
        })
    }

    /// The summary line of config reload number `n` (each reload logs one), waiting for it.
    pub fn reload_line(&self, n: u64) -> String {
        self.numbered_line("reload", n)
    }

    /// The summary line of restart number `n` (`wsgimux restart`, a restart_file, a code
    /// change: numbered apart from config reloads), waiting for it.
    pub fn restart_line(&self, n: u64) -> String {
        self.numbered_line("restart", n)
    }

    fn numbered_line(&self, kind: &str, n: u64) -> String {
        let needle = format!("{kind} #{n} (");
        self.wait_log(&needle, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no {needle:?} in the log:\n{}", self.log_text()))
    }

    pub fn get(&self, host: &str, path: &str) -> Response {
        request(self.addr, &get_bytes(host, path)).expect("request")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we started.
        unsafe {
            libc::kill(self.pid() as i32, sig);
        }
    }

    /// Waits for the process to exit; None if it is still running after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(20)).is_none() {
                if let Some(c) = self.child.as_mut() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

pub fn pid_alive(pid: u32) -> bool {
    // A zombie still answers kill(0); read its state instead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The live (not zombie) child processes of `parent`.
pub fn child_pids(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the command: state, ppid, …
            let mut rest = stat.rsplit(')').next().unwrap_or("").split_whitespace();
            let state = rest.next().unwrap_or("Z");
            let ppid: u32 = rest.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            ppid == parent && state != "Z"
        })
        .collect()
}

/// A process's memory figure from /proc (e.g. "VmRSS", "VmHWM"), in KiB.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub fn get_bytes(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `KEY=value` line of the probe's /env page, as raw bytes.
    pub fn env(&self, key: &str) -> Option<Vec<u8>> {
        let prefix = format!("{key}=");
        self.body
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(prefix.as_bytes()))
            .map(|l| {
                let v = &l[prefix.len()..];
                // Strip the trailing " <type name>".
                let end = v.iter().rposition(|&b| b == b' ').unwrap_or(v.len());
                v[..end].to_vec()
            })
    }
}

/// One request on a new connection.
pub fn request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut c = Client::connect(addr)?;
    c.send(raw)?;
    c.read_response(false)
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(s),
        })
    }

    pub fn reader_timeout(&self, limit: Duration) {
        let _ = self.reader.get_ref().set_read_timeout(Some(limit));
    }

    pub fn send(&mut self, raw: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(raw)
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    pub fn get(&mut self, host: &str, path: &str) -> std::io::Result<Response> {
        self.send(&get_bytes(host, path))?;
        self.read_response(false)
    }

    /// Reads one response; with `discard_body`, counts the body instead of keeping it
    /// (its length is then in `body.len()` only as a count: the body holds nothing).
    pub fn read_response(&mut self, discard_body: bool) -> std::io::Result<Response> {
        self.read_response_counted(discard_body).map(|(r, _)| r)
    }

    /// Reads the response to a HEAD request: headers only, whatever they announce.
    pub fn read_head_response(&mut self) -> std::io::Result<Response> {
        self.read_inner(true, true).map(|(r, _)| r)
    }

    pub fn read_response_counted(
        &mut self,
        discard_body: bool,
    ) -> std::io::Result<(Response, u64)> {
        self.read_inner(discard_body, false)
    }

    fn read_inner(&mut self, discard_body: bool, head: bool) -> std::io::Result<(Response, u64)> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').ok_or_else(|| bad("bad header"))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let mut count = 0u64;
        let mut sink = |data: &[u8], body: &mut Vec<u8>| {
            count += data.len() as u64;
            if !discard_body {
                body.extend_from_slice(data);
            }
        };
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let mut buf = vec![0u8; 256 * 1024];
        if head {
        } else if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                if n == 0 {
                    let mut end = String::new();
                    self.reader.read_line(&mut end)?;
                    break;
                }
                let mut left = n;
                while left > 0 {
                    let k = left.min(buf.len());
                    self.reader.read_exact(&mut buf[..k])?;
                    sink(&buf[..k], &mut resp.body);
                    left -= k;
                }
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf)?;
            }
        } else if let Some(len) = resp.header("content-length") {
            let mut left: usize = len.parse().map_err(|_| bad("bad content-length"))?;
            while left > 0 {
                let k = left.min(buf.len());
                self.reader.read_exact(&mut buf[..k])?;
                sink(&buf[..k], &mut resp.body);
                left -= k;
            }
        } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            loop {
                let k = self.reader.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                sink(&buf[..k], &mut resp.body);
            }
        }
        Ok((resp, count))
    }
}

/// Creates a virtualenv with `python -m venv` (no pip, to stay fast and offline).
pub fn make_venv(python: &Path, dir: &Path) -> PathBuf {
    let st = Command::new(python)
        .args(["-m", "venv", "--without-pip"])
        .arg(dir)
        .status()
        .expect("run python -m venv");
    assert!(st.success(), "python -m venv failed");
    dir.to_path_buf()
}

/// A virtualenv with `packages` installed from PyPI, kept under Cargo's test tmp dir so later
/// runs reuse it. None (with a printed reason) when pip cannot install them; with
/// WSGIMUX_REQUIRE_ALL=1, a failure.
pub fn pip_venv(python: &Path, name: &str, packages: &[&str]) -> Option<PathBuf> {
    cached_dir("venvs", name, |dir| {
        run(Command::new(python).args(["-m", "venv"]).arg(dir))?;
        run(Command::new(dir.join("bin/python"))
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(packages))
    })
    .map_err(|e| format!("cannot install {packages:?} into a venv: {e}"))
    .or_skip()
}

/// `packages` installed from PyPI into a folder for `python_path:` (`pip install --target`),
/// for Pythons without `venv` (2.7); cached like [`pip_venv`].
pub fn pip_target(python: &Path, name: &str, packages: &[&str]) -> Option<PathBuf> {
    cached_dir("targets", name, |dir| {
        run(Command::new(python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg("--target")
            .arg(dir)
            .args(packages))
    })
    .map_err(|e| format!("cannot install {packages:?} for {}: {e}", python.display()))
    .or_skip()
}

/// The unpacked source distribution of `package==version` from PyPI (for the test corpora
/// projects ship in their sdists), cached like [`pip_venv`].
pub fn pypi_sdist(python: &Path, package: &str, version: &str) -> Option<PathBuf> {
    let name = format!("{package}-{version}");
    cached_dir("sdists", &name, |dir| {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        run(Command::new(python)
            .args(["-m", "pip", "download", "-q", "--disable-pip-version-check"])
            .args(["--no-deps", "--no-binary", ":all:", "-d"])
            .arg(dir)
            .arg(format!("{package}=={version}")))?;
        let archive = dir.join(format!("{name}.tar.gz"));
        run(Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(dir))
    })
    .map(|d| d.join(&name))
    .map_err(|e| format!("cannot fetch the {package} {version} sdist from PyPI: {e}"))
    .or_skip()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `<target tmp>/<kind>/<name>`, made once by `make` (in place, under a lock, so tests running
/// at once make it once) and reused by later runs.
fn cached_dir(
    kind: &str,
    name: &str,
    make: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(kind);
    let dir = root.join(name);
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let lock =
        std::fs::File::create(root.join(format!("{name}.lock"))).map_err(|e| e.to_string())?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    unsafe {
        libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX);
    }
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    match make(&dir) {
        Ok(()) => {
            std::fs::write(dir.join(".complete"), "").map_err(|e| e.to_string())?;
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

trait OrSkip<T> {
    /// None with a printed reason; with WSGIMUX_REQUIRE_ALL=1, a failure.
    fn or_skip(self) -> Option<T>;
}

impl<T> OrSkip<T> for Result<T, String> {
    fn or_skip(self) -> Option<T> {
        match self {
            Ok(v) => Some(v),
            Err(msg) => {
                skip(&msg);
                None
            }
        }
    }
}

/// Retries `f` until it returns Some or `limit` passes.
pub fn eventually<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether `tool` runs here; when not, a printed reason naming the Debian `package` (with
/// WSGIMUX_REQUIRE_ALL=1, a failure).
pub fn have_tool(tool: &str, package: &str) -> bool {
    tool_exists(tool)
        || Err::<(), String>(format!(
            "{tool} is not installed (apt-get install {package})"
        ))
        .or_skip()
        .is_some()
}

/// Whether `tool` is on PATH.
pub fn tool_exists(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
