//! Text-to-image (`@cf/lykon/dreamshaper-8-lcm`, `@cf/runwayml/stable-diffusion-v1-5-img2img`,
//! ...): a prompt (and, for image-to-image, a starting image) in, a PNG out. Charged per 512×512
//! tile of the image and per denoising step, as Workers AI prices FLUX.1 schnell.

use super::{TaskInfo, Usage};

pub const INFO: TaskInfo = TaskInfo {
    name: "Text-to-Image",
    uuid: "3d6e1f35-341b-4915-a6c8-9a7142a9033a",
    requests_per_minute: 720,
    description: "Generates images from input text. These models can be used to generate and modify images based on text prompts.",
};

/// Longest prompt accepted, in characters (FLUX.1 schnell's limit).
pub const MAX_PROMPT_CHARS: usize = 2048;
/// Smallest and largest image side, in pixels; sides are multiples of `SIDE_MULTIPLE`.
pub const MIN_SIDE: u32 = 256;
pub const MAX_SIDE: u32 = 2048;
pub const SIDE_MULTIPLE: u32 = 8;
/// Most denoising steps a request may ask for.
pub const MAX_STEPS: u32 = 20;
/// Steps when the request names none.
pub const DEFAULT_STEPS: u32 = 20;
pub const DEFAULT_GUIDANCE: f32 = 7.5;

pub fn usage(output: &TextToImageOutput) -> Usage {
    let images = output.pngs.len() as u32;
    Usage {
        tiles: tiles(output.width, output.height) * images,
        steps: output.steps * images,
        ..Usage::new(0, 0)
    }
}

pub fn most_usage(request: &TextToImageRequest, _input_bytes: u32) -> Usage {
    let tiles = tiles(
        request.width.unwrap_or(MAX_SIDE),
        request.height.unwrap_or(MAX_SIDE),
    );
    Usage {
        tiles: tiles * request.count,
        steps: request.steps.unwrap_or(MAX_STEPS) * request.count,
        ..Usage::new(0, 0)
    }
}

/// 512×512 tiles an image of `width`×`height` covers, partial tiles counted whole.
pub fn tiles(width: u32, height: u32) -> u32 {
    width.div_ceil(512) * height.div_ceil(512)
}

/// Most images one request may ask for (OpenAI's `n`).
pub const MAX_IMAGES: u32 = 10;

#[derive(Debug, Clone, PartialEq)]
pub struct TextToImageRequest {
    pub prompt: String,
    /// What the image should not show (classifier-free guidance pushes away from it).
    pub negative_prompt: Option<String>,
    /// Pixels; `None`: the model's native size (or the starting image's).
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Denoising steps; `None`: `DEFAULT_STEPS`.
    pub steps: Option<u32>,
    /// Classifier-free guidance scale; at most 1 turns guidance off.
    pub guidance: f32,
    /// Image-to-image: how much of the schedule runs over the noised starting image (1: all of
    /// it, the image is only a starting point; near 0: little changes).
    pub strength: f32,
    /// `None`: a random seed.
    pub seed: Option<u64>,
    /// Image-to-image and inpainting: the encoded starting image.
    pub image: Option<Vec<u8>>,
    /// Inpainting: the encoded mask; white is repainted, black kept.
    pub mask: Option<Vec<u8>>,
    /// Images to generate (1 to `MAX_IMAGES`), each from the next seed.
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextToImageOutput {
    /// One PNG per image asked for.
    pub pngs: Vec<Vec<u8>>,
    pub width: u32,
    pub height: u32,
    /// Denoising steps run for each image.
    pub steps: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Price;

    #[test]
    fn priced_per_tile_and_step() {
        assert_eq!(tiles(256, 256), 1);
        assert_eq!(tiles(512, 512), 1);
        assert_eq!(tiles(520, 512), 2);
        assert_eq!(tiles(1024, 1024), 4);
        let flux = Price {
            neurons_per_tile: 4.8,
            neurons_per_step: 9.6,
            ..Price::default()
        };
        let output = TextToImageOutput {
            pngs: vec![vec![], vec![]],
            width: 1024,
            height: 512,
            steps: 4,
        };
        // Two images of two tiles and four steps each.
        assert!((flux.neurons(&usage(&output)) - (4.0 * 4.8 + 8.0 * 9.6)).abs() < 1e-9);
    }
}
