//! Demuxing and decoding with symphonia: bytes to the first decodable audio track, averaged to
//! mono and resampled as it decodes, checked for completeness, with the work bounded.

use super::error::{codec_name, corrupt};
use super::resample::Resampler;
use super::{AudioError, mp4, ogg, opus::OpusDecoder};
use std::io::{Cursor, ErrorKind};
use std::ops::Range;
use std::sync::LazyLock;
use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::codecs::registry::CodecRegistry;
use symphonia::core::errors::Error;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::well_known::{FORMAT_ID_ISOMP4, FORMAT_ID_OGG};
use symphonia::core::formats::{FormatReader, Track};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::units::TimeBase;

/// Symphonia's codecs plus Opus.
static CODECS: LazyLock<CodecRegistry> = LazyLock::new(|| {
    let mut codecs = CodecRegistry::new();
    symphonia::default::register_enabled_codecs(&mut codecs);
    codecs.register_audio_decoder::<OpusDecoder>();
    codecs
});

/// Undecodable packets in a row that are skipped (players skip a damaged frame too) before the
/// stream counts as corrupt.
const MAX_BAD_PACKETS: usize = 8;
/// Sample rates outside this range are no recording (8 kHz telephony to 768 kHz studio masters);
/// the upper bound also bounds the resampler's FFT size.
const RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// The audio track chosen for decoding.
struct AudioTrack {
    id: u32,
    params: AudioCodecParameters,
    /// Its duration as the container declares it, where it does, in its time base.
    declared: Option<(u64, TimeBase)>,
}

/// What the decode loop gives back.
struct Decoded {
    /// Mono at the target rate.
    samples: Vec<f32>,
    /// Where the last packet ends, in the track's time base.
    end_ts: i64,
    /// Whether the data ran out in the middle of something.
    ran_out: bool,
}

/// Decodes the first decodable audio track of `bytes` to mono at `target_rate`. `hint` (MIME
/// type or extension) only orders the probe. Stops as soon as the audio passes `max_seconds`.
pub(super) fn decode(
    bytes: &[u8],
    hint: Option<&str>,
    target_rate: u32,
    max_seconds: f64,
) -> Result<Vec<f32>, AudioError> {
    let mut format = open(bytes, hint)?;
    let info = *format.format_info();
    let track = pick_track(format.tracks(), info.short_name)?;
    let options = AudioDecoderOptions::default().gapless(true);
    let mut decoder = CODECS
        .make_audio_decoder(&track.params, &options)
        .map_err(|e| match e {
            Error::Unsupported(what) => AudioError::UnsupportedCodec {
                container: info.short_name.into(),
                codec: what.into(),
            },
            e => corrupt(&e),
        })?;
    // Priming and padding that MP4 declares in an edit list is cut before resampling, at the
    // source rate, where it is whole samples.
    let audible = match (info.format, track.params.sample_rate) {
        (FORMAT_ID_ISOMP4, Some(rate)) => mp4::audible_span(bytes, track.id, rate),
        _ => None,
    };
    let decoded = decode_track(
        format.as_mut(),
        decoder.as_mut(),
        &Stream {
            track_id: track.id,
            container: info.short_name,
            input_len: bytes.len(),
            audible: audible.unwrap_or(0..u64::MAX),
        },
        target_rate,
        max_seconds,
    )?;

    // A file cut short runs out of data mid-packet, or ends before the duration its header
    // declares. Timestamps, not a count of samples: a stream with gaps in its timestamps (an
    // encoder that dropped frames) declares the span they cover. 10 ms of slack for containers
    // that disagree on a partial last frame.
    if let Some((duration, time_base)) = track.declared {
        let seconds = |ticks: f64| {
            ticks * f64::from(time_base.numer.get()) / f64::from(time_base.denom.get())
        };
        let end = seconds(decoded.end_ts as f64);
        if decoded.ran_out || end + 0.010 < seconds(duration as f64) {
            return Err(AudioError::Corrupt(format!(
                "the stream is truncated (it ends at {end:.2} s of the {:.2} s it declares)",
                seconds(duration as f64),
            )));
        }
    }
    // Symphonia takes an Ogg file's length from its last page, so a cut one declares no more
    // than it holds.
    if info.format == FORMAT_ID_OGG && !ogg::has_end(bytes) {
        return Err(AudioError::Corrupt(
            "the stream is truncated (no end-of-stream page)".into(),
        ));
    }
    if decoded.samples.len() as f64 > max_seconds * f64::from(target_rate) {
        return Err(AudioError::TooLong { max_seconds });
    }
    Ok(decoded.samples)
}

/// Finds the container from the bytes and opens its reader.
fn open<'a>(bytes: &'a [u8], hint: Option<&str>) -> Result<Box<dyn FormatReader + 'a>, AudioError> {
    let mut probe_hint = Hint::new();
    match hint {
        // Without parameters: `audio/webm;codecs=opus` is what browsers send.
        Some(mime) if mime.contains('/') => {
            probe_hint.mime_type(mime.split(';').next().unwrap_or(mime).trim())
        }
        Some(extension) => probe_hint.with_extension(extension.trim_start_matches('.')),
        None => &mut probe_hint,
    };
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    symphonia::default::get_probe()
        .probe(&probe_hint, source, Default::default(), Default::default())
        .map_err(|e| match e {
            // Symphonia's own words when no reader claims the bytes; any other error comes from a
            // reader that recognised its container and then failed to read it.
            Error::Unsupported(why) if why.starts_with("core (probe)") => {
                AudioError::UnrecognisedContainer
            }
            e => corrupt(&e),
        })
}

