//! Images in prompts, through llama.cpp's multimodal library (mtmd): the image encoder and
//! projector (`mmproj.gguf`, beside `model.gguf`), chat messages' image parts put in the prompt
//! as mtmd's media marker, and the prompt cut into text and image chunks, which the scheduler
//! evaluates for a sequence when it admits it.

use ember_core::InferError;
use ember_core::tasks::{ChatMessage, ImagePart};
use image::ImageFormat;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{
    MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunkType, MtmdInputChunks, MtmdInputText,
    mtmd_default_marker,
};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// The image encoder's file in a model's folder.
pub(crate) const PROJECTOR_FILE: &str = "mmproj.gguf";

/// What an image position holds among a prompt's token ids: no token (negative, so the sampler
/// does not penalise it; the scheduler never decodes these ids, and keeps sequences with images
/// out of the prefix cache).
const IMAGE_POSITION: i32 = -1;

/// A model's image encoder. Tokenizing (which preprocesses the images) and evaluating take
/// turns: llama.cpp allows no evaluation beside anything else on one mtmd context.
pub(crate) struct Vision {
    context: Mutex<MtmdContext>,
}

/// A prompt with images: its chunks, and one id per position (`IMAGE_POSITION` for images).
pub(crate) struct ImagePrompt {
    pub chunks: MtmdInputChunks,
    pub tokens: Vec<i32>,
}

impl Vision {
    /// The encoder in `dir`, if the model has one.
    pub fn load(dir: &Path, model: &LlamaModel, threads: i32) -> Result<Option<Vision>, String> {
        let path = dir.join(PROJECTOR_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let params = MtmdContextParams {
            print_timings: false,
            n_threads: threads,
            ..MtmdContextParams::default()
        };
        let name = path.display().to_string();
        let context = MtmdContext::init_from_file(&name, model, &params)
            .map_err(|e| format!("{name}: {e}"))?;
        if !context.support_vision() {
            return Err(format!("{name} has no vision encoder"));
        }
        // Qwen2-VL's M-RoPE gives image tokens positions apart from their index, which the
        // scheduler's one position per token does not follow.
        if context.decode_use_mrope() {
            return Err(format!(
                "{name}: models with M-RoPE positions are not supported yet"
            ));
        }
        Ok(Some(Vision {
            context: Mutex::new(context),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, MtmdContext> {
        self.context.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts `text`, which holds one media marker per image, into chunks; decodes the images.
    pub fn prompt(
        &self,
        text: &str,
        images: &[&ImagePart],
        add_special: bool,
    ) -> Result<ImagePrompt, InferError> {
        let context = self.lock();
        let bitmaps = images
            .iter()
            .map(|image| {
                let unreadable = || {
                    InferError::invalid(
                        &image.at,
                        "is not an image the model can read (PNG, JPEG, GIF, BMP)",
                    )
                };
                // Checked first: on bytes it cannot decode, llama.cpp's helper tries them as
                // video by running `ffprobe`, which a request must never make it do.
                if !matches!(
                    image::guess_format(&image.bytes),
                    Ok(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::Bmp)
                ) {
                    return Err(unreadable());
                }
                MtmdBitmap::from_buffer(&context, &image.bytes, false).map_err(|_| unreadable())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bitmaps: Vec<&MtmdBitmap> = bitmaps.iter().collect();
        let input = MtmdInputText {
            text: text.to_string(),
            add_special,
            parse_special: true,
        };
        // mtmd reports any failure, the text's included, as an image preprocessing error.
        let chunks = context.tokenize(input, &bitmaps).map_err(|e| {
            InferError::invalid(
                "/messages",
                format!("could not be cut into text and image chunks: {e}"),
            )
        })?;
        let mut tokens = Vec::with_capacity(chunks.total_tokens());
        let mut last = None;
        for i in 0..chunks.len() {
            let chunk = chunks.get(i).expect("within the chunk count");
            last = Some(chunk.chunk_type());
            match chunk.text_tokens() {
                Some(text) => tokens.extend(text.iter().map(|t| t.0)),
                None => tokens.extend(std::iter::repeat_n(IMAGE_POSITION, chunk.n_tokens())),
            }
        }
        // The first output token comes from the last position's logits, which mtmd computes for
        // a text chunk only.
        if last != Some(MtmdInputChunkType::Text) {
            return Err(InferError::invalid(
                "/messages",
                "the prompt must not end with an image",
            ));
        }
        Ok(ImagePrompt { chunks, tokens })
    }

    /// Evaluates `chunks` as sequence `seq_id` from its first position, in batches of at most
    /// `n_batch` tokens; the context's last logits are then those of the prompt's last position.
    pub fn evaluate(
        &self,
        chunks: &MtmdInputChunks,
        ctx: &mut LlamaContext,
        seq_id: i32,
        n_batch: i32,
    ) -> Result<(), String> {
        let mut context = self.lock();
        chunks
            .eval_chunks(&mut context, ctx, 0, seq_id, n_batch, true)
            .map(|_| ())
            .map_err(|e| format!("evaluating the image prompt: {e}"))
    }
}

/// The messages with mtmd's media marker where each image stood in its message's text.
pub(crate) fn with_media_markers(messages: &[ChatMessage]) -> Vec<ChatMessage> {
    let marker = mtmd_default_marker();
    messages
        .iter()
        .map(|message| {
            let mut marked = message.clone();
            // From the last image back, so earlier offsets stay valid.
            for image in message.images.iter().rev() {
                marked.content.insert_str(image.text_offset, marker);
            }
            marked
        })
        .collect()
}

/// The images of `messages`, in prompt order.
pub(crate) fn images(messages: &[ChatMessage]) -> Vec<&ImagePart> {
    messages.iter().flat_map(|m| &m.images).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_go_where_the_images_stood() {
        let image = |text_offset| ImagePart {
            bytes: vec![1],
            text_offset,
            at: String::new(),
        };
        let mut message = ChatMessage::text("user", "What is this? And that?");
        message.images = vec![image(8), image(23)];
        let marked = with_media_markers(&[message]);
        assert_eq!(
            marked[0].content,
            "What is <__media__>this? And that?<__media__>"
        );
    }
}
