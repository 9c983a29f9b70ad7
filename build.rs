//! Builds the native worker (`worker/`, a Python extension module) and hands it to the main
//! crate, which embeds it with `include_bytes!`: one `wsgimux` binary carries everything a
//! native worker needs (`cargo install`, Homebrew, a copied binary).
//!
//! The worker is built by a nested cargo into its own target dir under OUT_DIR (a cdylib cannot
//! be an ordinary dependency), as an extension module that does not link libpython. It builds
//! from a standalone copy of `worker/worker.toml` made in OUT_DIR, the same in a checkout and in
//! the packaged crate (which has no `worker/manifest/Cargo.toml`: cargo leaves a folder holding
//! a Cargo.toml out of a package).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let manifest = standalone_manifest(&root, &out.join("worker-build"));
    let target_dir = out.join("worker-target");
    let release = env::var("PROFILE").as_deref() == Ok("release");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());

    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--lib", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        cmd.arg("--release");
    }
    let target = env::var("TARGET").unwrap_or_default();
    if env::var("HOST").ok().as_deref() != Some(target.as_str()) {
        cmd.args(["--target", &target]);
    }
    cmd.env("PYO3_BUILD_EXTENSION_MODULE", "1")
        .env("PYO3_NO_PYTHON", "1")
        // Debug info would make the embedded library ten times larger, for nothing.
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    // The outer build's flags and wrappers (clippy's, coverage) are not the worker's.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    announce("building the native worker, a Python extension module (a second cargo build; the first time, about 2 minutes on 2 cores)");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the native worker: {e}"));
    if !status.success() {
        panic!("building the native worker ({}) failed", manifest.display());
    }

    let profile_dir = if env::var("HOST").ok().as_deref() == Some(target.as_str()) {
        target_dir.join(if release { "release" } else { "debug" })
    } else {
        target_dir
            .join(&target)
            .join(if release { "release" } else { "debug" })
    };
    let file = match env::var("CARGO_CFG_TARGET_OS").as_deref() {
        Ok("macos") | Ok("ios") => "libwsgimux_native.dylib",
        _ => "libwsgimux_native.so",
    };
    let library = std::fs::read(profile_dir.join(file))
        .unwrap_or_else(|e| panic!("reading the built native worker {file}: {e}"));
    std::fs::write(out.join("wsgimux_native.abi3.so"), &library)
        .unwrap_or_else(|e| panic!("copying the native worker into OUT_DIR: {e}"));
    // Content address, so that wsgimux writes each build's library once and never over one
    // that a running child has mapped.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &library {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    println!("cargo:rustc-env=WSGIMUX_NATIVE_HASH={hash:016x}");
    for path in [
        "worker/src",
        "worker/worker.toml",
        "worker/build.rs",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// Says what the long, otherwise silent nested build is doing. Cargo captures a build script's
/// output and shows its warnings only once the script is done, so on a terminal the line goes
/// straight to it (clearing cargo's progress bar, which cargo redraws); elsewhere (CI, a
/// formula's build log) it is a cargo warning.
fn announce(what: &str) {
    use std::io::Write;
    let tty = std::fs::OpenOptions::new().write(true).open("/dev/tty");
    match tty.and_then(|mut t| write!(t, "\r\x1b[K   wsgimux: {what}\n")) {
        Ok(()) => {}
        Err(_) => println!("cargo:warning={what}"),
    }
}

/// A copy of the worker's manifest that is a workspace of its own, in `dir/manifest/` beside
/// links to the worker's sources (its paths are relative to `worker/manifest/`), with this
/// crate's Cargo.lock, so that it builds the versions this crate was tested with.
fn standalone_manifest(root: &Path, dir: &Path) -> PathBuf {
    let worker = root.join("worker");
    let manifest_dir = dir.join("manifest");
    std::fs::create_dir_all(&manifest_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", manifest_dir.display()));
    for name in ["src", "build.rs"] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(worker.join(name), &link)
            .unwrap_or_else(|e| panic!("linking {}: {e}", link.display()));
    }
    let text = std::fs::read_to_string(worker.join("worker.toml"))
        .unwrap_or_else(|e| panic!("reading worker/worker.toml: {e}"));
    let manifest = manifest_dir.join("Cargo.toml");
    std::fs::write(
        &manifest,
        format!("{text}\n# Standalone: not a member of the crate's workspace.\n[workspace]\n"),
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", manifest.display()));
    if let Ok(lock) = std::fs::read(root.join("Cargo.lock")) {
        let _ = std::fs::write(manifest_dir.join("Cargo.lock"), lock);
    }
    manifest
}
