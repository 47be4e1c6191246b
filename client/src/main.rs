//! trainctl: the command-line client of trainerd. The commands arrive with issue #4.

fn main() {
    println!("trainctl {}", env!("CARGO_PKG_VERSION"));
}
