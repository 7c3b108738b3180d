//! Compiles the etcd v3 API, keelson's raft payload and its peer protocol.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script reused from a target directory shared between clones
    // at different paths must look at the clone being built.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = [
        "mvccpb/kv.proto",
        "authpb/auth.proto",
        "etcdserverpb/rpc.proto",
        "v3electionpb/v3election.proto",
        "v3lockpb/v3lock.proto",
        "keelson/raftpb.proto",
        "keelson/peerpb.proto",
    ]
    .map(|f| root.join(f));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Keys and values are `Bytes`: decoding slices the request buffer instead of copying.
        .bytes(".")
        // Services that are not implemented yet answer `Unimplemented` by default.
        .generate_default_stubs(true)
        .compile_protos(&files, &[root])?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    println!("cargo:rustc-env=KEELSON_RUSTC_VERSION={}", version.trim());
    Ok(())
}
