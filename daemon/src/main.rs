//! trainerd: supervises ML training jobs. The supervisor (issue #3) is being built on [`trainerd::store`];
//! until it lands this binary only reports its version.

fn main() {
    println!("trainerd {}", env!("CARGO_PKG_VERSION"));
}
