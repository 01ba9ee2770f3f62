//! A portable build links llama.cpp's shared libraries, which ship beside the binary: the binary
//! looks for them in its own folder.

fn main() {
    if std::env::var_os("CARGO_FEATURE_PORTABLE").is_some() {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN");
    }
}
