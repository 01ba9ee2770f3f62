//! The audio Whisper hears with `vad_filter`, and the way back: faster-whisper's `collect_chunks`
//! (the speech chunks joined, silence dropped) and `restore_speech_timestamps` (segment and word
//! times moved from the joined audio back to the original by the silence removed before them).

use super::Segment;
use super::align::round2;
use super::vad::SpeechChunk;

const SAMPLE_RATE: f64 = super::mel::SAMPLE_RATE as f64;

/// The samples of the chunks, one after the other (none for no chunks).
pub(super) fn collect(samples: &[f32], chunks: &[SpeechChunk]) -> Vec<f32> {
    chunks
        .iter()
        .flat_map(|c| &samples[c.start..c.end])
        .copied()
        .collect()
}

/// faster-whisper's `SpeechTimestampsMap`: where each chunk ends in the joined audio, and the
/// silence removed before it.
struct TimestampsMap {
    /// Samples, in the joined audio.
    chunk_end: Vec<usize>,
    /// Seconds.
    silence_before: Vec<f64>,
}

impl TimestampsMap {
    fn new(chunks: &[SpeechChunk]) -> TimestampsMap {
        let (mut previous_end, mut silent) = (0, 0);
        let mut map = TimestampsMap {
            chunk_end: Vec::with_capacity(chunks.len()),
            silence_before: Vec::with_capacity(chunks.len()),
        };
        for chunk in chunks {
            silent += chunk.start - previous_end;
            previous_end = chunk.end;
            map.chunk_end.push(chunk.end - silent);
            map.silence_before.push(silent as f64 / SAMPLE_RATE);
        }
        map
    }

    /// The chunk a time of the joined audio falls in: the first ending after it (the last for
    /// times past the end); an end time exactly at a chunk's end belongs to that chunk.
    fn chunk_index(&self, time: f64, is_end: bool) -> usize {
        // Python's `int(time * sampling_rate)`.
        let sample = (time * SAMPLE_RATE) as usize;
        if is_end && let Some(index) = self.chunk_end.iter().position(|&end| end == sample) {
            return index;
        }
        self.chunk_end
            .partition_point(|&end| end <= sample)
            .min(self.chunk_end.len() - 1)
    }

    fn original_time(&self, time: f64, chunk: usize) -> f64 {
        round2(self.silence_before[chunk] + time)
    }
}

/// Moves the times of segments transcribed from `collect`'s audio back onto the original audio.
/// A word's start and end move by the chunk of its middle, and a segment with words spans them;
/// a segment without words moves its start and end by their own chunks. No-op without chunks.
pub(super) fn restore(segments: &mut [Segment], chunks: &[SpeechChunk]) {
    if chunks.is_empty() {
        return;
    }
    let map = TimestampsMap::new(chunks);
    for segment in segments {
        for word in &mut segment.words {
            let chunk = map.chunk_index((word.start + word.end) / 2.0, false);
            word.start = map.original_time(word.start, chunk);
            word.end = map.original_time(word.end, chunk);
        }
        match (segment.words.first(), segment.words.last()) {
            (Some(first), Some(last)) => (segment.start, segment.end) = (first.start, last.end),
            _ => {
                let start = map.chunk_index(segment.start, false);
                let end = map.chunk_index(segment.end, true);
                segment.start = map.original_time(segment.start, start);
                segment.end = map.original_time(segment.end, end);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whisper::Word;

    fn chunk(start: f64, end: f64) -> SpeechChunk {
        let sample = |s: f64| (s * SAMPLE_RATE) as usize;
        SpeechChunk {
            start: sample(start),
            end: sample(end),
        }
    }

    fn segment(start: f64, end: f64, words: &[(f64, f64)]) -> Segment {
        Segment {
            start,
            end,
            text: String::new(),
            tokens: Vec::new(),
            temperature: 0.0,
            avg_logprob: 0.0,
            compression_ratio: 0.0,
            no_speech_prob: 0.0,
            words: words
                .iter()
                .map(|&(start, end)| Word {
                    word: String::new(),
                    start,
                    end,
                    probability: 1.0,
                })
                .collect(),
        }
    }

    #[test]
    fn collects_the_chunks() {
        let samples: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let chunks = [
            SpeechChunk { start: 1, end: 3 },
            SpeechChunk { start: 6, end: 8 },
        ];
        assert_eq!(collect(&samples, &chunks), [1.0, 2.0, 6.0, 7.0]);
        assert!(collect(&samples, &[]).is_empty());
    }

    #[test]
    fn times_move_back_by_the_silence_before_their_chunk() {
        // Speech at 1-3 s and 6-8 s: joined, 0-2 s and 2-4 s; 1 s removed before the first
        // chunk, 4 s before the second.
        let chunks = [chunk(1.0, 3.0), chunk(6.0, 8.0)];
        let mut segments = [
            // Words: the one across the joint goes by its middle (2.1 s: the second chunk).
            segment(0.5, 2.6, &[(0.5, 1.2), (1.9, 2.3), (2.4, 2.6)]),
            // No words: the start by its own chunk, an end exactly at a chunk's end stays in it.
            segment(1.5, 2.0, &[]),
        ];
        restore(&mut segments, &chunks);
        let words: Vec<(f64, f64)> = segments[0].words.iter().map(|w| (w.start, w.end)).collect();
        assert_eq!(words, [(1.5, 2.2), (5.9, 6.3), (6.4, 6.6)]);
        assert_eq!((segments[0].start, segments[0].end), (1.5, 6.6));
        assert_eq!((segments[1].start, segments[1].end), (2.5, 3.0));
        // Past the end: the last chunk.
        assert_eq!(TimestampsMap::new(&chunks).chunk_index(9.0, false), 1);
    }
}
