fn main() {
    println!("siphon {}", env!("CARGO_PKG_VERSION"));
}
