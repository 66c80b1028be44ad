//! Compiles `proto/dongdong.proto` with protox (no protoc binary needed), then
//! generates prost types and pbjson serde impls (canonical protobuf JSON).
use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(["dongdong.proto"], ["proto"])?;
    let descriptor = fds.encode_to_vec();
    let descriptor_path = out.join("dongdong_descriptor.bin");
    std::fs::write(&descriptor_path, &descriptor)?;
    prost_build::Config::new().file_descriptor_set_path(&descriptor_path).compile_fds(fds)?;
    pbjson_build::Builder::new().register_descriptors(&descriptor)?.build(&[".dongdong.v1"])?;
    Ok(())
}
