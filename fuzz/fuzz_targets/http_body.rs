//! The HTTP API's JSON bodies (and uploads and query strings), sent to a
//! real server's routes on the embedded backend: every request is answered
//! with a 2xx–4xx, never a panic or a 5xx (see dongdong_server::fuzzing).
#![no_main]

use dongdong_server::fuzzing::HttpFuzzer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static SERVER: OnceLock<HttpFuzzer> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let server = SERVER.get_or_init(|| HttpFuzzer::new().expect("a server to fuzz"));
    server.run(data);
});
