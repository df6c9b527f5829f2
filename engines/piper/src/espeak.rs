//! The only FFI in the crate: text to IPA through the system's libespeak-ng.
//!
//! espeak-ng keeps all of its state in globals and is not thread-safe, so
//! every call goes through one process-wide mutex, which also guards the
//! one-time initialisation and remembers the selected voice.
#![allow(unsafe_code)]

use std::ffi::{c_void, CStr, CString};
use std::os::raw::c_char;
use std::sync::Mutex;

use espeakng_sys as sys;

use crate::PiperError;

struct Engine {
    voice: Option<String>,
}

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);

fn initialise() -> Result<Engine, PiperError> {
    // SAFETY: called once, under ENGINE's lock, before any other espeak call.
    // A null path makes espeak-ng use ESPEAK_DATA_PATH or its built-in data
    // directory; DONT_EXIT stops it from calling exit() on a missing data
    // directory so the error reaches us as a return value instead.
    let rate = unsafe {
        sys::espeak_Initialize(
            sys::espeak_AUDIO_OUTPUT_AUDIO_OUTPUT_SYNCHRONOUS,
            0,
            std::ptr::null(),
            sys::espeakINITIALIZE_DONT_EXIT as i32,
        )
    };
    if rate <= 0 {
        return Err(PiperError::Espeak(format!(
            "espeak_Initialize failed ({rate}); is espeak-ng-data installed?"
        )));
    }
    Ok(Engine { voice: None })
}

/// IPA phonemes of one clause of `text`, as espeak-ng writes them (words
/// separated by spaces, no clause punctuation). Should espeak still split
/// the text into several clauses (at marks the caller did not treat as
/// clause ends, such as an ellipsis), their phonemes are joined with a space
/// so that words at the seam stay apart.
pub fn text_to_phonemes(voice: &str, text: &str) -> Result<String, PiperError> {
    let text: String = text.chars().filter(|&c| c != '\0').collect();
    let c_text = CString::new(text).map_err(|e| PiperError::Espeak(e.to_string()))?;
    let c_voice = CString::new(voice).map_err(|e| PiperError::Espeak(e.to_string()))?;

    // A panic elsewhere cannot leave espeak half-updated under this lock
    // (no Rust code runs inside the C calls), so a poisoned lock is usable.
    let mut guard = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(initialise()?);
    }
    let engine = guard
        .as_mut()
        .ok_or_else(|| PiperError::Espeak("espeak-ng not initialised".into()))?;
    if engine.voice.as_deref() != Some(voice) {
        // SAFETY: espeak is initialised and we hold the lock; the name is a
        // valid NUL-terminated string that outlives the call.
        let rc = unsafe { sys::espeak_SetVoiceByName(c_voice.as_ptr()) };
        if rc != sys::espeak_ERROR_EE_OK {
            engine.voice = None;
            return Err(PiperError::UnknownVoice(voice.to_string()));
        }
        engine.voice = Some(voice.to_string());
    }

    let mut out = String::new();
    let mut cursor: *const c_void = c_text.as_ptr().cast();
    let mode = sys::espeakPHONEMES_IPA as i32;
    while !cursor.is_null() {
        // SAFETY: espeak is initialised and we hold the lock. `cursor` points
        // into `c_text` (NUL-terminated, alive for this whole loop); espeak
        // advances it past the clause it translated, or sets it to null at
        // the end of the text. The returned buffer is espeak's own static
        // storage, valid until the next call, and is copied out at once.
        let phonemes = unsafe {
            let p: *const c_char =
                sys::espeak_TextToPhonemes(&mut cursor, sys::espeakCHARS_UTF8 as i32, mode);
            if p.is_null() {
                break;
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        let phonemes = phonemes.trim();
        if !phonemes.is_empty() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(phonemes);
        }
    }
    Ok(out)
}
