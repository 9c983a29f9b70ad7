# Loads a Homebrew formula outside Homebrew: a stand-in `Formula` records what the class body,
# its `service do` block and `test do` block declare, and prints it as JSON. Syntax is checked
# separately with `ruby -c`; this checks that the DSL calls are the ones Homebrew expects.
require "json"
require "pathname"

class Recorder
  attr_reader :calls
  def initialize; @calls = {}; end
  def method_missing(name, *args, **kw, &blk)
    @calls[name.to_s] = args.map(&:to_s) + kw.map { |k, v| "#{k}=#{v}" }
    Pathname.new("/prefix/#{name}")
  end
  def respond_to_missing?(*) = true
end

class Formula
  @@decl = {}
  @@service = nil
  @@test = false
  def self.method_missing(name, *args, **kw, &blk)
    @@decl[name.to_s] = (args + kw.to_a).map(&:to_s)
  end
  def self.respond_to_missing?(*) = true
  def self.depends_on(spec) = ((@@decl["depends_on"] ||= []) << spec.to_s)
  def self.service(&blk) = (@@service = blk)
  def self.test(&blk) = (@@test = !blk.nil?)
  def self.livecheck(&blk) = (@@decl["livecheck"] = [blk.nil? ? "" : "block"])
  def self.report(instance)
    rec = Recorder.new
    # Paths the service block reads come from the formula instance (opt_bin, etc, var).
    rec.define_singleton_method(:opt_bin) { Pathname.new("/prefix/opt/bin") }
    rec.define_singleton_method(:etc) { Pathname.new("/prefix/etc") }
    rec.define_singleton_method(:var) { Pathname.new("/prefix/var") }
    rec.instance_eval(&@@service) if @@service
    { "decl" => @@decl, "service" => rec.calls, "test" => @@test,
      "methods" => instance.class.instance_methods(false).map(&:to_s) }
  end
end

load ARGV.fetch(0)
klass = Object.const_get(File.basename(ARGV[0], ".rb").capitalize)
puts JSON.generate(Formula.report(klass.allocate))
