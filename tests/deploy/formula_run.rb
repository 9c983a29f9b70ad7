# Runs a Homebrew formula's `install` and then its `test do` block outside Homebrew, as
# `brew install` and `brew test` would, with a stand-in for the little of Homebrew they use:
# paths under a temporary prefix, Pathname#install (which moves files, and fails on a file
# already moved), inreplace, free_port, shell_output, assert_match/assert_equal, and
# Formula["python@3.13"]. `system "cargo", ...` is skipped: the binary is the one under test.
#
# Usage: ruby formula_run.rb FORMULA BUILD_DIR BIN_DIR PYTHON_BIN_DIR VERSION
require "fileutils"
require "pathname"
require "socket"
require "tmpdir"

formula_file, build_dir, bin_dir, python_bin_dir, version = ARGV

class Pathname
  # Homebrew's: moves files (or, from a Hash, renames them) into this folder.
  def install(*sources)
    mkpath
    sources.flatten.each do |src|
      if src.is_a?(Hash)
        src.each { |from, to| FileUtils.mv(from.to_s, (self / to.to_s).to_s) }
      else
        FileUtils.mv(src.to_s, (self / File.basename(src.to_s)).to_s)
      end
    end
  end
end

class Formula
  @@test = nil
  def self.method_missing(*) = nil
  def self.respond_to_missing?(*) = true
  def self.test(&blk) = (@@test = blk)
  def self.test_block = @@test
  def self.service(&) = nil
  def self.[](name)
    dir = Pathname.new(PYTHON_BIN_DIR)
    Struct.new(:opt_bin).new(dir) if name.start_with?("python@")
  end

  attr_accessor :root, :bin, :testpath, :version

  def system(*args)
    return if args.first == "cargo"
    Kernel.system(*args.map(&:to_s)) || raise("#{args.join(" ")} failed")
  end

  def std_cargo_args = []
  def man1 = prefix / "share/man/man1"

  # Homebrew's: `exe args SHELL` for each shell, written where each shell looks.
  def generate_completions_from_executable(exe, *args, shells: %i[bash zsh fish], **)
    places = { bash: "etc/bash_completion.d/wsgimux", zsh: "share/zsh/site-functions/_wsgimux",
               fish: "share/fish/vendor_completions.d/wsgimux.fish" }
    shells.each do |shell|
      file = prefix / places.fetch(shell)
      file.dirname.mkpath
      file.write(Utils.safe_popen_read(exe, *args, shell.to_s))
    end
  end
  def prefix = root / "prefix"
  def pkgshare = prefix / "share/wsgimux"
  def opt_pkgshare = pkgshare
  def etc = root / "etc"
  def var = root / "var"
  def cp(*args) = FileUtils.cp(*args.map(&:to_s))
  def cp_r(*args) = FileUtils.cp_r(*args.map(&:to_s))

  def inreplace(file)
    text = File.read(file)
    yield text
    File.write(file, text)
  end

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    port = server.addr[1]
    server.close
    port
  end

  def shell_output(cmd, status = 0)
    out = `#{cmd}`
    raise "#{cmd} exited #{$?.exitstatus}, not #{status}:\n#{out}" unless $?.exitstatus == status
    out
  end

  def assert_match(expected, actual)
    ok = expected.is_a?(Regexp) ? actual =~ expected : actual.include?(expected.to_s)
    raise "expected #{expected.inspect} in #{actual.inspect}" unless ok
  end

  def assert_equal(expected, actual)
    raise "expected #{expected.inspect}, got #{actual.inspect}" unless expected == actual
  end
end

module Utils
  def self.safe_popen_read(*args)
    out = IO.popen(args.map(&:to_s), &:read)
    raise "#{args.join(" ")} failed" unless $?.success?
    out
  end
end

PYTHON_BIN_DIR = python_bin_dir
# Homebrew's prefix (/opt/homebrew, /usr/local): nothing under it is run by the test.
HOMEBREW_PREFIX = Pathname.new("/opt/homebrew")
load formula_file
klass = Object.const_get(File.basename(formula_file, ".rb").capitalize)
formula = klass.allocate
Dir.mktmpdir do |root|
  formula.root = Pathname.new(root)
  formula.bin = Pathname.new(bin_dir)
  formula.version = version
  # Homebrew's Pathname#write makes the folder; the standard one does not.
  formula.man1.mkpath
  Dir.chdir(build_dir) { formula.install }
  %w[etc/bash_completion.d/wsgimux share/zsh/site-functions/_wsgimux
     share/fish/vendor_completions.d/wsgimux.fish share/man/man1/wsgimux.1].each do |f|
    path = formula.prefix / f
    raise "install made no #{f}" unless path.file? && path.size.positive?
  end
  raise "the man page is not roff" unless (formula.man1 / "wsgimux.1").read.include?(".TH WSGIMUX 1")
  formula.post_install if formula.respond_to?(:post_install)
  formula.testpath = Pathname.new(root) / "test"
  formula.testpath.mkpath
  Dir.chdir(formula.testpath) { formula.instance_exec(&Formula.test_block) }
  puts "installed and tested"
end
