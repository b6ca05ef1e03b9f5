//! Compiles the RocketMQ 5 `.proto` files with protox (a Rust protobuf
//! compiler), so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/apache/rocketmq/v2/definition.proto",
        "proto/apache/rocketmq/v2/service.proto",
        "proto/apache/rocketmq/v2/admin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        // The client stubs serve the crate's own tests and tools.
        .build_client(true)
        // Bodies as `Bytes`: decoding slices the request buffer and a
        // received message's body shares the broker's response buffer, so
        // no body is copied on its way through.
        .bytes(".apache.rocketmq.v2")
        .compile_fds(fds)?;
    Ok(())
}
