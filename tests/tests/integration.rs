//! Every integration scenario, in one test binary (one link step). The
//! scenarios start servers in-process or run this package's build of the
//! server binary (`dongdong-test-server`, the same `main.rs` as `dongdong`)
//! as a child process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scenarios;
