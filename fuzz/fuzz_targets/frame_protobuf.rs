//! The binary frame decoder: any bytes decode or fail cleanly, and what
//! decodes encodes back to bytes that decode to the same frame.
#![no_main]

use im_core::{Encoding, decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(Encoding::Protobuf, data) {
        let again = decode_frame(Encoding::Protobuf, &encode_frame(Encoding::Protobuf, &frame));
        assert_eq!(again.as_ref().ok(), Some(&frame));
    }
});
