//! `AudioError`: why audio bytes could not become samples, in words fit for the client, and
//! how symphonia's errors become one.

use std::fmt;
use std::io::ErrorKind;
use symphonia::core::codecs::audio::AudioCodecId;
use symphonia::core::codecs::audio::well_known as codec;
use symphonia::core::errors::Error;

/// Why audio could not be decoded. Every variant is a fault of the input, not of the server.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioError {
    /// No bytes at all.
    Empty,
    /// The bytes are no container or stream this module knows (WAV, MP3, FLAC, Ogg, MP4/M4A,
    /// WebM/Matroska, AIFF, CAF, ADTS AAC).
    UnrecognisedContainer,
    /// The container holds no audio track (a video-only file, say).
    NoAudioTrack {
        /// The container's short name (`isomp4`, `mkv`, …).
        container: String,
    },
    /// The audio track's codec is one this module cannot decode.
    UnsupportedCodec {
        /// The container's short name.
        container: String,
        /// The codec's name, or its id where it has no well-known name.
        codec: String,
    },
    /// The stream is damaged or cut short.
    Corrupt(String),
    /// The audio lasts longer than the caller allows.
    TooLong {
        /// The caller's limit.
        max_seconds: f64,
    },
    /// The stream declares what no audio has: zero channels, a sample rate of 0 or 10 MHz.
    InvalidSpec(String),
}

impl fmt::Display for AudioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioError::Empty => write!(f, "the audio is empty"),
            AudioError::UnrecognisedContainer => write!(
                f,
                "unrecognised audio format (supported: wav, mp3, flac, ogg/vorbis, ogg/opus, \
                 m4a/aac, webm/opus, webm/vorbis, aiff, caf)"
            ),
            AudioError::NoAudioTrack { container } => {
                write!(f, "the {container} file has no audio track")
            }
            AudioError::UnsupportedCodec { container, codec } => {
                write!(f, "unsupported audio codec {codec} in {container}")
            }
            AudioError::Corrupt(why) => write!(f, "the audio is corrupt: {why}"),
            AudioError::TooLong { max_seconds } => {
                write!(f, "the audio is longer than the limit of {max_seconds} s")
            }
            AudioError::InvalidSpec(what) => write!(f, "invalid audio: {what}"),
        }
    }
}

impl std::error::Error for AudioError {}

/// A damaged or unreadable stream, in the reader's or decoder's words.
pub(super) fn corrupt(error: &Error) -> AudioError {
    AudioError::Corrupt(match error {
        Error::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => {
            "the stream is truncated".into()
        }
        // Without symphonia's "malformed stream:" prefixes: "mkv: missing segment element".
        Error::DecodeError(what) | Error::Unsupported(what) | Error::LimitError(what) => {
            what.to_string()
        }
        e => e.to_string(),
    })
}

/// A name for a codec there is no decoder for (symphonia names only the ones it decodes).
pub(super) fn codec_name(id: AudioCodecId) -> String {
    let name = match id {
        codec::CODEC_ID_AC3 => "AC-3",
        codec::CODEC_ID_EAC3 => "E-AC-3",
        codec::CODEC_ID_AC4 => "AC-4",
        codec::CODEC_ID_DCA => "DTS",
        codec::CODEC_ID_TRUEHD => "TrueHD",
        codec::CODEC_ID_WMA => "WMA",
        codec::CODEC_ID_SPEEX => "Speex",
        codec::CODEC_ID_MUSEPACK => "Musepack",
        codec::CODEC_ID_WAVPACK => "WavPack",
        codec::CODEC_ID_MONKEYS_AUDIO => "Monkey's Audio",
        codec::CODEC_ID_TTA => "TTA",
        codec::CODEC_ID_ATRAC1 | codec::CODEC_ID_ATRAC3 | codec::CODEC_ID_ATRAC3PLUS => "ATRAC",
        codec::CODEC_ID_ATRAC9 => "ATRAC9",
        codec::CODEC_ID_COOK => "RealAudio Cook",
        _ => return format!("with id {id}"),
    };
    name.to_string()
}
