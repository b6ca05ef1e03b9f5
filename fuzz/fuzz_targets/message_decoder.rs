//! Fuzz target: arbitrary bytes through every message-format decoder
//! (stored records, batches, properties, ids, tag expressions, zlib).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = apogee_protocol::message::harness::message_decoder(data);
});
