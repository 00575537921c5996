//! The smallest embedding: a gateway from a config file, run until a signal, with no backends
//! compiled in (`gateway run` also links the platform's services). The benches use it to
//! measure the library alone, and it builds in a fraction of the binary's time.
//!
//! ```sh
//! cargo run --release --example serve -- benches/peers.toml
//! ```
//!
//! The config file is the last argument, so `serve run --config FILE` works too and the bench
//! scripts (`benches/peers-auth.sh -b target/release/examples/serve`) can run it in place of
//! the binary.

fn main() {
    let path = std::env::args()
        .skip(1)
        .last()
        .unwrap_or_else(|| "config/gateway.toml".into());
    let gateway = gatehouse::Gateway::builder()
        .config_file(&path)
        .build()
        .unwrap_or_else(|e| {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        });
    if let Err(e) = gateway.run() {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
