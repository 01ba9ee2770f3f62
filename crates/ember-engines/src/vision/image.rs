//! Images in: decoding uploaded bytes (png, jpeg, webp, gif's first frame, bmp) to RGB with their
//! EXIF orientation applied, within limits checked before any pixel is allocated, and the
//! models' preprocessing: transformers' image processors with Pillow's filters (`resample`),
//! ConvNext's for the classifiers (shortest edge 256, bicubic, a centred 224×224 crop) and DETR's
//! (shortest edge 800, longest at most 1333, bilinear), then per-channel normalisation.

use super::resample::{Filter, resize};
use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// Largest width or height accepted. Larger headers are refused before decoding, so a small file
/// declaring 20000×20000 pixels costs nothing.
pub const MAX_SIDE: u32 = 8192;
/// Smallest width or height accepted: below this an image carries nothing to classify.
pub const MIN_SIDE: u32 = 8;
/// Most memory one decode may allocate.
const MAX_DECODE_BYTES: u64 = 512 << 20;

/// Why uploaded bytes are not a usable image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("is not an image in a supported format (png, jpeg, webp, gif, bmp)")]
    UnknownFormat,
    #[error("is {width}×{height} pixels; images may be at most {MAX_SIDE} pixels on a side")]
    TooLarge { width: u32, height: u32 },
    #[error("is {width}×{height} pixels; images must be at least {MIN_SIDE} pixels on a side")]
    TooSmall { width: u32, height: u32 },
    #[error("could not be decoded: {0}")]
    Corrupt(String),
}

/// Decodes `bytes` to 8-bit RGB, displayed the way its EXIF orientation says.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, ImageError> {
    let corrupt = |e: image::ImageError| ImageError::Corrupt(e.to_string());
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ImageError::UnknownFormat);
    }
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_size(width, height)?;
    let orientation = decoder.orientation().map_err(corrupt)?;
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    decoder.set_limits(limits).map_err(corrupt)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

fn check_size(width: u32, height: u32) -> Result<(), ImageError> {
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(ImageError::TooLarge { width, height });
    }
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(ImageError::TooSmall { width, height });
    }
    Ok(())
}

/// How a model's image processor sizes its input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resize {
    /// transformers' ConvNextImageProcessor (classifiers): the shortest edge to `shortest`
    /// (bicubic; the long edge truncated as transformers does), then the centre `crop`×`crop`.
    ShortestThenCrop { shortest: u32, crop: u32 },
    /// transformers' DetrImageProcessor: the shortest edge to `shortest` unless the longest edge
    /// would then pass `longest`, in which case the longest to `longest` (bilinear); no crop.
    Within { shortest: u32, longest: u32 },
}

/// A model's input preparation: the resize, then scaling to 0..1 and normalising each channel
/// with `mean` and `std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub resize: Resize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// The `1×3×height×width` pixel tensor for `image`.
    pub fn pixels(&self, image: &RgbImage) -> anyhow::Result<Tensor> {
        let (width, height) = image.dimensions();
        let (resized, crop) = match self.resize {
            Resize::ShortestThenCrop { shortest, crop } => {
                let (short, long) = (width.min(height), width.max(height));
                // transformers: int(size * long / short), in floating point.
                let long = (f64::from(shortest) * f64::from(long) / f64::from(short)) as u32;
                let (w, h) = if width <= height {
                    (shortest, long)
                } else {
                    (long, shortest)
                };
                anyhow::ensure!(
                    w >= crop && h >= crop,
                    "the resized image is smaller than the crop"
                );
                let resized = resize(image, w, h, Filter::Bicubic);
                // The centre, rounding the offsets down.
                (resized, ((w - crop) / 2, (h - crop) / 2, crop, crop))
            }
            Resize::Within { shortest, longest } => {
                let (h, w) = size_within(height, width, shortest, longest);
                (resize(image, w, h, Filter::Bilinear), (0, 0, w, h))
            }
        };
        let [left, top, crop_width, crop_height] =
            [crop.0, crop.1, crop.2, crop.3].map(|n| n as usize);
        let row_bytes = resized.width() as usize * 3;
        let buffer = resized.as_raw();
        let plane = crop_width * crop_height;
        let mut planar = vec![0f32; 3 * plane];
        for y in 0..crop_height {
            let row = &buffer[(top + y) * row_bytes + left * 3..][..crop_width * 3];
            for (x, rgb) in row.chunks_exact(3).enumerate() {
                for channel in 0..3 {
                    let value = f32::from(rgb[channel]) / 255.0;
                    planar[channel * plane + y * crop_width + x] =
                        (value - self.mean[channel]) / self.std[channel];
                }
            }
        }
        Ok(Tensor::from_vec(
            planar,
            (1, 3, crop_height, crop_width),
            &Device::Cpu,
        )?)
    }
}

