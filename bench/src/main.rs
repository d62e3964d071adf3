fn main() {
    println!("siphon-bench {}", env!("CARGO_PKG_VERSION"));
}
