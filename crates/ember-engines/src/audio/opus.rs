//! Opus for symphonia: a symphonia `AudioDecoder` over libopus, registered beside symphonia's own
//! codecs so its Ogg and Matroska/WebM demuxers feed it like any other codec.
//!
//! Why libopus through the `opus` crate: symphonia has no Opus decoder; libopus is the reference
//! decoder (the one browsers and Android play Opus with), and `opus` (opus-rs, maintained since
//! 2016) is its safe binding, whose `opusic-sys` builds a vendored libopus 1.6 with cmake, which
//! the build already needs for llama.cpp: no system package, no version skew. The pure-Rust
//! `opus-decoder` crate was a 0.1 release by one author when this was written: too young for
//! untrusted uploads.

use opus::MSDecoder;
use std::sync::Mutex;
use symphonia::core::audio::{AsGenericAudioBufferRef, AudioBuffer, AudioMut};
use symphonia::core::audio::{AudioSpec, Channels, GenericAudioBufferRef};
use symphonia::core::codecs::CodecInfo;
use symphonia::core::codecs::audio::FinalizeResult;
use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::codecs::registry::{RegisterableAudioDecoder, SupportedAudioCodec};
use symphonia::core::errors::{Error, Result};
use symphonia::core::packet::PacketRef;

/// Opus always decodes at 48 kHz here (the rate it codes at); resampling happens once, later.
const RATE: u32 = 48_000;
/// The longest Opus packet: 120 ms.
const MAX_FRAMES: usize = 5_760;

const SUPPORTED: &[SupportedAudioCodec] = &[SupportedAudioCodec {
    id: CODEC_ID_OPUS,
    info: CodecInfo {
        short_name: "opus",
        long_name: "Opus (libopus)",
        profiles: &[],
    },
}];

/// The identification header (RFC 7845 §5.1) that Ogg and Matroska both carry as extra data.
struct OpusHead {
    channels: usize,
    pre_skip: usize,
    /// Output gain in Q7.8 dB.
    gain: i16,
    streams: u8,
    coupled: u8,
    mapping: Vec<u8>,
}

impl OpusHead {
    fn parse(head: &[u8]) -> Result<OpusHead> {
        if head.len() < 19 || &head[..8] != b"OpusHead" {
            return Err(Error::DecodeError("opus: missing or short OpusHead"));
        }
        let channels = usize::from(head[9]);
        let pre_skip = usize::from(u16::from_le_bytes([head[10], head[11]]));
        let gain = i16::from_le_bytes([head[16], head[17]]);
        if channels == 0 {
            return Err(Error::DecodeError("opus: zero channels"));
        }
        let (streams, coupled, mapping) = match head[18] {
            // Family 0: one stream, mono or a coupled stereo pair.
            0 if channels == 1 || channels == 2 => {
                (1, (channels - 1) as u8, (0..channels as u8).collect())
            }
            0 => {
                return Err(Error::DecodeError(
                    "opus: family 0 with more than 2 channels",
                ));
            }
            _ => {
                let table = head
                    .get(21..21 + channels)
                    .ok_or(Error::DecodeError("opus: short channel mapping table"))?;
                (head[19], head[20], table.to_vec())
            }
        };
        Ok(OpusHead {
            channels,
            pre_skip,
            gain,
            streams,
            coupled,
            mapping,
        })
    }
}

pub(super) struct OpusDecoder {
    params: AudioCodecParameters,
    gapless: bool,
    // libopus state may move between threads but is not Sync, which `AudioDecoder` requires;
    // the lock is never contended (one decode at a time).
    decoder: Mutex<MSDecoder>,
    channels: usize,
    /// Priming samples still to drop, for containers that do not trim them themselves (Matroska:
    /// its CodecDelay only shifts timestamps). Ogg marks them on the packets instead.
    pre_skip_left: usize,
    interleaved: Vec<f32>,
    buf: AudioBuffer<f32>,
}

impl OpusDecoder {
    fn try_new(params: &AudioCodecParameters, opts: &AudioDecoderOptions) -> Result<Self> {
        let head = params
            .extra_data
            .as_deref()
            .ok_or(Error::DecodeError("opus: no OpusHead in the container"))?;
        let head = OpusHead::parse(head)?;
        let mut decoder = MSDecoder::new(RATE, head.streams, head.coupled, &head.mapping)
            .map_err(|_| Error::DecodeError("opus: invalid stream layout"))?;
        decoder
            .set_gain(i32::from(head.gain))
            .map_err(|_| Error::DecodeError("opus: invalid output gain"))?;
        let spec = AudioSpec::new(RATE, Channels::Discrete(head.channels as u16));
        let mut params = params.clone();
        params.with_sample_rate(RATE);
        Ok(OpusDecoder {
            params,
            gapless: opts.gapless,
            decoder: Mutex::new(decoder),
            channels: head.channels,
            pre_skip_left: head.pre_skip,
            interleaved: vec![0.0; MAX_FRAMES * head.channels],
            buf: AudioBuffer::new(spec, MAX_FRAMES),
        })
    }

