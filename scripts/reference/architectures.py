"""Tiny random models and reference outputs for Ember's candle classification and seq2seq engines.

Generated with Python 3.11, torch 2.15.0 (the plain PyPI wheel, run on the CPU),
transformers 5.23.0, tokenizers 0.23.3, safetensors 0.8.0 (see requirements.txt). Nothing is
downloaded: every model is built from a small config with transformers' own classes, its weights
drawn from `torch.manual_seed`, and every tokenizer is built here with `tokenizers` from the small
corpus below (WordPiece and Unigram vocabularies by hand, byte-level and sentencepiece-style BPE
by `tokenizers`' BPE trainer), so the output is the same on every run.

For each architecture the script writes a Hugging Face model folder (config.json,
model.safetensors, tokenizer.json, and generation_config.json for seq2seq) and `reference.json`
with transformers' outputs on a few texts:

- distilbert/   DistilBertForSequenceClassification (distilbert-sst-2's architecture): logits and
                softmax probabilities per text.
- reranker/     XLMRobertaForSequenceClassification, one label (bge-reranker-base's architecture):
                logit and sigmoid score per (query, passage) pair.
- bart/         BartForConditionalGeneration (bart-large-cnn's architecture, with its generation
                settings scaled down): encoder last hidden state, teacher-forced decoder logits,
                greedy and beam-search generations.
- m2m100/       M2M100ForConditionalGeneration (m2m100-1.2b's architecture): the same, with source
                and target language tokens.

Texts longer than the tiny models' position tables are included, so the references also pin
truncation. Usage (from the repository root):

    python scripts/reference/architectures.py --out crates/ember-engines/tests/fixtures/architectures
"""

import argparse
import json
import math
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GenerationConfig,
    M2M100Config,
    M2M100ForConditionalGeneration,
    PreTrainedTokenizerFast,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "I loved this movie, the acting was wonderful and the story moving.",
    "This film was a terrible waste of time; the plot made no sense.",
    "Paris is the capital of France and its largest city.",
    "Machine learning models turn text into numbers and back again.",
    "Rerankers score how well a passage answers a query.",
    "Summaries keep the main points of a long article short.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "Der Hund läuft schnell durch den grünen Park.",
    "El tiempo es bueno hoy y vamos a la playa.",
    "Numbers like 42, 3.14 and 2024 appear in many texts!",
    "Self-hosted inference keeps your data on your own machines.",
]

LONG_TEXT = " ".join(CORPUS * 4)

CLASSIFY_TEXTS = [
    "I loved this movie!",
    "This film was a terrible waste of time.",
    "",
    "Le chat dort. 🐈 Ünïcödé and   spaces",
    "ok",
    LONG_TEXT,
]

RERANK_QUERY = "what is the capital of France?"
RERANK_PASSAGES = [
    "Paris is the capital of France and its largest city.",
    "The quick brown fox jumps over the lazy dog.",
    "",
    LONG_TEXT,
]

SEQ2SEQ_TEXTS = [
    "Paris is the capital of France and its largest city.",
    "Self-hosted inference keeps your data on your own machines. Summaries keep the main points.",
    LONG_TEXT,
]

LANGUAGES = ["en", "fr", "de", "es", "zh", "ja"]
MAX_POSITIONS = 64


def rounded(x):
    """Nested lists of floats rounded to 7 significant digits (f32 precision)."""
    if isinstance(x, list):
        return [rounded(v) for v in x]
    return float(f"{x:.7g}")


def randomize(model, seed, embed_std=1.0):
    """Redraws every weight with spreads large enough that the tiny models' outputs are far from
    uniform (transformers' 0.02 init would make every logit nearly equal and hide bugs), but small
    enough that tanh heads do not saturate and tied embeddings do not just repeat the last token."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif p.dim() == 1:  # LayerNorm weights
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "embed" in name or "shared" in name:
                p.normal_(0.0, embed_std)
            elif "classifier.dense" in name:
                p.normal_(0.0, 0.05)
            else:
                p.normal_(0.0, 0.25)
        for name, b in model.named_buffers():
            if name.endswith("final_logits_bias"):
                b.normal_(0.0, 0.5)
    model.eval()
    return model


def corpus_words(normalizer, pre_tokenizer):
    """Words of CORPUS after a tokenizer's normalizer and pre-tokenizer, most frequent first
    (ties alphabetical), and the sorted set of their characters. Built by hand rather than with
    `tokenizers`' WordPiece/Unigram trainers, whose tie-breaking is not reproducible."""
    counts = {}
    for text in CORPUS:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))
    chars = sorted({c for w in words for c in w})
    return words, counts, chars


