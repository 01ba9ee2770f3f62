//! Translation (`@cf/meta/m2m100-1.2b`): texts with their source and target languages in, their
//! translations out. Languages are ISO 639-1 codes; a model's catalog property `languages` says
//! which it translates, and Workers AI also accepts the English names listed here.

use super::{TEMPLATE_TOKENS, TaskInfo, Usage};
use crate::catalog::ModelSpec;

pub const INFO: TaskInfo = TaskInfo {
    name: "Translation",
    uuid: "f57d07cb-9087-487a-bbbf-bc3e17fecc4b",
    requests_per_minute: 720,
    description: "Translation models convert a sequence of text from one language to another.",
};

pub fn usage(output: &TranslationOutput) -> Usage {
    output.usage
}

/// Each text is prompted on its own, so each has its template; a translation may be twice as long
/// as its source.
pub fn most_usage(request: &TranslationRequest, input_bytes: u32) -> Usage {
    let texts = u32::try_from(request.items.len()).unwrap_or(u32::MAX);
    Usage::new(
        input_bytes.saturating_add(TEMPLATE_TOKENS.saturating_mul(texts)),
        input_bytes
            .saturating_mul(2)
            .saturating_add(32u32.saturating_mul(texts)),
    )
}

/// Most texts in one `requests` batch.
pub const MAX_REQUESTS: usize = 100;

/// The languages Workers AI lists for m2m100, by name, with their ISO 639-1 codes.
pub const NAMED_LANGUAGES: [(&str, &str); 10] = [
    ("english", "en"),
    ("chinese", "zh"),
    ("french", "fr"),
    ("spanish", "es"),
    ("arabic", "ar"),
    ("russian", "ru"),
    ("german", "de"),
    ("japanese", "ja"),
    ("portuguese", "pt"),
    ("hindi", "hi"),
];

/// One text to translate; languages as ISO 639-1 codes.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslationItem {
    pub text: String,
    pub source_lang: String,
    pub target_lang: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TranslationRequest {
    pub items: Vec<TranslationItem>,
    /// The caller sent `{requests: [...]}` and gets an array back.
    pub batch: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TranslationOutput {
    /// One translation per item, in order.
    pub texts: Vec<String>,
    pub batch: bool,
    pub usage: Usage,
}

/// The English name of a language code, for models that are told the language in words.
pub fn language_name(code: &str) -> Option<&'static str> {
    NAMED_LANGUAGES
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(name, _)| *name)
}

/// Most tokens a translation of `text` may take: twice its bytes plus a little, as no supported
/// language pair needs more tokens than the source has bytes twice over.
pub fn most_tokens_for(text: &str) -> u32 {
    u32::try_from(text.len())
        .unwrap_or(u32::MAX)
        .saturating_mul(2)
        .saturating_add(32)
}

/// The language codes `spec` translates: its `languages` property (comma-separated), or the
/// named languages when it has none.
pub fn supported_languages(spec: &ModelSpec) -> Vec<&str> {
    match spec.properties.get("languages") {
        Some(list) => list.split(',').map(str::trim).collect(),
        None => NAMED_LANGUAGES.iter().map(|(_, code)| *code).collect(),
    }
}
