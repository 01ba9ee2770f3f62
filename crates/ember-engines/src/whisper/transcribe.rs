//! The transcription loop, faster-whisper's `transcribe` / `generate_segments` on the audio it is
//! given (with `vad_filter`, the speech `Whisper::transcribe` kept; no clip timestamps): the
//! language, then 30 s windows from `seek`, each decoded with the previous text as prompt and
//! temperature fallback, split into segments at its timestamp pairs, given word timestamps, and
//! `seek` moved to where the window's speech was cut.

use super::align::{self, AlignInput, Piece};
use super::decode::{self, DecodeOptions, Generated, Specials};
use super::mel::{HOP, SAMPLE_RATE, WINDOW_FRAMES};
use super::model::CrossKv;
use super::{Segment, Task, TranscribeOptions, Transcription, Whisper};
use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::io::Write;

/// Seconds per timestamp token.
const TIME_PRECISION: f64 = 0.02;
/// Mel frames per encoder position.
const INPUT_STRIDE: usize = 2;
const FRAMES_PER_SECOND: f64 = (SAMPLE_RATE / HOP) as f64;

pub(super) fn run(
    w: &Whisper,
    samples: &[f32],
    o: &TranscribeOptions,
) -> anyhow::Result<Transcription> {
    let duration = samples.len() as f64 / SAMPLE_RATE as f64;
    let features = w.mel.features(samples)?;
    // The extractor's last frame is past the audio.
    let content_frames = features.dim(1)? - 1;
    let encode = |seek: usize, size: usize| -> anyhow::Result<CrossKv> {
        w.model.encode(&w.mel.window(&features, seek, size)?)
    };

    // The first window's encoding serves language detection as well. faster-whisper detects on
    // `features[:, :3000]`, which for audio under 30 s holds the extra last frame too; that one
    // frame of padding is the only difference.
    let first_size = WINDOW_FRAMES.min(content_frames);
    let mut first_window = (content_frames > 0)
        .then(|| encode(0, first_size))
        .transpose()?;
    let (language, language_probability) = match (&o.language, &first_window) {
        (_, _) if !w.is_multilingual() => ("en".to_string(), 1.0),
        (Some(code), _) => (code.clone(), 1.0),
        (None, Some(cross)) => detect_language(w, cross)?,
        // No audio (all of it silence to the VAD): faster-whisper still detects, on the one
        // frame past the audio.
        (None, None) => detect_language(w, &encode(0, features.dim(1)?)?)?,
    };

    let mut sot_sequence = vec![w.tokens.sot];
    if w.is_multilingual() {
        let id = w
            .tokens
            .language_id(&language)
            .with_context(|| format!("unknown language {language:?}"))?;
        let task = match o.task {
            Task::Transcribe => w.tokens.transcribe,
            Task::Translate => w.tokens.translate,
        };
        sot_sequence.extend([id, task]);
    }
    let specials = Specials {
        sot: w.tokens.sot,
        eot: w.tokens.eot,
        no_speech: w.tokens.no_speech,
        timestamp_begin: w.tokens.timestamp_begin,
    };
    let suppress = suppressed(w, &o.suppress_tokens);
    let suppress_begin = if o.suppress_blank {
        w.suppress_ids_begin.clone()
    } else {
        Vec::new()
    };
    let max_initial_timestamp =
        (!o.without_timestamps).then(|| (o.max_initial_timestamp / TIME_PRECISION).round() as u32);
    let mut rng = StdRng::seed_from_u64(o.seed);

    let mut all_tokens: Vec<u32> = match &o.initial_prompt {
        Some(text) => w.tokens.encode(&format!(" {}", text.trim()))?,
        None => Vec::new(),
    };
    let mut prompt_reset_since = 0;
    let mut last_speech_timestamp = 0.0;
    let mut segments = Vec::new();
    let mut seek = 0;
    while seek < content_frames {
        let time_offset = seek as f64 * HOP as f64 / SAMPLE_RATE as f64;
        let segment_size = WINDOW_FRAMES.min(content_frames - seek);
        let segment_duration = segment_size as f64 * HOP as f64 / SAMPLE_RATE as f64;
        let cross = match first_window.take() {
            Some(cross) if seek == 0 => cross,
            _ => encode(seek, segment_size)?,
        };

        let previous = &all_tokens[prompt_reset_since..];
        let mut prompt = Vec::new();
        if !previous.is_empty() {
            prompt.push(w.tokens.sot_prev);
            // At most half the decoder's context, less the <|startofprev|>.
            let keep = w.model.dims.n_text_ctx / 2 - 1;
            prompt.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
        }
        prompt.extend_from_slice(&sot_sequence);
        if o.without_timestamps {
            prompt.push(w.tokens.no_timestamps);
        }

        let base = DecodeOptions {
            beam_size: o.beam_size.max(1),
            patience: o.patience,
            length_penalty: o.length_penalty,
            temperature: 0.0,
            best_of: o.best_of,
            suppress: suppress.clone(),
            suppress_begin: suppress_begin.clone(),
            max_initial_timestamp,
        };
        let prompted = decode::prompt(&w.model, &cross, &prompt, specials)?;
        let Fallback {
            generated,
            avg_logprob,
            temperature,
            compression_ratio,
        } = generate_with_fallback(w, &cross, &prompted, specials, base, o, &mut rng)?;

        if let Some(threshold) = o.no_speech_threshold {
            let silent = generated.no_speech_prob > threshold
                && o.log_prob_threshold.is_none_or(|lp| avg_logprob <= lp);
            if silent {
                seek += segment_size;
                continue;
            }
        }

        let previous_seek = seek;
        let split = split_by_timestamps(
            &generated.tokens,
            w.tokens.timestamp_begin,
            time_offset,
            segment_size,
            segment_duration,
        );
        let mut pieces = split.pieces;
        seek += split.advance;
        if o.word_timestamps {
            let text: Vec<u32> = pieces
                .iter()
                .flat_map(|p| p.tokens.iter().copied().filter(|&t| t < w.tokens.eot))
                .collect();
            let input = AlignInput {
                cross: &cross,
                sot_sequence: &sot_sequence,
                text: &text,
                frames: segment_size,
                language: &language,
            };
            let alignment = align::find_alignment(&w.model, &w.tokens, &w.alignment_heads, &input)?;
            let word_offset = previous_seek as f64 / FRAMES_PER_SECOND;
            let punctuations = (
                o.prepend_punctuations.as_str(),
                o.append_punctuations.as_str(),
            );
            align::add_word_timestamps(
                &mut pieces,
                alignment,
                word_offset,
                punctuations,
                last_speech_timestamp,
                w.tokens.eot,
            );
            let last_end = last_end(&pieces);
            if !split.single_timestamp_ending
                && let Some(end) = last_end.filter(|&end| end > time_offset)
            {
                seek = (end * FRAMES_PER_SECOND).round() as usize;
            }
            if let Some(end) = last_end {
                last_speech_timestamp = end;
            }
        }
        // faster-whisper would loop on a window that moves nothing (its last timestamp at 0 and
        // no words past its start); go on to the next window instead.
        if seek <= previous_seek {
            seek = previous_seek + segment_size;
        }

        for piece in pieces {
            let text = w.tokens.decode(&piece.tokens)?;
            if piece.start == piece.end || text.trim().is_empty() {
                continue;
            }
            all_tokens.extend_from_slice(&piece.tokens);
            segments.push(Segment {
                start: piece.start,
                end: piece.end,
                text,
                tokens: piece.tokens,
                temperature,
                avg_logprob,
                compression_ratio,
                no_speech_prob: generated.no_speech_prob,
                words: piece.words,
            });
        }
        if !o.condition_on_previous_text || temperature > o.prompt_reset_on_temperature {
            prompt_reset_since = all_tokens.len();
        }
    }
    Ok(Transcription {
        language,
        language_probability,
        duration,
        duration_after_vad: duration,
        segments,
    })
}