/// The first audio track with a codec there is a decoder for, or else the first audio track
/// (whose codec is then reported unsupported).
fn pick_track(tracks: &[Track], container: &str) -> Result<AudioTrack, AudioError> {
    let audio = tracks.iter().filter_map(|track| match &track.codec_params {
        Some(CodecParameters::Audio(params)) => Some((track, params)),
        _ => None,
    });
    let (track, params) = audio
        .clone()
        .find(|(_, params)| CODECS.get_audio_decoder(params.codec).is_some())
        .or_else(|| audio.clone().next())
        .ok_or_else(|| AudioError::NoAudioTrack {
            container: container.into(),
        })?;
    if CODECS.get_audio_decoder(params.codec).is_none() {
        return Err(AudioError::UnsupportedCodec {
            container: container.into(),
            codec: codec_name(params.codec),
        });
    }
    Ok(AudioTrack {
        id: track.id,
        params: params.clone(),
        declared: track
            .duration
            .zip(track.time_base)
            .map(|(d, tb)| (d.get(), tb)),
    })
}

/// What `decode_track` reads.
struct Stream<'a> {
    track_id: u32,
    /// The container's short name, for errors.
    container: &'a str,
    /// The input's size in bytes.
    input_len: usize,
    /// The frames to keep (all but an MP4 edit list's priming and padding).
    audible: Range<u64>,
}

/// Decodes every packet of the stream's track, averaging its channels, into a resampler to
/// `target_rate`.
fn decode_track(
    format: &mut dyn FormatReader,
    decoder: &mut dyn AudioDecoder,
    stream: &Stream<'_>,
    target_rate: u32,
    max_seconds: f64,
) -> Result<Decoded, AudioError> {
    // Made at the first decoded packet, which tells the rate.
    let mut resampler = None;
    let (mut rate, mut frames, mut end_ts, mut ran_out) = (0, 0u64, i64::MIN, false);
    let mut frame = Vec::new();
    let mut bad_in_a_row = 0;
    // Every packet consumes input; one per byte (plus headers' worth) is more than any real
    // stream has, and stops a demuxer that would loop without advancing.
    let mut packets_left = stream.input_len + 1024;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // The data ran out mid-element. Streamed files end so (WebM from a browser's
            // MediaRecorder, WAV piped out of ffmpeg: sizes unknown); `decode` fails a file
            // whose header declares its length.
            Err(Error::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                ran_out = true;
                break;
            }
            Err(Error::ResetRequired) => {
                return Err(AudioError::Corrupt(
                    "the stream changes format midway".into(),
                ));
            }
            Err(e) => return Err(corrupt(&e)),
        };
        packets_left = packets_left
            .checked_sub(1)
            .ok_or_else(|| AudioError::Corrupt("more packets than the file has room for".into()))?;
        if packet.track_id != stream.track_id {
            continue;
        }
        end_ts = end_ts.max(packet.pts.get().saturating_add_unsigned(packet.dur.get()));
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            // A damaged packet (or one using a feature the decoder lacks) is skipped, as players
            // do, unless that is all there is.
            Err(e @ (Error::DecodeError(_) | Error::IoError(_) | Error::Unsupported(_))) => {
                bad_in_a_row += 1;
                if bad_in_a_row > MAX_BAD_PACKETS {
                    return Err(match e {
                        Error::Unsupported(what) => AudioError::UnsupportedCodec {
                            container: stream.container.into(),
                            codec: what.into(),
                        },
                        e => corrupt(&e),
                    });
                }
                continue;
            }
            Err(e) => return Err(corrupt(&e)),
        };
        bad_in_a_row = 0;
        let (packet_rate, channels) = (decoded.spec().rate(), decoded.spec().channels().count());
        if channels == 0 {
            return Err(AudioError::InvalidSpec("zero channels".into()));
        }
        if !RATES.contains(&packet_rate) {
            return Err(AudioError::InvalidSpec(format!(
                "sample rate {packet_rate} Hz"
            )));
        }
        if rate != 0 && rate != packet_rate {
            return Err(AudioError::Corrupt("the sample rate changes midway".into()));
        }
        rate = packet_rate;
        decoded.copy_to_vec_interleaved(&mut frame);
        let scale = 1.0 / channels as f32;
        let packet_frames = (frame.len() / channels) as u64;
        let keep = stream.audible.start.clamp(frames, frames + packet_frames) - frames
            ..stream.audible.end.clamp(frames, frames + packet_frames) - frames;
        resampler
            .get_or_insert_with(|| Resampler::new(rate, target_rate))
            .push(
                frame
                    .chunks_exact(channels)
                    .map(|f| f.iter().map(|&s| sanitize(s)).sum::<f32>() * scale)
                    .skip(keep.start as usize)
                    .take((keep.end - keep.start) as usize),
            );
        frames += packet_frames;
        // A second of slack for priming samples that are only trimmed at the end.
        if frames as f64 > (max_seconds + 1.0) * f64::from(rate) {
            return Err(AudioError::TooLong { max_seconds });
        }
    }
    match resampler {
        Some(resampler) if frames > 0 => Ok(Decoded {
            samples: resampler.finish(),
            end_ts,
            ran_out,
        }),
        _ => Err(AudioError::Corrupt("no audio could be decoded".into())),
    }
}

/// Float PCM can hold anything: NaN and infinities would poison every sample the resampler's
/// filter touches, and out-of-range values are clipped as any integer format would.
fn sanitize(sample: f32) -> f32 {
    if sample.is_nan() {
        0.0
    } else {
        sample.clamp(-1.0, 1.0)
    }
}
