//! Real speech for tests, spoken by espeak-ng (Debian's `espeak-ng` package)
//! at test time, so no audio files are stored in the repository.

use std::path::PathBuf;
use std::process::Command;

/// `text` spoken by espeak-ng (voice en-us, 160 words per minute): 16-bit
/// mono samples and their rate (22 050 Hz). `None` when espeak-ng is missing
/// outside CI; in CI that is a failure.
pub fn espeak(text: &str) -> Option<(Vec<i16>, u32)> {
    let path = scratch_path("espeak.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "160", "-w"])
        .arg(&path)
        .arg(text)
        .status();
    match status {
        Ok(status) if status.success() => {}
        other => {
            if crate::in_ci() {
                panic!("espeak-ng is required in CI: {other:?}");
            }
            eprintln!("SKIPPED: espeak-ng is not available ({other:?})");
            return None;
        }
    }
    let clip = read_wav_mono16(&path);
    let _ = std::fs::remove_file(&path);
    Some(clip)
}

/// Reads a 16-bit mono WAV; panics on anything else (test input is ours).
pub fn read_wav_mono16(path: &std::path::Path) -> (Vec<i16>, u32) {
    let mut reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!(spec.channels, 1, "{} is not mono", path.display());
    assert_eq!(spec.bits_per_sample, 16, "{} is not 16-bit", path.display());
    let samples = reader
        .samples::<i16>()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (samples, spec.sample_rate)
}

/// `ms` milliseconds of digital silence at `rate`.
pub fn silence(rate: u32, ms: u32) -> Vec<i16> {
    vec![0; (u64::from(rate) * u64::from(ms) / 1000) as usize]
}

/// A file name in the temp dir no other test process uses.
pub fn scratch_path(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("voxwire-{}-{nanos}-{tag}", std::process::id()))
}