/// The likeliest language token after `<|startoftranscript|>`, among the model's languages.
fn detect_language(w: &Whisper, cross: &CrossKv) -> anyhow::Result<(String, f64)> {
    let mut cache = w.model.new_cache();
    let (hidden, _) = w.model.decode(&[w.tokens.sot], 1, &mut cache, cross, &[])?;
    let logits = w.model.logits(&hidden)?;
    let language_logits: Vec<f32> = w
        .lang_ids
        .iter()
        .map(|&id| logits[0][id as usize])
        .collect();
    let log_probs = decode::log_softmax(&language_logits);
    let (best, &lp) = log_probs
        .iter()
        .enumerate()
        .reduce(|a, b| if b.1 > a.1 { b } else { a })
        .context("the model lists no languages")?;
    let id = w.lang_ids[best];
    let code = w
        .tokens
        .language_code(id)
        .with_context(|| format!("token {id} is no language"))?;
    Ok((code, (lp as f64).exp()))
}

/// faster-whisper's `get_suppressed_tokens`: the ids given (`-1` → the non-speech tokens) and
/// the task's special tokens; nothing when none is given.
fn suppressed(w: &Whisper, ids: &[i64]) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<u32> = ids
        .iter()
        .filter_map(|&id| u32::try_from(id).ok())
        .collect();
    if ids.contains(&-1) {
        out.extend(&w.non_speech);
    }
    out.extend(w.tokens.task_specials());
    out.retain(|&id| (id as usize) < w.model.dims.n_vocab);
    out.sort_unstable();
    out.dedup();
    out
}

