//! Fuzz target: arbitrary bytes as a remoting byte stream and as one frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = apogee_protocol::message::harness::frame_decoder(data);
});
