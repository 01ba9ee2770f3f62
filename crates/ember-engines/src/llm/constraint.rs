//! Constrained decoding with llguidance: JSON Schema and tool-call grammars compiled against the
//! model's own vocabulary, and the token mask they put on a sequence's sampling. Output under a
//! constraint always parses: tokens that would break the grammar get no probability.

use ember_core::tools::ToolDefinition;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};

/// How the compiled JSON is spaced: fixed `", "` and `": "` (what models saw in training, and
/// no room for a small model to wander into endless whitespace).
fn json_options() -> Value {
    json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " })
}

/// Compiles grammars for one model. The vocabulary trie is built on first use, not at load.
pub struct Grammars {
    model: Arc<LlamaModel>,
    factory: OnceLock<Result<ParserFactory, String>>,
}

impl Grammars {
    pub fn new(model: Arc<LlamaModel>) -> Grammars {
        Grammars {
            model,
            factory: OnceLock::new(),
        }
    }

    fn factory(&self) -> Result<&ParserFactory, String> {
        self.factory
            .get_or_init(|| {
                let env: TokEnv = Arc::new(LlamaTokenizer::new(self.model.clone()));
                ParserFactory::new_simple(&env)
                    .map(|mut factory| {
                        factory.quiet();
                        factory
                    })
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Output that is JSON valid under `schema`.
    pub fn json(&self, schema: &Value) -> Result<Constraint, String> {
        let mut schema = schema.clone();
        if let Value::Object(object) = &mut schema {
            object.insert("x-guidance".into(), json_options());
        }
        self.compile(TopLevelGrammar::from_json_schema(schema))
    }

    /// The JSON object of one call in the Hermes/Qwen format,
    /// `{"name": "<tool>", "arguments": <object valid under the tool's parameters>}`.
    pub fn tool_call(&self, tools: &[&ToolDefinition]) -> Result<Constraint, String> {
        // The model may break the line after `<tool_call>` before the JSON, as templates show.
        let mut lark = String::from("start: call | \"\\n\" call\ncall: ");
        lark.push_str(
            &(0..tools.len())
                .map(|i| format!("call_{i}"))
                .collect::<Vec<_>>()
                .join(" | "),
        );
        lark.push('\n');
        for (i, tool) in tools.iter().enumerate() {
            let mut schema = tool.parameters.clone();
            if let Value::Object(object) = &mut schema {
                object.insert("x-guidance".into(), json_options());
            }
            // Tool names are letters, digits, '_' and '-', so they need no escaping.
            lark.push_str(&format!(
                "call_{i}: \"{{\\\"name\\\": \\\"{}\\\", \\\"arguments\\\": \" args_{i} \"}}\"\nargs_{i}: %json {schema}\n",
                tool.name
            ));
        }
        self.compile(TopLevelGrammar::from_lark(lark))
    }

    fn compile(&self, grammar: TopLevelGrammar) -> Result<Constraint, String> {
        let parser = self
            .factory()?
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        Ok(Constraint {
            matcher: Matcher::new(Ok(parser)),
        })
    }
}

/// One sequence's grammar state.
pub struct Constraint {
    matcher: Matcher,
}

impl Constraint {
    /// Copies `logits` into `masked` with every token the grammar forbids at -inf.
    pub fn mask(&mut self, logits: &[f32], masked: &mut Vec<f32>) -> Result<(), String> {
        // A finished grammar allows only the end of generation.
        let allowed = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| e.to_string())?;
        masked.clear();
        masked.extend(logits.iter().enumerate().map(|(token, &logit)| {
            if allowed.is_allowed(token as TokenId) {
                logit
            } else {
                f32::NEG_INFINITY
            }
        }));
        Ok(())
    }

    pub fn accept(&mut self, token: i32) -> Result<(), String> {
        self.matcher
            .consume_token(token as TokenId)
            .map_err(|e| e.to_string())
    }

    /// Whether the output so far is a complete sentence of the grammar.
    pub fn complete(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Back to the start, for the next call of a parallel tool-call response.
    pub fn reset(&mut self) -> Result<(), String> {
        self.matcher.reset().map_err(|e| e.to_string())
    }
}

/// llguidance's view of a llama.cpp vocabulary: every token's bytes, control tokens marked
/// with 0xFF so that grammars never produce them as text.
struct LlamaTokenizer {
    model: Arc<LlamaModel>,
    trie: TokTrie,
}

impl LlamaTokenizer {
    fn new(model: Arc<LlamaModel>) -> LlamaTokenizer {
        let vocab = model.vocab();
        let n_vocab = model.n_vocab().max(0) as u32;
        let words: Vec<Vec<u8>> = (0..n_vocab as i32)
            .map(|id| {
                let token = LlamaToken(id);
                let text = vocab.token_to_piece(token, false, None);
                // Control tokens, and the padding ids past the real vocabulary (no text), must
                // never be allowed as text: an empty word would fit any grammar state.
                if vocab.is_control(token) || vocab.is_eog(token) || text.is_empty() {
                    let mut word = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    word.extend(format!("<[{id}]>").bytes());
                    word
                } else {
                    text
                }
            })
            .collect();
        let info = TokRxInfo::new(n_vocab, vocab.eos().0 as TokenId);
        let trie = TokTrie::from(&info, &words);
        LlamaTokenizer { model, trie }
    }
}

impl TokenizerEnv for LlamaTokenizer {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        self.model
            .vocab()
            .tokenize(s, false, false)
            .into_iter()
            .map(|t| t.0 as TokenId)
            .collect()
    }
}
