//! Links trainctl as a fixed-address (non-PIE) executable: a PIE build makes the loader apply about
//! 10,700 relocations at every start, a tenth of a millisecond of the 1.7 ms `trainctl get` takes on
//! a 2-core VM (docs/benchmarks.md). trainctl is a short-lived client with no listening socket;
//! trainerd itself stays position-independent.

fn main() {
    println!("cargo:rustc-link-arg-bin=trainctl=-no-pie");
}