def wordpiece_tokenizer():
    """BERT-style uncased WordPiece with [PAD]=0, like distilbert-base-uncased's vocab layout:
    specials, single characters, `##` continuation characters, a few suffixes, corpus words."""
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None, clean_text=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words, _, chars = corpus_words(normalizer, pre_tokenizer)
    candidates = special + chars + [f"##{c}" for c in chars] + ["##ing", "##ed", "##ly"] + words
    pieces = list(dict.fromkeys(candidates))  # first occurrence wins, ids stay dense
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return tok


def unigram_tokenizer():
    """XLM-R-style sentencepiece Unigram with <s>=0, <pad>=1, </s>=2, <unk>=3 and the XLM-R pair
    template `<s> A </s></s> B </s>`: corpus words scored by frequency, single characters as the
    fallback."""
    normalizer = normalizers.NFKC()
    pre_tokenizer = pre_tokenizers.Metaspace()
    words, counts, chars = corpus_words(normalizer, pre_tokenizer)
    total = sum(counts.values())
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(w, math.log(counts[w] / total)) for w in words if len(w) > 1]
    vocab += [(c, -20.0) for c in chars if c not in dict(vocab)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.decoder = decoders.Metaspace()
    return tok


def byte_bpe_tokenizer():
    """BART/RoBERTa-style byte-level BPE with <s>=0, <pad>=1, </s>=2, <unk>=3."""
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.decoder = decoders.ByteLevel()
    return tok


def m2m100_tokenizer():
    """M2M100-style sentencepiece BPE with <s>=0, <pad>=1, </s>=2, <unk>=3 and the language tokens
    `__xx__` as special added tokens after the vocabulary, as in facebook/m2m100's vocab."""
    special = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=240, special_tokens=special)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens([f"__{code}__" for code in LANGUAGES])
    tok.decoder = decoders.Metaspace()
    return tok


def save_folder(out: Path, model, tok: Tokenizer, reference: dict):
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    reference["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
    (out / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n")


def distilbert(out: Path):
    tok = wordpiece_tokenizer()
    config = DistilBertConfig(
        vocab_size=tok.get_vocab_size(),
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        activation="gelu",
        pad_token_id=0,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
        attn_implementation="eager",
    )
    model = randomize(DistilBertForSequenceClassification(config), seed=1)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS)
    cases = []
    for text in CLASSIFY_TEXTS:
        enc = fast(text, truncation=True, max_length=MAX_POSITIONS, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]
        cases.append(
            {
                "text": text,
                "input_ids": enc["input_ids"][0].tolist(),
                "logits": rounded(logits.tolist()),
                "probabilities": rounded(torch.softmax(logits, -1).tolist()),
            }
        )
    save_folder(out, model, tok, {"labels": ["NEGATIVE", "POSITIVE"], "cases": cases})


def reranker(out: Path):
    tok = unigram_tokenizer()
    config = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS + 2,  # positions start after pad_token_id=1
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        num_labels=1,
        attn_implementation="eager",
    )
    model = randomize(XLMRobertaForSequenceClassification(config), seed=2)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS)
    cases = []
    for passage in RERANK_PASSAGES:
        # A batch of [query, passage] pairs, as FlagReranker and sentence-transformers'
        # CrossEncoder call the tokenizer (a lone `tokenizer(query, "")` would drop the empty pair).
        enc = fast([[RERANK_QUERY, passage]], truncation=True, max_length=MAX_POSITIONS, return_tensors="pt")
        enc.pop("token_type_ids", None)
        with torch.no_grad():
            logit = model(**enc).logits[0, 0]
        cases.append(
            {
                "passage": passage,
                "input_ids": enc["input_ids"][0].tolist(),
                "logit": rounded(logit.item()),
                "score": rounded(torch.sigmoid(logit).item()),
            }
        )
    save_folder(out, model, tok, {"query": RERANK_QUERY, "cases": cases})


