//! Pillow's bicubic and bilinear resizes of 8-bit RGB, to the bit: the classifiers' reference preprocessors
//! (transformers' image processors) resize with Pillow, and the models were trained on its
//! output. Pillow computes each output pixel as a weighted sum of the source pixels under the
//! filter, the filter widened by the scale when reducing (so it averages rather than skips),
//! with weights rounded to 22-bit fixed point and each pass (horizontal, then vertical) rounded
//! back to 8 bits. General-purpose resizers (fast_image_resize follows Pillow-SIMD's 16-bit
//! weights) land one level off on about a fifth of the pixels, so this follows Pillow's
//! `Resample.c` instead.

use image::RgbImage;

/// Fixed-point fraction bits of the weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's resampling filters that the reference preprocessors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (a triangle).
    Bilinear,
    /// `Image.BICUBIC` (`a = -0.5`, Catmull-Rom).
    Bicubic,
}

impl Filter {
    /// The filter's reach in source pixels, at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        const A: f64 = -0.5;
        let x = x.abs();
        match self {
            Filter::Bilinear if x < 1.0 => 1.0 - x,
            Filter::Bicubic if x < 1.0 => ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0,
            Filter::Bicubic if x < 2.0 => (((x - 5.0) * x + 8.0) * x - 4.0) * A,
            _ => 0.0,
        }
    }
}

/// For each output position: the first source index and the fixed-point weights from there.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc` for `in_size` → `out_size`.
fn taps(filter: Filter, in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    (0..out_size)
        .map(|out| {
            let center = (out as f64 + 0.5) * scale;
            // Pillow rounds by adding 0.5 and truncating toward zero (C's int cast).
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (first..end)
                .map(|x| filter.weight((x as f64 - center + 0.5) / filter_scale))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| {
                    let w = if total == 0.0 { *w } else { w / total };
                    let fixed = w * f64::from(1u32 << PRECISION_BITS);
                    (if w < 0.0 { fixed - 0.5 } else { fixed + 0.5 }) as i32
                })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// Pillow's `clip8`: a fixed-point sum back to 0..=255.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass along rows (`horizontal`) or columns of an interleaved RGB buffer.
fn pass(
    filter: Filter,
    source: &[u8],
    (width, height): (usize, usize),
    out_len: usize,
    horizontal: bool,
) -> Vec<u8> {
    let (out_width, out_height) = if horizontal {
        (out_len, height)
    } else {
        (width, out_len)
    };
    let taps = taps(filter, if horizontal { width } else { height }, out_len);
    let mut out = vec![0u8; out_width * out_height * 3];
    for y in 0..out_height {
        for x in 0..out_width {
            let tap = &taps[if horizontal { x } else { y }];
            let mut sums = [1i32 << (PRECISION_BITS - 1); 3];
            for (i, weight) in tap.weights.iter().enumerate() {
                let (sx, sy) = if horizontal {
                    (tap.first + i, y)
                } else {
                    (x, tap.first + i)
                };
                let pixel = &source[(sy * width + sx) * 3..][..3];
                for channel in 0..3 {
                    sums[channel] += i32::from(pixel[channel]) * weight;
                }
            }
            let at = (y * out_width + x) * 3;
            for channel in 0..3 {
                out[at + channel] = clip8(sums[channel]);
            }
        }
    }
    out
}

/// `image.resize((width, height), filter)` as Pillow computes it.
pub fn resize(image: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_width, in_height) = (image.width() as usize, image.height() as usize);
    let mut pixels = image.as_raw().clone();
    // Pillow skips a pass whose size does not change.
    if width as usize != in_width {
        pixels = pass(filter, &pixels, (in_width, in_height), width as usize, true);
    }
    if height as usize != in_height {
        pixels = pass(
            filter,
            &pixels,
            (width as usize, in_height),
            height as usize,
            false,
        );
    }
    RgbImage::from_raw(width, height, pixels).expect("the buffer has width × height pixels")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_a_flat_image_stays_flat() {
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (from, to) in [(240, 256), (450, 384), (7, 3), (3, 7)] {
                for tap in taps(filter, from, to) {
                    let total: i64 = tap.weights.iter().map(|&w| i64::from(w)).sum();
                    assert!((total - (1 << PRECISION_BITS)).abs() <= tap.weights.len() as i64);
                }
            }
            let flat = RgbImage::from_pixel(45, 30, image::Rgb([200, 7, 90]));
            let resized = resize(&flat, 38, 25, filter);
            assert!(resized.pixels().all(|p| p.0 == [200, 7, 90]));
        }
    }
}
