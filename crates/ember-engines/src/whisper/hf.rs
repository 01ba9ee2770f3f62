//! Hugging Face's Whisper layout (`openai/whisper-*`): `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), `config.json` and `generation_config.json`, renamed into
//! CTranslate2's names as its converter does: the self-attention's q, k and v projections fused
//! into one `linear_0` (k has no bias: zeros), the cross-attention's k and v into `linear_1`.

use super::weights::{Loaded, Weights};
use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(serde::Deserialize)]
struct Config {
    encoder_attention_heads: usize,
    decoder_attention_heads: usize,
    begin_suppress_tokens: Option<Vec<u32>>,
}

#[derive(serde::Deserialize, Default)]
struct GenerationConfig {
    alignment_heads: Option<Vec<(usize, usize)>>,
    lang_to_id: Option<BTreeMap<String, u32>>,
    begin_suppress_tokens: Option<Vec<u32>>,
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// Reads a Hugging Face Whisper folder.
pub(crate) fn load(dir: &Path) -> anyhow::Result<Loaded> {
    let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
        .context("config.json of the Hugging Face model")?;
    let generation: GenerationConfig = match std::fs::read(dir.join("generation_config.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).context("generation_config.json")?,
        Err(_) => GenerationConfig::default(),
    };
    let hf = read_safetensors(dir)?;
    let mut lang_ids: Option<Vec<u32>> = generation.lang_to_id.map(|m| m.into_values().collect());
    if let Some(ids) = &mut lang_ids {
        ids.sort_unstable();
    }
    Ok(Loaded {
        weights: Weights::new(rename(hf)?),
        encoder_heads: config.encoder_attention_heads,
        decoder_heads: config.decoder_attention_heads,
        alignment_heads: generation.alignment_heads,
        lang_ids,
        suppress_ids_begin: generation
            .begin_suppress_tokens
            .or(config.begin_suppress_tokens),
    })
}

fn read_safetensors(dir: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    let files: Vec<_> = if single.is_file() {
        vec![single]
    } else {
        let index = dir.join("model.safetensors.index.json");
        let index: ShardIndex = serde_json::from_slice(
            &std::fs::read(&index)
                .with_context(|| format!("no model.safetensors in {}", dir.display()))?,
        )?;
        let mut shards: Vec<_> = index.weight_map.into_values().collect();
        shards.sort();
        shards.dedup();
        shards.into_iter().map(|s| dir.join(s)).collect()
    };
    let mut tensors = HashMap::new();
    for file in files {
        let loaded = candle_core::safetensors::load(&file, &Device::Cpu)
            .with_context(|| format!("reading {}", file.display()))?;
        tensors.extend(loaded);
    }
    Ok(tensors)
}

/// Hugging Face names (with or without the `model.` prefix) → CTranslate2 names, as f32.
fn rename(hf: HashMap<String, Tensor>) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut hf: HashMap<String, Tensor> = hf
        .into_iter()
        .map(|(name, t)| {
            (
                name.strip_prefix("model.")
                    .map(str::to_string)
                    .unwrap_or(name),
                t,
            )
        })
        .collect();
    let layers = |side: &str| {
        (0..)
            .take_while(|i| hf.contains_key(&format!("{side}.layers.{i}.fc1.weight")))
            .count()
    };
    let (encoder_layers, decoder_layers) = (layers("encoder"), layers("decoder"));
    let mut take = |name: &str| -> anyhow::Result<Tensor> {
        let t = hf
            .remove(name)
            .with_context(|| format!("model.safetensors has no {name}"))?;
        Ok(t.to_dtype(DType::F32)?)
    };
    let mut out = HashMap::new();
    for conv in ["conv1", "conv2"] {
        for p in ["weight", "bias"] {
            out.insert(
                format!("encoder/{conv}/{p}"),
                take(&format!("encoder.{conv}.{p}"))?,
            );
        }
    }
    out.insert(
        "decoder/embeddings/weight".into(),
        take("decoder.embed_tokens.weight")?,
    );
    for (side, count) in [("encoder", encoder_layers), ("decoder", decoder_layers)] {
        out.insert(
            format!("{side}/position_encodings/encodings"),
            take(&format!("{side}.embed_positions.weight"))?,
        );
        norm(
            &mut out,
            &mut take,
            &format!("{side}.layer_norm"),
            &format!("{side}/layer_norm"),
        )?;
        for i in 0..count {
            let (hf_layer, layer) = (format!("{side}.layers.{i}"), format!("{side}/layer_{i}"));
            let blocks: &[(&str, &str, bool)] = if side == "encoder" {
                &[("self_attn", "self_attention", true)]
            } else {
                &[
                    ("self_attn", "self_attention", true),
                    ("encoder_attn", "attention", false),
                ]
            };
            for &(hf_block, block, is_self) in blocks {
                attention(
                    &mut out,
                    &mut take,
                    &format!("{hf_layer}.{hf_block}"),
                    &format!("{layer}/{block}"),
                    is_self,
                )?;
                norm(
                    &mut out,
                    &mut take,
                    &format!("{hf_layer}.{hf_block}_layer_norm"),
                    &format!("{layer}/{block}/layer_norm"),
                )?;
            }
            norm(
                &mut out,
                &mut take,
                &format!("{hf_layer}.final_layer_norm"),
                &format!("{layer}/ffn/layer_norm"),
            )?;
            for (hf_fc, ct2) in [("fc1", "linear_0"), ("fc2", "linear_1")] {
                for p in ["weight", "bias"] {
                    out.insert(
                        format!("{layer}/ffn/{ct2}/{p}"),
                        take(&format!("{hf_layer}.{hf_fc}.{p}"))?,
                    );
                }
            }
        }
    }
    Ok(out)
}

type Take<'a> = dyn FnMut(&str) -> anyhow::Result<Tensor> + 'a;

fn norm(
    out: &mut HashMap<String, Tensor>,
    take: &mut Take,
    hf: &str,
    ct2: &str,
) -> anyhow::Result<()> {
    out.insert(format!("{ct2}/gamma"), take(&format!("{hf}.weight"))?);
    out.insert(format!("{ct2}/beta"), take(&format!("{hf}.bias"))?);
    Ok(())
}

/// Self-attention: `linear_0` = [q; k; v], `linear_1` = out. Cross-attention: `linear_0` = q,
/// `linear_1` = [k; v], `linear_2` = out.
fn attention(
    out: &mut HashMap<String, Tensor>,
    take: &mut Take,
    hf: &str,
    ct2: &str,
    is_self: bool,
) -> anyhow::Result<()> {
    let q_w = take(&format!("{hf}.q_proj.weight"))?;
    let q_b = take(&format!("{hf}.q_proj.bias"))?;
    let k_w = take(&format!("{hf}.k_proj.weight"))?;
    let k_b = q_b.zeros_like()?;
    let v_w = take(&format!("{hf}.v_proj.weight"))?;
    let v_b = take(&format!("{hf}.v_proj.bias"))?;
    let kv_w = Tensor::cat(&[&k_w, &v_w], 0)?;
    let kv_b = Tensor::cat(&[&k_b, &v_b], 0)?;
    let out_name = if is_self { "linear_1" } else { "linear_2" };
    if is_self {
        out.insert(
            format!("{ct2}/linear_0/weight"),
            Tensor::cat(&[&q_w, &kv_w], 0)?,
        );
        out.insert(
            format!("{ct2}/linear_0/bias"),
            Tensor::cat(&[&q_b, &kv_b], 0)?,
        );
    } else {
        out.insert(format!("{ct2}/linear_0/weight"), q_w);
        out.insert(format!("{ct2}/linear_0/bias"), q_b);
        out.insert(format!("{ct2}/linear_1/weight"), kv_w);
        out.insert(format!("{ct2}/linear_1/bias"), kv_b);
    }
    out.insert(
        format!("{ct2}/{out_name}/weight"),
        take(&format!("{hf}.out_proj.weight"))?,
    );
    out.insert(
        format!("{ct2}/{out_name}/bias"),
        take(&format!("{hf}.out_proj.bias"))?,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whisper::model::Model;
    use candle_core::IndexOp;

    const D: usize = 8;
    const FFN: usize = 16;
    const MELS: usize = 4;
    const VOCAB: usize = 12;

    fn random(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    /// A one-layer Whisper in Hugging Face's names, as `WhisperForConditionalGeneration` saves it.
    fn toy_checkpoint() -> HashMap<String, Tensor> {
        let mut t = HashMap::new();
        let mut put = |name: &str, shape: &[usize]| {
            t.insert(format!("model.{name}"), random(shape));
        };
        put("encoder.conv1.weight", &[D, MELS, 3]);
        put("encoder.conv1.bias", &[D]);
        put("encoder.conv2.weight", &[D, D, 3]);
        put("encoder.conv2.bias", &[D]);
        put("encoder.embed_positions.weight", &[4, D]);
        put("decoder.embed_positions.weight", &[6, D]);
        put("decoder.embed_tokens.weight", &[VOCAB, D]);
        for side in ["encoder", "decoder"] {
            put(&format!("{side}.layer_norm.weight"), &[D]);
            put(&format!("{side}.layer_norm.bias"), &[D]);
            let mut blocks = vec!["self_attn"];
            if side == "decoder" {
                blocks.push("encoder_attn");
            }
            for block in blocks {
                for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    put(&format!("{side}.layers.0.{block}.{p}.weight"), &[D, D]);
                    if p != "k_proj" {
                        put(&format!("{side}.layers.0.{block}.{p}.bias"), &[D]);
                    }
                }
                put(&format!("{side}.layers.0.{block}_layer_norm.weight"), &[D]);
                put(&format!("{side}.layers.0.{block}_layer_norm.bias"), &[D]);
            }
            put(&format!("{side}.layers.0.fc1.weight"), &[FFN, D]);
            put(&format!("{side}.layers.0.fc1.bias"), &[FFN]);
            put(&format!("{side}.layers.0.fc2.weight"), &[D, FFN]);
            put(&format!("{side}.layers.0.fc2.bias"), &[D]);
            put(&format!("{side}.layers.0.final_layer_norm.weight"), &[D]);
            put(&format!("{side}.layers.0.final_layer_norm.bias"), &[D]);
        }
        t
    }

    fn same(a: &Tensor, b: &Tensor) -> bool {
        a.dims() == b.dims()
            && (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                == 0.0
    }

    #[test]
    fn fuses_projections_into_ct2_names() {
        let hf = toy_checkpoint();
        let get = |name: &str| hf[&format!("model.{name}")].clone();
        let ct2 = rename(hf.clone()).unwrap();
        // Self-attention: q, k, v rows in that order, k without bias.
        let qkv = &ct2["decoder/layer_0/self_attention/linear_0/weight"];
        assert!(same(
            &qkv.i(0..D).unwrap(),
            &get("decoder.layers.0.self_attn.q_proj.weight")
        ));
        assert!(same(
            &qkv.i(D..2 * D).unwrap(),
            &get("decoder.layers.0.self_attn.k_proj.weight")
        ));
        assert!(same(
            &qkv.i(2 * D..).unwrap(),
            &get("decoder.layers.0.self_attn.v_proj.weight")
        ));
        let bias = &ct2["encoder/layer_0/self_attention/linear_0/bias"];
        assert!(same(
            &bias.i(D..2 * D).unwrap(),
            &Tensor::zeros(D, DType::F32, &Device::Cpu).unwrap()
        ));
        assert!(same(
            &bias.i(2 * D..).unwrap(),
            &get("encoder.layers.0.self_attn.v_proj.bias")
        ));
        // Cross-attention: q alone, then [k; v], then the output.
        let cross = "decoder/layer_0/attention";
        assert!(same(
            &ct2[&format!("{cross}/linear_0/weight")],
            &get("decoder.layers.0.encoder_attn.q_proj.weight")
        ));
        assert!(same(
            &ct2[&format!("{cross}/linear_1/weight")].i(D..).unwrap(),
            &get("decoder.layers.0.encoder_attn.v_proj.weight")
        ));
        assert!(same(
            &ct2[&format!("{cross}/linear_2/bias")],
            &get("decoder.layers.0.encoder_attn.out_proj.bias")
        ));
        assert!(same(
            &ct2["decoder/layer_0/ffn/linear_1/weight"],
            &get("decoder.layers.0.fc2.weight")
        ));
        assert!(same(
            &ct2["encoder/layer_norm/gamma"],
            &get("encoder.layer_norm.weight")
        ));
        // Five attention tensors (q, k, v weights, q, v biases) become two per self-attention
        // and four per cross-attention: 7 fewer. The model builds and runs from them.
        assert_eq!(ct2.len(), hf.len() - 7);
        let model = Model::new(&mut Weights::new(ct2), 2, 2).unwrap();
        let cross = model.encode(&random(&[1, MELS, 8])).unwrap();
        let mut cache = model.new_cache();
        let (hidden, _) = model
            .decode(&[1, 2, 3], 1, &mut cache, &cross, &[])
            .unwrap();
        assert_eq!(model.logits(&hidden).unwrap().len(), 3);
    }

    #[test]
    fn loads_a_folder() {
        let dir = std::env::temp_dir().join(format!("ember-whisper-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        candle_core::safetensors::save(&toy_checkpoint(), dir.join("model.safetensors")).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"encoder_attention_heads": 2, "decoder_attention_heads": 2, "begin_suppress_tokens": [3, 11]}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("generation_config.json"),
            r#"{"alignment_heads": [[0, 1]], "lang_to_id": {"<|fr|>": 6, "<|en|>": 5}}"#,
        )
        .unwrap();
        let loaded = load(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((loaded.encoder_heads, loaded.decoder_heads), (2, 2));
        assert_eq!(loaded.alignment_heads, Some(vec![(0, 1)]));
        assert_eq!(loaded.lang_ids, Some(vec![5, 6]));
        assert_eq!(loaded.suppress_ids_begin, Some(vec![3, 11]));
        let mut weights = loaded.weights;
        assert!(weights.take("decoder/embeddings/weight").is_ok());
    }
}
