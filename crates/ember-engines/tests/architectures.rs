//! The candle classification and seq2seq engines against Hugging Face transformers, on tiny
//! random models: `tests/fixtures/architectures/{distilbert,reranker,bart,m2m100}/` hold a model
//! folder each (config.json, model.safetensors, tokenizer.json) and `reference.json`, written by
//! `scripts/reference/architectures.py` with transformers' own model classes.
//! `m2m100-sentencepiece/` holds a sentencepiece model and `vocab.json` in M2M100's Hub layout with
//! `M2M100Tokenizer`'s ids (`scripts/reference/m2m100_tokenizer.py`).
//!
//! Floats are compared element-wise by maximum absolute difference ([`TOLERANCE`]); token ids
//! (tokenization, truncation, greedy and beam-search generations) must match exactly. No network
//! and no model cache are needed.

use ember_core::InferError;
use ember_engines::encoders::{CrossEncoder, SequenceClassifier};
use ember_engines::seq2seq::{EarlyStopping, Seq2Seq};
use serde::Deserialize;
use std::path::PathBuf;

/// Largest absolute difference accepted between an Ember float and transformers' (f32 both; the
/// fixtures hold 7 significant digits).
const TOLERANCE: f32 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/architectures")
        .join(name)
}

fn reference<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = fixture_dir(name).join("reference.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest |a - b| over two equally long slices.
fn max_diff(what: &str, actual: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Asserts the slices agree within [`TOLERANCE`]; returns their max abs difference.
fn assert_close(what: &str, actual: &[f32], expected: &[f32]) -> f32 {
    let diff = max_diff(what, actual, expected);
    assert!(
        diff <= TOLERANCE,
        "{what}: max abs diff {diff:e} > {TOLERANCE:e}\n actual   {actual:?}\n expected {expected:?}"
    );
    diff
}

#[derive(Deserialize)]
struct ClassifierReference {
    labels: Vec<String>,
    cases: Vec<ClassifierCase>,
}

#[derive(Deserialize)]
struct ClassifierCase {
    text: String,
    input_ids: Vec<u32>,
    logits: Vec<f32>,
    probabilities: Vec<f32>,
}

#[test]
fn distilbert_matches_transformers() {
    let reference: ClassifierReference = reference("distilbert");
    let mut classifier = SequenceClassifier::load(&fixture_dir("distilbert")).unwrap();
    assert_eq!(classifier.labels(), reference.labels.as_slice());
    // All texts in one call: batching and padding must not change any result.
    let texts: Vec<String> = reference.cases.iter().map(|c| c.text.clone()).collect();
    let logits = classifier.logits(&texts).unwrap();
    let classified = classifier.classify(&texts).unwrap();
    let mut worst = 0f32;
    for ((case, (logits, tokens)), (probabilities, tokens_again)) in
        reference.cases.iter().zip(&logits).zip(&classified)
    {
        let what = format!("{:.30?}", case.text);
        assert_eq!(
            *tokens as usize,
            case.input_ids.len(),
            "{what}: token count"
        );
        assert_eq!(tokens, tokens_again);
        worst = worst
            .max(assert_close(
                &format!("{what} logits"),
                logits,
                &case.logits,
            ))
            .max(assert_close(
                &format!("{what} probabilities"),
                probabilities,
                &case.probabilities,
            ));
    }
    eprintln!("distilbert: max abs diff {worst:e}");
    // The long text is cut to the 64-position table.
    assert!(reference.cases.iter().any(|c| c.input_ids.len() == 64));
}

#[derive(Deserialize)]
struct RerankerReference {
    query: String,
    cases: Vec<RerankerCase>,
}

#[derive(Deserialize)]
struct RerankerCase {
    passage: String,
    input_ids: Vec<u32>,
    score: f32,
}

#[test]
fn cross_encoder_matches_transformers() {
    let reference: RerankerReference = reference("reranker");
    let mut encoder = CrossEncoder::load(&fixture_dir("reranker")).unwrap();
    let passages: Vec<String> = reference.cases.iter().map(|c| c.passage.clone()).collect();
    let (scores, tokens) = encoder.score(&reference.query, &passages).unwrap();
    let expected: Vec<f32> = reference.cases.iter().map(|c| c.score).collect();
    let worst = assert_close("scores", &scores, &expected);
    eprintln!("reranker: max abs diff {worst:e}");
    let expected_tokens: usize = reference.cases.iter().map(|c| c.input_ids.len()).sum();
    assert_eq!(tokens as usize, expected_tokens);
    // One passage at a time gives the same scores as the padded batch.
    for case in &reference.cases {
        let (one, _) = encoder
            .score(&reference.query, std::slice::from_ref(&case.passage))
            .unwrap();
        assert_close("single passage", &one, &[case.score]);
    }
    assert_eq!(encoder.score("query", &[]).unwrap(), (Vec::new(), 0));
}

#[derive(Deserialize)]
struct Seq2SeqReference {
    cases: Vec<Seq2SeqCase>,
}

#[derive(Deserialize)]
struct Seq2SeqCase {
    text: String,
    source_lang: Option<String>,
    target_lang: Option<String>,
    input_ids: Vec<u32>,
    encoder_last_hidden_state: Vec<Vec<f32>>,
    decoder_input_ids: Vec<u32>,
    decoder_logits: Vec<Vec<f32>>,
    greedy_ids: Vec<u32>,
    greedy_text: String,
    beam_ids: Vec<u32>,
    beam_ids_early_stopping_false: Vec<u32>,
}

fn check_seq2seq(name: &str) {
    let reference: Seq2SeqReference = reference(name);
    let mut model = Seq2Seq::load(&fixture_dir(name)).unwrap();
    let max_new_tokens = model.settings().max_length - 1;
    let beams = model.settings().num_beams;
    assert!(beams > 1, "the fixture's settings ask for beam search");
    let (mut worst_hidden, mut worst_logits) = (0f32, 0f32);
    for case in &reference.cases {
        let what = format!("{name} {:.30?}", case.text);
        let (source, target) = (case.source_lang.as_deref(), case.target_lang.as_deref());
        let ids = model.source_ids(&case.text, source).unwrap();
        assert_eq!(ids, case.input_ids, "{what}: source ids");

        let hidden = model.encode(&ids).unwrap();
        assert_eq!(hidden.len(), case.encoder_last_hidden_state.len());
        for (i, (row, expected)) in hidden
            .iter()
            .zip(&case.encoder_last_hidden_state)
            .enumerate()
        {
            let diff = assert_close(&format!("{what}: encoder state {i}"), row, expected);
            worst_hidden = worst_hidden.max(diff);
        }
        let logits = model.decoder_logits(&ids, &case.decoder_input_ids).unwrap();
        assert_eq!(logits.len(), case.decoder_logits.len());
        for (i, (row, expected)) in logits.iter().zip(&case.decoder_logits).enumerate() {
            let diff = assert_close(&format!("{what}: decoder logits {i}"), row, expected);
            worst_logits = worst_logits.max(diff);
        }

        model.settings_mut().num_beams = beams;
        let beam = model.generate_ids(&ids, target, max_new_tokens).unwrap();
        assert_eq!(beam, case.beam_ids, "{what}: beam search ids");
        let early_stopping = model.settings().early_stopping;
        model.settings_mut().early_stopping = EarlyStopping::Heuristic;
        let beam = model.generate_ids(&ids, target, max_new_tokens).unwrap();
        assert_eq!(
            beam, case.beam_ids_early_stopping_false,
            "{what}: beam search ids, early_stopping false"
        );
        model.settings_mut().early_stopping = early_stopping;

        model.settings_mut().num_beams = 1;
        let greedy = model.generate_ids(&ids, target, max_new_tokens).unwrap();
        assert_eq!(greedy, case.greedy_ids, "{what}: greedy ids");
        let (text, input_tokens, generated) = model
            .generate(&case.text, source, target, max_new_tokens)
            .unwrap();
        assert_eq!(text, case.greedy_text, "{what}: greedy text");
        assert_eq!(input_tokens as usize, case.input_ids.len());
        assert_eq!(generated as usize, case.greedy_ids.len() - 1);
        model.settings_mut().num_beams = beams;
    }
    eprintln!(
        "{name}: max abs diff encoder state {worst_hidden:e}, decoder logits {worst_logits:e}"
    );
}

#[test]
fn bart_matches_transformers() {
    check_seq2seq("bart");
    let model = Seq2Seq::load(&fixture_dir("bart")).unwrap();
    assert!(model.languages().is_empty());
}

#[test]
fn m2m100_matches_transformers() {
    check_seq2seq("m2m100");
    let model = Seq2Seq::load(&fixture_dir("m2m100")).unwrap();
    assert_eq!(model.languages(), ["en", "fr", "de", "es", "zh", "ja"]);
}

#[derive(Deserialize)]
struct SentencepieceReference {
    language_token_ids: std::collections::BTreeMap<String, u32>,
    cases: Vec<SentencepieceCase>,
}

#[derive(Deserialize)]
struct SentencepieceCase {
    lang: String,
    text: String,
    input_ids: Vec<u32>,
    decoded: String,
}

#[test]
fn m2m100_tokenizer_from_sentencepiece_matches_transformers() {
    let name = "m2m100-sentencepiece";
    let reference: SentencepieceReference = reference(name);
    let tokenizer = ember_engines::seq2seq::m2m100_tokenizer(&fixture_dir(name)).unwrap();
    for (code, id) in &reference.language_token_ids {
        assert_eq!(
            tokenizer.token_to_id(&format!("__{code}__")),
            Some(*id),
            "{code}"
        );
    }
    for case in &reference.cases {
        let content = tokenizer.encode(case.text.as_str(), false).unwrap();
        let lang = tokenizer
            .token_to_id(&format!("__{}__", case.lang))
            .unwrap();
        let eos = tokenizer.token_to_id("</s>").unwrap();
        let mut expected_content = case.input_ids.clone();
        assert_eq!(
            expected_content.remove(0),
            lang,
            "{:?}: language token",
            case.text
        );
        assert_eq!(
            expected_content.pop(),
            Some(eos),
            "{:?}: end token",
            case.text
        );
        assert_eq!(content.get_ids(), expected_content, "{:?}", case.text);
        let decoded = tokenizer.decode(content.get_ids(), true).unwrap();
        assert_eq!(decoded, case.decoded, "{:?}", case.text);
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut classifier = SequenceClassifier::load(&fixture_dir("distilbert")).unwrap();
    let long = "word ".repeat(5000);
    let out = classifier
        .classify(&[String::new(), long.clone(), "\u{0}\u{fffd}🙂".into()])
        .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0].1, 2, "an empty text is [CLS] [SEP]");
    assert_eq!(out[1].1, 64, "a long text is cut to the position table");
    for (probabilities, _) in &out {
        assert!((probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert!(classifier.classify(&[]).unwrap().is_empty());

    let mut reranker = CrossEncoder::load(&fixture_dir("reranker")).unwrap();
    let (scores, tokens) = reranker
        .score(&long, &[long.clone(), String::new()])
        .unwrap();
    assert_eq!(scores.len(), 2);
    assert!(tokens <= 128);
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));

    let mut m2m = Seq2Seq::load(&fixture_dir("m2m100")).unwrap();
    let invalid_at = |result: Result<(String, u32, u32), InferError>| match result {
        Err(InferError::InvalidInput { field, .. }) => field,
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    assert_eq!(
        invalid_at(m2m.generate("hello", Some("en"), Some("xx"), 5)),
        "/target_lang"
    );
    assert_eq!(
        invalid_at(m2m.generate("hello", Some("en"), None, 5)),
        "/target_lang"
    );
    assert_eq!(
        invalid_at(m2m.generate("hello", Some("klingon"), Some("fr"), 5)),
        "/source_lang"
    );
    // Source language defaults to English; empty and over-long texts still translate.
    let (_, input_tokens, generated) = m2m.generate("", None, Some("fr"), 5).unwrap();
    assert_eq!(input_tokens, 2);
    assert!((1..=5).contains(&generated));
    let (_, input_tokens, _) = m2m.generate(&long, Some("en"), Some("de"), 3).unwrap();
    assert_eq!(input_tokens, 64);
    let (text, _, generated) = m2m.generate("hello", None, Some("fr"), 0).unwrap();
    assert_eq!((text.as_str(), generated), ("", 0));

    let mut bart = Seq2Seq::load(&fixture_dir("bart")).unwrap();
    let (_, input_tokens, generated) = bart.generate(&long, None, Some("ignored"), 1000).unwrap();
    assert_eq!(input_tokens, 64);
    assert!((1..64).contains(&generated));
    let (_, _, generated) = bart.generate("", None, None, 4).unwrap();
    assert!(generated <= 4);

    let missing = Seq2Seq::load(&fixture_dir("nonexistent"));
    assert!(matches!(missing, Err(InferError::LoadFailed { .. })));
    assert!(matches!(
        SequenceClassifier::load(&fixture_dir("bart")),
        Err(InferError::LoadFailed { .. })
    ));
}

#[test]
fn engines_can_move_to_a_worker_thread() {
    fn send<T: Send + 'static>() {}
    send::<SequenceClassifier>();
    send::<CrossEncoder>();
    send::<Seq2Seq>();
}
