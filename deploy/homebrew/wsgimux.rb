# Homebrew formula for wsgimux. Until it is in a tap:
#   brew install --build-from-source ./deploy/homebrew/wsgimux.rb
#   sudo brew services start wsgimux      # port 80 needs root; see deploy/README.md
class Wsgimux < Formula
  desc "One HTTP front door for many Python WSGI apps, each under its own interpreter"
  homepage "https://github.com/wsgimux/wsgimux"
  url "https://github.com/wsgimux/wsgimux/archive/refs/tags/v0.1.0.tar.gz"
  # Replace with the release tarball's checksum when tagging (`shasum -a 256 v0.1.0.tar.gz`).
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license any_of: ["MIT", "Apache-2.0"]
  head "https://github.com/wsgimux/wsgimux.git", branch: "main"

  depends_on "rust" => :build
  # The apps' interpreters are the user's own (Homebrew's python@3.x, pyenv, a virtualenv);
  # wsgimux itself needs none to build or run.

  def install
    system "cargo", "install", *std_cargo_args
    (etc/"wsgimux").mkpath
    # The example config and its apps; an existing wsgimux.yaml is never overwritten.
    (pkgshare/"examples").install Dir["examples/*"]
    inreplace "config.example.yaml" do |s|
      s.gsub! "examples/", "#{opt_pkgshare}/examples/"
      s.gsub! "# runtime_dir: ./run", "runtime_dir: #{var}/run/wsgimux"
    end
    (etc/"wsgimux").install "config.example.yaml"
    (etc/"wsgimux").install "config.example.yaml" => "wsgimux.yaml" unless (etc/"wsgimux/wsgimux.yaml").exist?
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
    cp_r pkgshare/"examples", testpath
    (testpath/"wsgimux.yaml").write <<~EOS
      listen: "127.0.0.1:#{free_port}"
      runtime_dir: #{testpath}/run
      apps:
        hello:
          python: python3
          script: #{testpath}/examples/hello/app.wsgi
    EOS
    assert_match "ok", shell_output("#{bin}/wsgimux check --config #{testpath}/wsgimux.yaml")
    assert_match "ok", shell_output("#{bin}/wsgimux check --config #{etc}/wsgimux/config.example.yaml")
    assert_match version.to_s, shell_output("#{bin}/wsgimux --version")
  end
end
