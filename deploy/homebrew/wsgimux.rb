# Homebrew formula for wsgimux. Homebrew installs formulas from taps only; with a tap of your
# own (deploy/README.md has the steps):
#   brew install --HEAD you/local/wsgimux   # or, once a release is tagged, without --HEAD
#   sudo brew services start wsgimux        # port 80 needs root; see deploy/README.md
# `deploy/homebrew/release VERSION` fills in url and sha256 for a tagged release.
class Wsgimux < Formula
  desc "One HTTP front door for many Python WSGI apps, each under its own interpreter"
  homepage "https://github.com/wsgimux/wsgimux"
  # Written by deploy/homebrew/release from the `git archive` tarball it makes for the tag.
  url "https://github.com/wsgimux/wsgimux/releases/download/v0.1.0/wsgimux-0.1.0.tar.gz"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license any_of: ["MIT", "Apache-2.0"]
  head "https://github.com/wsgimux/wsgimux.git", branch: "main"

  livecheck do
    url :stable
    strategy :github_latest
  end

  depends_on "rust" => :build
  depends_on "python@3.13" => :test
  # The apps' interpreters are the user's own (Homebrew's python@3.x, pyenv, a virtualenv);
  # wsgimux itself needs none to build or run.

  def install
    system "cargo", "install", *std_cargo_args
    # Completions and the man page come from the CLI definition itself.
    generate_completions_from_executable(bin/"wsgimux", "completions")
    (man1/"wsgimux.1").write Utils.safe_popen_read(bin/"wsgimux", "manpage")
    # The example config, pointed at the example apps installed beside it.
    (pkgshare/"examples").install Dir["examples/*"]
    inreplace "config.example.yaml" do |s|
      s.gsub! "examples/", "#{opt_pkgshare}/examples/"
      s.gsub! "# runtime_dir: ./run", "runtime_dir: #{var}/run/wsgimux"
      # A service's PATH finds Apple's /usr/bin/python3 (a stub without the Command Line
      # Tools) before Homebrew's: name Homebrew's by its full path.
      s.gsub! "python: python3", "python: #{HOMEBREW_PREFIX}/bin/python3"
    end
    cp "config.example.yaml", "wsgimux.yaml"
    pkgshare.install "config.example.yaml"
    # Homebrew never overwrites an edited file in etc: on upgrade a changed default lands
    # beside it as wsgimux.yaml.default.
    (etc/"wsgimux").install "wsgimux.yaml"
  end

  def post_install
    (var/"log/wsgimux").mkpath
    (var/"run/wsgimux").mkpath
  end

  def caveats
    <<~EOS
      Edit #{etc}/wsgimux/wsgimux.yaml, then check it:
        wsgimux check --config #{etc}/wsgimux/wsgimux.yaml
      Port 80 needs root: `sudo brew services start wsgimux` (set `user:` in the config so the
      apps do not run as root). Unprivileged ports work with `brew services start wsgimux`.
      Apply config changes without a restart:
        wsgimux reload --config #{etc}/wsgimux/wsgimux.yaml
      Logs: #{var}/log/wsgimux/
    EOS
  end

  service do
    run [opt_bin/"wsgimux", "serve", "--config", etc/"wsgimux/wsgimux.yaml"]
    keep_alive true
    require_root true
    working_dir var/"run/wsgimux"
    log_path var/"log/wsgimux/wsgimux.log"
    error_log_path var/"log/wsgimux/wsgimux.log"
  end

  test do
    # Serves a small app with Homebrew's Python, mounted under /hello, and checks the answer.
    port = free_port
    (testpath/"app.py").write <<~PY
      def application(environ, start_response):
          start_response("200 OK", [("Content-Type", "text/plain")])
          return [("hello from %s%s" % (environ["SCRIPT_NAME"], environ["PATH_INFO"])).encode()]
    PY
    (testpath/"wsgimux.yaml").write <<~YAML
      listen: "127.0.0.1:#{port}"
      runtime_dir: #{testpath}/run
      apps:
        hello:
          python: #{Formula["python@3.13"].opt_bin}/python3.13
          script: #{testpath}/app.py
          mount: /hello
    YAML
    assert_match "ok", shell_output("#{bin}/wsgimux check --config #{testpath}/wsgimux.yaml")
    # The installed example, with Homebrew's Python 3.13 (the only Python this test may use).
    example = (pkgshare/"config.example.yaml").read.gsub(/^(\s*python:) .*$/,
                                                        "\\1 #{Formula["python@3.13"].opt_bin}/python3.13")
    (testpath/"example.yaml").write example
    assert_match "ok", shell_output("#{bin}/wsgimux check --config #{testpath}/example.yaml")
    assert_match version.to_s, shell_output("#{bin}/wsgimux --version")
    pid = spawn "#{bin}/wsgimux", "serve", "--config", "#{testpath}/wsgimux.yaml"
    begin
      answer = ""
      60.times do
        answer = `curl -s http://127.0.0.1:#{port}/hello/world`
        break if answer.include?("hello")

        sleep 0.5
      end
      assert_equal "hello from /hello/world", answer
    ensure
      Process.kill("TERM", pid)
      Process.wait(pid)
    end
  end
end
