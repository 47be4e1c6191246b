//! Makes trainer-proc run without LD_LIBRARY_PATH and see CUDA on a GPU host.
//!
//! torch-sys tells its direct dependents where libtorch lives (`DEP_TCH_LIBTORCH_LIB`, from its
//! `links = "tch"`). We embed that directory as an rpath, and link libtorch_cuda with
//! `--no-as-needed`: nothing references its symbols directly, so the default `--as-needed` would drop
//! it and `tch::Cuda::is_available()` would be false even with a GPU present.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
