"""A tiny M2M100 tokenizer in the layout facebook/m2m100's Hub folders ship, and transformers'
`M2M100Tokenizer` ids for a few texts: the reference for Ember's conversion of
`sentencepiece.bpe.model` + `vocab.json` into a `tokenizers` tokenizer (ember-engines/src/seq2seq).

Generated with Python 3.11, sentencepiece 0.2.1, transformers 5.23.0 (no torch needed). Nothing is
downloaded: the sentencepiece model is trained here (BPE, nmt_nfkc normalization, as fairseq's
M2M100 model was) on the small multilingual corpus below, and `vocab.json` gives its pieces
fairseq's ids: <s>=0, <pad>=1, </s>=2, <unk>=3, then the pieces in a shuffled order (fairseq's
dictionary is ordered by frequency, not by the sentencepiece ids), so a conversion that used the
sentencepiece ids would fail. Usage (from the repository root):

    python scripts/reference/m2m100_tokenizer.py \
        --out crates/ember-engines/tests/fixtures/architectures/m2m100-sentencepiece
"""

import argparse
import json
import random
import tempfile
from pathlib import Path

import sentencepiece as spm
import transformers
from transformers import M2M100Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Machine translation turns a sentence in one language into another language.",
    "I would like a cup of coffee and a glass of water, please.",
    "Le renard brun rapide saute par-dessus le chien paresseux près de la rivière.",
    "La traduction automatique transforme une phrase d'une langue à une autre.",
    "Je voudrais une tasse de café et un verre d'eau, s'il vous plaît.",
    "Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.",
    "Maschinelle Übersetzung überträgt einen Satz von einer Sprache in eine andere.",
    "Ich hätte gern eine Tasse Kaffee und ein Glas Wasser, bitte.",
    "El rápido zorro marrón salta sobre el perro perezoso junto al río.",
    "Быстрая коричневая лиса прыгает через ленивую собаку у реки.",
    "Машинный перевод переводит предложение с одного языка на другой.",
    "敏捷的棕色狐狸跳过了河边那只懒惰的狗。",
    "机器翻译把一种语言的句子变成另一种语言。",
    "すばやい茶色の狐が川岸の怠け者の犬を飛び越える。",
    "Full-width letters ＡＢＣ and digits １２３ are folded by NFKC; ligatures like ﬁ too.",
]

# Texts to tokenize: every language of the corpus, unseen words, NFKC folding, runs of spaces,
# leading and trailing spaces, a character the model has never seen (<unk>), and an empty string.
CASES = [
    ("en", "The quick brown fox jumps over the lazy dog."),
    ("en", "Translation of unseen words: zyxwvut quokka."),
    ("fr", "Je voudrais un café, s'il vous plaît."),
    ("de", "Übersetzung über den Fluss."),
    ("ru", "Быстрая лиса у реки."),
    ("zh", "机器翻译的句子。"),
    ("ja", "茶色の狐。"),
    ("en", "Full-width ＡＢＣ １２３ and the ﬁne ligature."),
    ("en", "  spaces   inside  and around  "),
    ("en", "An emoji 🦊 is unknown."),
    ("en", ""),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(CORPUS) + "\n")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(args.out / "sentencepiece.bpe"),
            model_type="bpe",
            vocab_size=400,
            character_coverage=0.9995,
            normalization_rule_name="nmt_nfkc",
            num_threads=1,
            seed_sentencepiece_size=10000,
        )
    (args.out / "sentencepiece.bpe.vocab").unlink()

    processor = spm.SentencePieceProcessor(model_file=str(args.out / "sentencepiece.bpe.model"))
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    ordinary = [p for p in pieces if p not in ("<unk>", "<s>", "</s>")]
    random.Random(7).shuffle(ordinary)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for piece in ordinary:
        vocab[piece] = len(vocab)
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1) + "\n")

    tokenizer = M2M100Tokenizer(
        vocab_file=str(args.out / "vocab.json"),
        spm_file=str(args.out / "sentencepiece.bpe.model"),
    )
    cases = []
    for lang, text in CASES:
        tokenizer.src_lang = lang
        ids = tokenizer(text)["input_ids"]
        content = ids[1:-1]
        cases.append(
            {
                "lang": lang,
                "text": text,
                "input_ids": ids,
                "pieces": tokenizer.convert_ids_to_tokens(content),
                "decoded": tokenizer.decode(content, skip_special_tokens=True),
            }
        )
    reference = {
        "language_token_ids": {
            code: tokenizer.get_lang_id(code) for code in ("af", "en", "fr", "zh", "zu")
        },
        "cases": cases,
        "versions": {"sentencepiece": spm.__version__, "transformers": transformers.__version__},
    }
    (args.out / "reference.json").write_text(
        json.dumps(reference, indent=1, ensure_ascii=False) + "\n"
    )


if __name__ == "__main__":
    main()