def seq2seq_cases(model, tok: Tokenizer, prefix_id, decoder_prefix, generation: dict, langs):
    """Reference outputs for each text in SEQ2SEQ_TEXTS: the source ids (prefix + content cut to
    fit + </s>, as the Hugging Face tokenizers build them), the encoder's last hidden state, the
    decoder logits for a teacher-forced prefix, and greedy and beam generations."""
    cases = []
    for i, text in enumerate(SEQ2SEQ_TEXTS):
        source_lang, target_lang = langs[i % len(langs)] if langs else (None, None)
        prefix = prefix_id(source_lang)
        content = tok.encode(text, add_special_tokens=False).ids[: MAX_POSITIONS - 2]
        input_ids = torch.tensor([[prefix] + content + [2]])
        forced_bos = tok.token_to_id(f"__{target_lang}__") if target_lang else generation["forced_bos_token_id"]
        with torch.no_grad():
            encoder_out = model.get_encoder()(input_ids=input_ids).last_hidden_state
            greedy = model.generate(
                input_ids, num_beams=1, do_sample=False, forced_bos_token_id=forced_bos
            )[0]
            beam = model.generate(input_ids, do_sample=False, forced_bos_token_id=forced_bos)[0]
            beam_heuristic = model.generate(
                input_ids, do_sample=False, forced_bos_token_id=forced_bos, early_stopping=False
            )[0]
            # Teacher-forced decoder logits over a prefix that includes <pad> and then the greedy
            # continuation, one token at a time with the cache as `generate` runs the decoder
            # (M2M100 places a pad token at the padding position and the others by cache length).
            decoder_ids = torch.tensor([[2, forced_bos] + decoder_prefix + greedy[2:12].tolist()])
            encoder_outputs = model.get_encoder()(input_ids=input_ids)
            past, rows = None, []
            for i in range(decoder_ids.shape[1]):
                out = model(
                    encoder_outputs=encoder_outputs,
                    decoder_input_ids=decoder_ids[:, i : i + 1],
                    past_key_values=past,
                    use_cache=True,
                )
                past = out.past_key_values
                rows.append(out.logits[0, -1])
            logits = torch.stack(rows)
        cases.append(
            {
                "text": text,
                "source_lang": source_lang,
                "target_lang": target_lang,
                "input_ids": input_ids[0].tolist(),
                "encoder_last_hidden_state": rounded(encoder_out[0].tolist()),
                "decoder_input_ids": decoder_ids[0].tolist(),
                "decoder_logits": rounded(logits.tolist()),
                "greedy_ids": greedy.tolist(),
                "greedy_text": tok.decode(greedy.tolist(), skip_special_tokens=True),
                "beam_ids": beam.tolist(),
                "beam_text": tok.decode(beam.tolist(), skip_special_tokens=True),
                "beam_ids_early_stopping_false": beam_heuristic.tolist(),
            }
        )
    return cases


def bart(out: Path):
    tok = byte_bpe_tokenizer()
    # bart-large-cnn's generation settings, with lengths scaled to the tiny position table.
    generation = dict(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        num_beams=4,
        length_penalty=2.0,
        no_repeat_ngram_size=3,
        min_length=8,
        max_length=24,
        early_stopping=True,
    )
    config = BartConfig(
        vocab_size=tok.get_vocab_size(),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        activation_function="gelu",
        scale_embedding=False,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
        forced_eos_token_id=2,
        attn_implementation="eager",
    )
    model = randomize(BartForConditionalGeneration(config), seed=3)
    with torch.no_grad():
        # Make </s> likely enough that hypotheses end at different lengths, so the references
        # pin min_length, the length penalty and the beam-search stopping rules.
        model.final_logits_bias[0, 2] += 10.0
    model.generation_config = GenerationConfig(**generation)
    cases = seq2seq_cases(model, tok, lambda _: 0, [17, 1, 99, 5], generation, None)
    save_folder(out, model, tok, {"generation": generation, "cases": cases})


def m2m100(out: Path):
    tok = m2m100_tokenizer()
    # m2m100's generation settings (num_beams 5, early stopping), with max_length scaled down.
    generation = dict(
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        decoder_start_token_id=2,
        num_beams=5,
        max_length=20,
        early_stopping=True,
    )
    config = M2M100Config(
        vocab_size=tok.get_vocab_size(),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=MAX_POSITIONS,
        activation_function="relu",
        scale_embedding=True,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        attn_implementation="eager",
    )
    model = randomize(M2M100ForConditionalGeneration(config), seed=4, embed_std=0.2)
    model.generation_config = GenerationConfig(**generation)
    langs = [("en", "fr"), ("fr", "de"), ("en", "zh")]
    cases = seq2seq_cases(
        model, tok, lambda lang: tok.token_to_id(f"__{lang}__"), [30, 1, 77, 12], generation, langs
    )
    save_folder(out, model, tok, {"generation": generation, "languages": LANGUAGES, "cases": cases})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    distilbert(args.out / "distilbert")
    reranker(args.out / "reranker")
    bart(args.out / "bart")
    m2m100(args.out / "m2m100")


if __name__ == "__main__":
    main()
