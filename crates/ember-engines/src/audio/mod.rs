//! Audio decoding for speech-to-text: the bytes a client uploads, in any common container, to
//! mono f32 samples at the rate a model wants (16 kHz for Whisper).
//!
//! The container is found from the bytes themselves (a content type or file name is only a hint:
//! clients get them wrong). Symphonia demuxes WAV, MP3, FLAC, Ogg, MP4/M4A, WebM/Matroska, AIFF,
//! CAF and ADTS, and decodes PCM (integer, float, µ-law, A-law), ADPCM, MP1/2/3, FLAC, Vorbis,
//! AAC-LC and ALAC; Opus goes through libopus (`opus`). Channels are averaged, and `resample`
//! converts the rate with a band-limited filter as the audio decodes. Synchronous and CPU-bound:
//! call it from a worker thread.
//!
//! Hostile input is bounded: the audio may not exceed the caller's `max_seconds` (decoding stops
//! there), the packet count is bounded by the input's size, damaged packets are skipped only a few
//! in a row, and a decoder panic on malformed data becomes `AudioError::Corrupt`. Memory is about
//! 4 bytes × `target_rate` × `max_seconds` (the source is never held whole).

mod decode;
mod error;
mod mp4;
mod ogg;
mod opus;
pub(crate) mod resample;

pub use error::AudioError;

/// What `decode_to_mono` produces and how much of it.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions<'a> {
    /// Output sample rate in Hz (16,000 for Whisper).
    pub target_rate: u32,
    /// Audio longer than this is refused with `AudioError::TooLong`.
    pub max_seconds: f64,
    /// The upload's MIME type (`audio/mpeg`) or file extension (`mp3`), when known. It only
    /// decides which formats are tried first.
    pub hint: Option<&'a str>,
}

/// Decodes `bytes` to mono f32 samples at `options.target_rate`, full scale ±1.
pub fn decode_to_mono(bytes: &[u8], options: &DecodeOptions<'_>) -> Result<Vec<f32>, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    if options.target_rate == 0 {
        return Err(AudioError::InvalidSpec("target sample rate 0 Hz".into()));
    }
    // This runs on every upload: a panic in a decoder on some malformed stream must fail that
    // request, not the model's worker thread.
    std::panic::catch_unwind(|| {
        decode::decode(
            bytes,
            options.hint,
            options.target_rate,
            options.max_seconds,
        )
    })
    .unwrap_or_else(|_| {
        Err(AudioError::Corrupt(
            "the decoder failed on malformed data".into(),
        ))
    })
}
