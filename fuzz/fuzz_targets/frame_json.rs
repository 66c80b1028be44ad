//! The JSON frame decoder: any bytes decode or fail cleanly, and what
//! decodes encodes back (canonical JSON) to the same frame, also through
//! the binary encoding.
#![no_main]

use im_core::{Encoding, decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(Encoding::Json, data) {
        for enc in [Encoding::Json, Encoding::Protobuf] {
            let again = decode_frame(enc, &encode_frame(enc, &frame));
            assert_eq!(again.as_ref().ok(), Some(&frame), "{enc:?}");
        }
    }
});