/// transformers' `get_size_with_aspect_ratio`: `(height, width)` resized so the shortest edge is
/// `size`, unless the longest would pass `max_size`.
fn size_within(height: u32, width: u32, size: u32, max_size: u32) -> (u32, u32) {
    let (h, w) = (f64::from(height), f64::from(width));
    let (short, long) = (h.min(w), h.max(w));
    let mut size = size;
    let mut raw_size = None;
    if long / short * f64::from(size) > f64::from(max_size) {
        let raw = f64::from(max_size) * short / long;
        // Python's round: half to even.
        size = raw.round_ties_even() as u32;
        raw_size = Some(raw);
    }
    let scaled = |numerator: f64, denominator: f64| match raw_size {
        Some(raw) => (raw * numerator / denominator) as u32,
        None => (f64::from(size) * numerator / denominator) as u32,
    };
    if (height <= width && height == size) || (width <= height && width == size) {
        (height, width)
    } else if width < height {
        (scaled(h, w), size)
    } else {
        (size, scaled(w, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb};

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = RgbImage::from_pixel(width, height, Rgb([10, 20, 30]));
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    #[test]
    fn decodes_and_checks_sizes() {
        assert_eq!(decode_rgb(&png(16, 9)).unwrap().dimensions(), (16, 9));
        assert!(matches!(
            decode_rgb(&png(1, 1)),
            Err(ImageError::TooSmall { .. })
        ));
        assert!(matches!(
            decode_rgb(b"not an image at all"),
            Err(ImageError::UnknownFormat)
        ));
        let mut truncated = png(64, 64);
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            decode_rgb(&truncated),
            Err(ImageError::Corrupt(_))
        ));
    }

    /// A PNG whose header declares 20000×20000 pixels (with valid CRCs) is refused from its
    /// header: nothing near its 1.2 GB of pixels is allocated.
    #[test]
    fn refuses_header_bombs() {
        let mut bytes = png(8, 8);
        // IHDR's data starts at byte 16: width, height (big-endian), then its CRC at 29.
        bytes[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            decode_rgb(&bytes),
            Err(ImageError::TooLarge {
                width: 20_000,
                height: 20_000
            })
        ));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        crc.sum()
    }

    #[test]
    fn detr_sizes_follow_transformers() {
        assert_eq!(size_within(240, 360, 800, 1333), (800, 1200));
        assert_eq!(size_within(320, 320, 800, 1333), (800, 800));
        // Too long at 800: the long edge becomes 1333.
        assert_eq!(size_within(100, 400, 800, 1333), (333, 1333));
        assert_eq!(size_within(800, 500, 800, 1333), (1280, 800));
    }

    #[test]
    fn preprocessing_shapes_and_normalises() {
        let image = RgbImage::from_pixel(300, 200, Rgb([255, 0, 51]));
        let preprocess = Preprocess {
            resize: Resize::ShortestThenCrop {
                shortest: 256,
                crop: 224,
            },
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let pixels = preprocess.pixels(&image).unwrap();
        assert_eq!(pixels.dims(), &[1, 3, 224, 224]);
        let values = pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((values[0] - 1.0).abs() < 1e-6);
        assert!((values[224 * 224] + 1.0).abs() < 1e-6);
        assert!((values[2 * 224 * 224] + 0.6).abs() < 1e-6);
    }
}
