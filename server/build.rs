//! Compiles the etcd v3 API, keelson's raft payload and its peer protocol, and generates the
//! JSON gateway's mapping of etcd's messages from the same protos.

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
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out_dir.join("etcd_descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .build_client(true)
        .build_server(true)
        // Keys and values are `Bytes`: decoding slices the request buffer instead of copying.
        .bytes(".")
        // Services that are not implemented yet answer `Unimplemented` by default.
        .generate_default_stubs(true)
        .compile_protos(&files, &[root])?;
    // etcd's gateway marshals with grpc-gateway's JSONPb{OrigName: true}: the proto field
    // names as written (`create_revision`, `ID`, `dbSize`), 64-bit integers as strings, bytes
    // in base64, enum names, defaults omitted. pbjson generates exactly that mapping (serde
    // impls for the prost types) from the descriptors; unknown fields are ignored, as
    // grpc-gateway's decoder does.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3electionpb",
            ".v3lockpb",
        ])?;
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