    fn decode_packet(&mut self, packet: &PacketRef<'_>) -> Result<()> {
        self.buf.clear();
        // libopus reads an empty packet as a lost one and invents audio for it.
        if packet.data.is_empty() {
            return Err(Error::DecodeError("opus: empty packet"));
        }
        let decoder = self.decoder.get_mut().unwrap_or_else(|e| e.into_inner());
        let frames = decoder
            .decode_float(packet.data, &mut self.interleaved, false)
            .map_err(|_| Error::DecodeError("opus: invalid packet"))?;
        self.buf.render_uninit(Some(frames));
        for ch in 0..self.channels {
            let plane = self.buf.plane_mut(ch).expect("one plane per channel");
            for (i, sample) in plane.iter_mut().enumerate() {
                *sample = self.interleaved[i * self.channels + ch];
            }
        }
        let (mut start, end) = if self.gapless {
            (
                packet.trim_start.get() as usize,
                packet.trim_end.get() as usize,
            )
        } else {
            (0, 0)
        };
        if start > 0 {
            // The demuxer trims the priming itself (Ogg's granule positions).
            self.pre_skip_left = 0;
        } else {
            start = self.pre_skip_left.min(frames);
            self.pre_skip_left -= start;
        }
        self.buf.trim(start, end);
        Ok(())
    }
}

impl AudioDecoder for OpusDecoder {
    fn reset(&mut self) {
        let decoder = self.decoder.get_mut().unwrap_or_else(|e| e.into_inner());
        // Resetting only clears libopus's history; it cannot fail on a valid decoder.
        let _ = decoder.reset_state();
    }

    fn codec_info(&self) -> &CodecInfo {
        &SUPPORTED[0].info
    }

    fn codec_params(&self) -> &AudioCodecParameters {
        &self.params
    }

    fn decode_ref(&mut self, packet: &PacketRef<'_>) -> Result<GenericAudioBufferRef<'_>> {
        match self.decode_packet(packet) {
            Ok(()) => Ok(self.buf.as_generic_audio_buffer_ref()),
            Err(e) => {
                self.buf.clear();
                Err(e)
            }
        }
    }

    fn finalize(&mut self) -> FinalizeResult {
        FinalizeResult::default()
    }

    fn last_decoded(&self) -> GenericAudioBufferRef<'_> {
        self.buf.as_generic_audio_buffer_ref()
    }
}

impl RegisterableAudioDecoder for OpusDecoder {
    fn try_registry_new(
        params: &AudioCodecParameters,
        opts: &AudioDecoderOptions,
    ) -> Result<Box<dyn AudioDecoder>> {
        Ok(Box::new(OpusDecoder::try_new(params, opts)?))
    }

    fn supported_codecs() -> &'static [SupportedAudioCodec] {
        SUPPORTED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_head_layouts() {
        let mut stereo = b"OpusHead\x01\x02\x38\x01\x80\xbb\0\0\0\0\0".to_vec();
        let head = OpusHead::parse(&stereo).unwrap();
        assert_eq!(
            (head.channels, head.pre_skip, head.streams, head.coupled),
            (2, 312, 1, 1)
        );
        assert_eq!(head.mapping, [0, 1]);

        // Family 1 carries its own stream counts and mapping table.
        stereo[18] = 1;
        assert!(
            OpusHead::parse(&stereo).is_err(),
            "family 1 without its table"
        );
        stereo.extend_from_slice(&[2, 0, 0, 1]);
        let head = OpusHead::parse(&stereo).unwrap();
        assert_eq!(
            (head.streams, head.coupled, head.mapping),
            (2, 0, vec![0, 1])
        );

        assert!(OpusHead::parse(b"OpusTags\x01\x02\x38\x01\x80\xbb\0\0\0\0\0").is_err());
        assert!(OpusHead::parse(b"OpusHead\x01\x00\x38\x01\x80\xbb\0\0\0\0\x01\x00\x00").is_err());
    }
}