/// The decoding kept for a window.
struct Fallback {
    generated: Generated,
    avg_logprob: f64,
    temperature: f32,
    compression_ratio: f64,
}

/// Decodes at each temperature in turn until the result is neither too repetitive nor too
/// unlikely (unlikely silence is accepted); if none passes, the likeliest of those not too
/// repetitive (or of all), reported with the last temperature.
fn generate_with_fallback(
    w: &Whisper,
    cross: &CrossKv,
    prompted: &decode::Prompted,
    specials: Specials,
    base: DecodeOptions,
    o: &TranscribeOptions,
    rng: &mut StdRng,
) -> anyhow::Result<Fallback> {
    if o.temperatures.is_empty() {
        bail!("no temperature to decode at");
    }
    let mut options = base;
    // Every result, and whether it passed the compression check.
    let mut tried: Vec<(Fallback, bool)> = Vec::new();
    for &temperature in &o.temperatures {
        options.temperature = temperature;
        let generated =
            decode::generate(&w.model, &w.steps, cross, prompted, specials, &options, rng)?;
        // The EOT's log-probability is in the sum, so it counts in the length.
        let avg_logprob = generated.sum_logprob / (generated.tokens.len() + 1) as f64;
        let text = w.tokens.decode(&generated.tokens)?;
        let compression_ratio = compression_ratio(text.trim());
        let too_repetitive = o
            .compression_ratio_threshold
            .is_some_and(|t| compression_ratio > t);
        let too_unlikely = o.log_prob_threshold.is_some_and(|t| avg_logprob < t);
        let silence = too_unlikely
            && o.no_speech_threshold
                .is_some_and(|t| generated.no_speech_prob > t);
        let result = Fallback {
            generated,
            avg_logprob,
            temperature,
            compression_ratio,
        };
        if !(too_repetitive || too_unlikely) || silence {
            return Ok(result);
        }
        let compresses = o.compression_ratio_threshold.is_some() && !too_repetitive;
        tried.push((result, compresses));
    }
    let any_compresses = tried.iter().any(|(_, compresses)| *compresses);
    let mut best = tried
        .into_iter()
        .filter(|(_, compresses)| *compresses || !any_compresses)
        .map(|(result, _)| result)
        .reduce(|best, r| {
            if r.avg_logprob > best.avg_logprob {
                r
            } else {
                best
            }
        })
        .context("no decoding result")?;
    best.temperature = *o.temperatures.last().unwrap_or(&0.0);
    Ok(best)
}

/// UTF-8 length over zlib-compressed length (level 6, Python's default).
fn compression_ratio(text: &str) -> f64 {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    // Writing to a Vec cannot fail.
    let compressed = encoder
        .write_all(text.as_bytes())
        .and_then(|_| encoder.finish())
        .unwrap_or_default();
    text.len() as f64 / compressed.len().max(1) as f64
}

