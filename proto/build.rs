//! Compiles `proto/ledger.proto` with a protoc shipped by a crate, so a fresh machine needs no
//! system package. `PROTOC` in the environment overrides the vendored binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: a build script is single-threaded at this point.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("PROTOC", protoc);
        }
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/ledger.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto/ledger.proto");
    Ok(())
}
