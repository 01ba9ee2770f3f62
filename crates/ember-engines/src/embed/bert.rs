//! BERT-family sentence encoders (all-MiniLM-L6-v2, BGE) on `candle_transformers::models::bert`.
//!
//! BERT: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language
//! Understanding" (<https://arxiv.org/abs/1810.04805>); the candle port follows Hugging Face
//! transformers' `modeling_bert.py`. Token type ids are all 0 (single sentences).

use super::{Encoder, load_safetensors};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::Path;

pub struct Bert {
    model: BertModel,
    max_positions: usize,
    pad_id: u32,
}

impl Bert {
    /// Loads `config.json` and `model.safetensors` from the model folder.
    pub fn load(dir: &Path) -> Result<Bert, String> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| format!("cannot read {}: {e}", config_path.display()))?;
        let config: Config =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", config_path.display()))?;
        let tensors = load_safetensors(&dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = BertModel::load(vb, &config).map_err(|e| format!("model.safetensors: {e}"))?;
        Ok(Bert {
            model,
            max_positions: config.max_position_embeddings,
            pad_id: config.pad_token_id as u32,
        })
    }
}

impl Encoder for Bert {
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> candle_core::Result<Tensor> {
        let token_type_ids = input_ids.zeros_like()?;
        self.model
            .forward(input_ids, &token_type_ids, Some(attention_mask))
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn pad_id(&self) -> u32 {
        self.pad_id
    }
}