/// A window's tokens cut at timestamp pairs.
struct Split {
    pieces: Vec<Piece>,
    /// Frames to move `seek` by.
    advance: usize,
    /// The tokens end in one timestamp after text: the speech ended inside the window.
    single_timestamp_ending: bool,
}

/// faster-whisper's `_split_segments_by_timestamps`: a piece per `<|t1|> text <|t2|>` pair; with
/// complete pairs only, the window is consumed up to the last timestamp (the rest of the audio is
/// decoded again in the next window); with none, the window is one piece.
fn split_by_timestamps(
    tokens: &[u32],
    begin: u32,
    time_offset: f64,
    segment_size: usize,
    segment_duration: f64,
) -> Split {
    let n = tokens.len();
    let single_timestamp_ending = n >= 2 && tokens[n - 2] < begin && tokens[n - 1] >= begin;
    let is_time = |t: u32| t >= begin;
    let position = |t: u32| (t - begin) as f64;
    let mut slices: Vec<usize> = (1..n)
        .filter(|&i| is_time(tokens[i]) && is_time(tokens[i - 1]))
        .collect();
    if slices.is_empty() {
        let mut end = segment_duration;
        if let Some(&last) = tokens.iter().rev().find(|&&t| is_time(t))
            && last != begin
        {
            end = position(last) * TIME_PRECISION;
        }
        let piece = Piece {
            start: time_offset,
            end: time_offset + end,
            tokens: tokens.to_vec(),
            words: Vec::new(),
        };
        return Split {
            pieces: vec![piece],
            advance: segment_size,
            single_timestamp_ending,
        };
    }
    if single_timestamp_ending {
        slices.push(n);
    }
    let mut pieces = Vec::new();
    let mut last = 0;
    for &slice in &slices {
        let sliced = &tokens[last..slice];
        pieces.push(Piece {
            start: time_offset + position(sliced[0]) * TIME_PRECISION,
            end: time_offset + position(sliced[sliced.len() - 1]) * TIME_PRECISION,
            tokens: sliced.to_vec(),
            words: Vec::new(),
        });
        last = slice;
    }
    let advance = if single_timestamp_ending {
        segment_size
    } else {
        position(tokens[last - 1]) as usize * INPUT_STRIDE
    };
    Split {
        pieces,
        advance,
        single_timestamp_ending,
    }
}

/// The end of the last word of the pieces, else of the last piece.
fn last_end(pieces: &[Piece]) -> Option<f64> {
    pieces
        .iter()
        .rev()
        .find_map(|p| p.words.last().map(|w| w.end))
        .or_else(|| pieces.last().map(|p| p.end))
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u32 = 50364;

    #[test]
    fn splits_at_timestamp_pairs() {
        // <|0.00|> a <|1.00|><|1.00|> b <|2.00|><|2.00|> c   (ends inside a piece)
        let tokens = [B, 1, B + 50, B + 50, 2, B + 100, B + 100, 3];
        let split = split_by_timestamps(&tokens, B, 30.0, 3000, 30.0);
        let bounds: Vec<(f64, f64)> = split.pieces.iter().map(|p| (p.start, p.end)).collect();
        assert_eq!(bounds, [(30.0, 31.0), (31.0, 32.0)]);
        assert!(!split.single_timestamp_ending);
        assert_eq!(split.advance, 200);

        // <|0.00|> a <|1.00|>: single timestamp ending, the window is consumed.
        let split = split_by_timestamps(&[B, 1, B + 50], B, 0.0, 2500, 25.0);
        assert!(split.single_timestamp_ending);
        assert_eq!((split.pieces.len(), split.advance), (1, 2500));
        assert_eq!(split.pieces[0].end, 1.0);

        // No pair: one piece to the last timestamp.
        let split = split_by_timestamps(&[B, 1, 2], B, 0.0, 3000, 30.0);
        assert_eq!((split.pieces[0].end, split.advance), (30.0, 3000));
    }

    #[test]
    fn compression_ratio_of_repetition() {
        let repeated = "the same words again and again, ".repeat(20);
        assert!(compression_ratio(&repeated) > 2.4);
        assert!(compression_ratio("The quick brown fox jumps over the lazy dog.") < 2.4);
    }
}
