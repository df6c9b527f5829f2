//! The small parsers every path shares: session ids (any bytes a client can
//! put in a string field, lossily as UTF-8), PCM decoding and encoding, and
//! the frame arithmetic of any (sample rate, frame duration) pair.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxwire_proto::audio::{decode_pcm16, encode_pcm16, FrameFormat};
use voxwire_proto::session::validate_session_id;

fuzz_target!(|data: &[u8]| {
    let id = String::from_utf8_lossy(data);
    if validate_session_id(&id).is_ok() {
        // What the rule promises its callers: ids fit in logs and labels.
        assert!(!id.trim().is_empty());
        assert!(!id.chars().any(char::is_control));
    }

    let samples = decode_pcm16(data);
    let mut bytes = Vec::new();
    encode_pcm16(&samples, &mut bytes);
    assert_eq!(bytes.as_slice(), &data[..data.len() & !1]);

    if data.len() >= 8 {
        let rate = i32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let ms = i32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        if let Ok(format) = FrameFormat::new(rate, ms) {
            assert!(format.frame_bytes() > 0);
            assert_eq!(format.frame_bytes(), format.samples_per_frame() * 2);
        }
    }
});
