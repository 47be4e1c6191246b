//! trainerd: supervises ML training jobs. The supervisor arrives with issue #3; until then this
//! binary only reports its version, so the workspace builds end to end.

fn main() {
    println!("trainerd {}", env!("CARGO_PKG_VERSION"));
}
