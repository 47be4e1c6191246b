//! Builds `shim/` (the per-attempt trainerd-shim) into a static executable of its own that trainerd
//! embeds. It is compiled here with rustc directly rather than as a cargo target because it must
//! abort on panic and link without a C library, while the rest of the workspace unwinds: cargo has no
//! per-target panic strategy.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=shim");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let shim = out.join("trainerd-shim");
    let status = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "bin", "--crate-name", "trainerd_shim", "--target", &target])
        .args(["-C", "panic=abort", "-C", "opt-level=2", "-C", "debuginfo=0", "-C", "strip=symbols"])
        // Static and not position-independent: no dynamic loader and no relocations to apply, so
        // a shim's pages stay shared with every other shim's but for its stack and data.
        .args(["-C", "relocation-model=static", "-C", "target-feature=+crt-static"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib", "-C", "link-arg=-Wl,--gc-sections"])
        .arg("shim/main.rs")
        .arg("-o")
        .arg(&shim)
        .status()
        .expect("cannot run rustc to build the shim");
    assert!(status.success(), "building daemon/shim (the trainerd-shim) failed; rustc said why above");
}
