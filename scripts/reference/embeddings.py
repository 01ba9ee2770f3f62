#!/usr/bin/env python3
"""Reference embeddings for Ember's embedding models, computed with sentence-transformers.

Usage:
    python embeddings.py --model-dir DIR --model-id ID --out tests/fixtures/embeddings/<slug>.json

Run once by hand (see README.md); the JSON it writes is committed and compared against by the
Rust tests. Everything runs on CPU in float32, one text per forward pass (batch size 1, so no
padding is ever involved).

For every text it records:
  * input_ids   - token ids exactly as sentence-transformers feeds them to the transformer
                  (special tokens included, truncated to max_seq_length);
  * n_tokens    - len(input_ids); n_tokens_untruncated - the same tokenization without truncation;
  * mean        - model.encode(text) with NO prompt: the model's own module pipeline
                  (Transformer -> Pooling(mean) -> [Dense...] -> Normalize), so L2-normalized;
  * cls         - see CLS_DEFINITION below.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

CLS_DEFINITION = (
    "Same pipeline as 'mean' except the Pooling module: the final transformer output "
    "(token_embeddings, i.e. the last hidden state after the model's final norm if it has one) "
    "at sequence position 0 (the first token: [CLS] for BERT-style tokenizers, <bos> for Gemma) "
    "replaces the masked mean; every module after Pooling is then run unchanged "
    "(EmbeddingGemma: Dense 768->3072, Dense 3072->768, both bias-free/identity activation, then "
    "Normalize; MiniLM: Normalize only). Result is L2-normalized. No prompt, batch size 1."
)

# ~400 tokens of English prose (MiniLM truncates it at 256 tokens).
LONG_TEXT_400 = (
    "The history of the lighthouse is, in many ways, the history of maritime trade itself. "
    "Long before electric lamps and rotating Fresnel lenses, sailors relied on bonfires lit on "
    "hilltops and headlands to warn them of dangerous rocks and to guide them safely into harbor. "
    "The most famous of the ancient lights, the Pharos of Alexandria, was completed around 280 BC "
    "and is said to have stood more than one hundred meters tall. Travelers described a great "
    "mirror at its summit that reflected sunlight by day and the glow of a fire by night, visible "
    "from many kilometers out to sea. For centuries it was counted among the Seven Wonders of the "
    "Ancient World, until a series of earthquakes left it in ruins.\n\n"
    "During the Middle Ages, lights were maintained by monasteries, guilds, and local lords, who "
    "often charged passing ships a fee for the service. The quality of these lights varied "
    "enormously: some were little more than a lantern hung in a church tower, while others were "
    "substantial stone towers burning coal or wood. It was not until the eighteenth century that "
    "engineers began to think systematically about how to make a light both brighter and more "
    "reliable. Oil lamps with hollow wicks, polished parabolic reflectors, and eventually the "
    "lens designed by the French physicist Augustin-Jean Fresnel in 1822 transformed the "
    "lighthouse into a precise optical instrument. A single Fresnel lens could gather the light "
    "of one flame and project it as a concentrated beam that carried for twenty nautical miles "
    "or more.\n\n"
    "Each lighthouse was given a distinctive pattern of flashes, called its characteristic, so "
    "that a navigator could identify it at night simply by counting the seconds between pulses. "
    "Keepers lived at the stations with their families, trimming wicks, winding clockwork, and "
    "polishing brass through long and lonely winters. Today almost every light is automated, and "
    "satellite navigation has made many of them redundant, yet the towers remain beloved "
    "landmarks, and a surprising number still shine every night."
)

# ~1500 tokens: several unrelated sections, so truncation / sliding-window effects are visible.
LONG_TEXT_1500 = "\n\n".join([
    "Chapter 1. Bread. Few foods are as old or as widespread as bread. Archaeologists have found "
    "charred crumbs in a fireplace in north-eastern Jordan that are roughly 14,400 years old, "
    "which means people were baking flatbreads from wild cereals thousands of years before "
    "agriculture began. The basic recipe has hardly changed: flour, water, salt, and usually some "
    "form of leavening. What has changed is our understanding of why it works. When flour is "
    "mixed with water, two proteins, glutenin and gliadin, bond together to form gluten, an "
    "elastic network that traps the carbon dioxide released by yeast. Kneading aligns and "
    "strengthens that network; resting lets it relax so the dough can be shaped. In the oven, "
    "trapped gas expands, water turns to steam, starches gelatinize, and the crust browns through "
    "the Maillard reaction between sugars and amino acids at temperatures above about 140 degrees "
    "Celsius. A sourdough loaf relies on a culture of wild yeasts and lactic acid bacteria rather "
    "than commercial yeast, which gives it a tangy flavor and a longer shelf life, but also "
    "demands patience: a starter must be fed regularly, and a single loaf can take more than a "
    "day from mixing to slicing.",
    "Chapter 2. Railways. The first public railway to use steam locomotives, the Stockton and "
    "Darlington Railway, opened in England in September 1825. Within a few decades, iron rails "
    "had spread across Europe and North America, shrinking journeys that once took weeks into "
    "days or hours. Railways needed standard time, because a train timetable is useless if every "
    "town keeps its own local noon; in 1847 British railway companies adopted Greenwich Mean "
    "Time, and in 1883 the railroads of the United States and Canada introduced the time zones "
    "that are still used today. The gauge of the track, the distance between the two rails, was "
    "a source of endless argument. Much of the world eventually settled on 1,435 millimeters, "
    "the so-called standard gauge, but Spain, Russia, India, and parts of Australia chose "
    "different widths, and passengers and freight crossing those borders still have to change "
    "trains or wait while the wheels are adjusted. Modern high-speed lines, such as the Shinkansen "
    "in Japan, which opened in 1964, routinely run at 300 kilometers per hour on dedicated track "
    "with gentle curves, continuous welded rail, and signalling displayed inside the cab rather "
    "than beside the line.",
    "Chapter 3. The water cycle. Every day the sun evaporates an enormous quantity of water from "
    "the oceans, lakes, and rivers, and plants release more through their leaves in a process "
    "called transpiration. The vapor rises, cools, and condenses around tiny particles of dust, "
    "salt, or smoke to form clouds. When droplets grow heavy enough, they fall as rain, snow, "
    "sleet, or hail. Some of that precipitation runs off the surface into streams and rivers and "
    "eventually returns to the sea; some soaks into the ground and recharges aquifers, where it "
    "may remain for thousands of years; and some is locked away in glaciers and ice sheets. "
    "Although the total amount of water on Earth is essentially constant, its distribution is "
    "not: about 97 percent is salt water in the oceans, and most of the fresh water is frozen. "
    "Rising temperatures intensify the cycle, because warmer air can hold roughly seven percent "
    "more moisture for every degree Celsius of warming, which tends to make wet regions wetter, "
    "dry regions drier, and individual storms more intense.",
    "Chapter 4. Compilers. A compiler translates a program written in one language into another, "
    "usually from a human-readable source language into machine code. The classic design splits "
    "the work into phases. The lexer turns a stream of characters into tokens such as keywords, "
    "identifiers, numbers, and operators. The parser arranges those tokens into a syntax tree "
    "according to the grammar of the language. Semantic analysis checks that names are declared "
    "before they are used and that types fit together, so that adding a string to an integer, for "
    "example, is reported as an error. The middle of the compiler lowers the tree into an "
    "intermediate representation, often in static single assignment form, where each variable is "
    "assigned exactly once; this makes optimizations like constant propagation, dead code "
    "elimination, inlining, and loop-invariant code motion much easier to express. Finally the "
    "back end selects machine instructions, allocates registers, and schedules the instructions "
    "to keep the processor's pipelines busy. Modern compilers such as LLVM and GCC perform "
    "hundreds of passes, and a single optimization can change the running time of a program by "
    "an order of magnitude.",
    "Chapter 5. Bees. A honeybee colony is a superorganism of some twenty to sixty thousand "
    "workers, a few hundred drones, and a single queen. Workers change jobs as they age: young "
    "bees clean cells and feed larvae, middle-aged bees build comb and guard the entrance, and the "
    "oldest bees forage for nectar, pollen, water, and resin. A forager that finds a rich patch "
    "of flowers returns to the hive and performs a waggle dance on the vertical comb. The angle of "
    "the dance relative to straight up tells her sisters the direction of the food relative to "
    "the sun, and the duration of the waggle run encodes the distance. Karl von Frisch decoded "
    "this language in the 1940s and shared the Nobel Prize in Physiology or Medicine in 1973 for "
    "the work. To make a single kilogram of honey, bees may visit several million flowers and fly "
    "a distance equivalent to several trips around the planet. In winter the colony clusters "
    "into a tight ball, shivering its flight muscles to keep the center at around 35 degrees "
    "Celsius while the temperature outside falls well below freezing.",
    "Chapter 6. Maps. Every flat map of the Earth is a compromise, because a sphere cannot be "
    "unrolled onto a plane without stretching or tearing. The Mercator projection, published in "
    "1569, preserves angles, which made it invaluable for navigation: a straight line on the map "
    "is a line of constant compass bearing. The price is a dramatic distortion of area toward the "
    "poles, so that Greenland appears about as large as Africa even though Africa is roughly "
    "fourteen times bigger. Equal-area projections such as the Mollweide or the Gall-Peters fix "
    "the sizes but bend the shapes, while compromise projections like the Robinson and the "
    "Winkel tripel try to keep every kind of error moderate. Web maps today mostly use a variant "
    "called Web Mercator, which divides the world into square tiles at each zoom level: one tile "
    "at level zero, four at level one, sixteen at level two, and so on, doubling the resolution "
    "each time. At zoom level 20, a single tile covers only a few dozen meters on a side.",
    "Chapter 7. Closing thoughts. Bread, railways, rain, compilers, bees, and maps seem to have "
    "little in common, yet each is a system in which simple local rules add up to complex global "
    "behavior. Yeast cells know nothing about loaves, a single bee knows nothing about the colony's "
    "honey stores, and a single pass of a compiler knows nothing about the finished program. "
    "Understanding such systems means paying attention to both scales at once: the small "
    "mechanisms that do the work and the large patterns that emerge from them.",
])

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "Which planet is known as the Red Planet?",
    "How do I reset my password if I no longer have access to my email?",
    "On 2024-03-15 at 09:45, order #A-1138 shipped 3.5 kg (≈7.7 lb) for $1,299.99 — 15% off!",
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Straße, Äpfel.",
    "Crème brûlée à la française : où est-ce que je peux en acheter près d'ici ?",
    "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
    "東京は日本の首都です。今日はとても良い天気ですね。",
    "الذكاء الاصطناعي يغير العالم بسرعة كبيرة.",
    "Москва — столица России, и это самый большой город страны.",
    "오늘 날씨가 정말 좋네요.",
    "I love pizza 🍕🍕 and coffee ☕️! 😂👍🏽 #blessed",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days' ORDER BY id;",
    "Embeddings",
    "a",
    "   lots   of\t\ttabs   and\n\n\nnewlines    between     words   \t ",
    "THIS SENTENCE IS WRITTEN ENTIRELY IN UPPERCASE LETTERS.",
    "naïve café résumé coöperate Ångström",
    "https://developers.cloudflare.com/workers-ai/models/?q=embedding&page=2",
    "The cat sat on the mat. The dog sat on the log. The bird sat on the wire.",
    LONG_TEXT_400,
    LONG_TEXT_1500,
]

SANITY_QUERY = "task: search result | query: Which planet is known as the Red Planet?"
SANITY_DOC_PREFIX = "title: none | text: "
SANITY_DOCS = [
    "Venus is often called Earth's twin because of its similar size and proximity.",
    "Mars, known for its reddish appearance, is often referred to as the Red Planet.",
    "Jupiter, the largest planet in our solar system, has a prominent red spot.",
    "Saturn, famous for its rings, is sometimes mistaken for the Red Planet.",
]


def round_sig(values, digits=7):
    return [float(f"{v:.{digits - 1}e}") for v in np.asarray(values, dtype=np.float64).tolist()]


def run_modules(model, features, start):
    for module in list(model)[start:]:
        features = module(features)
    return features


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = SentenceTransformer(args.model_dir, device="cpu", local_files_only=True)
    model.eval()

    module_types = [type(m).__name__ for m in model]
    print("modules:", module_types, file=sys.stderr)
    pooling_idx = next(i for i, n in enumerate(module_types) if n == "Pooling")
    assert module_types[-1] == "Normalize", module_types

    with open(os.path.join(args.model_dir, "sentence_bert_config.json")) as f:
        sbert_cfg = json.load(f)
    st_cfg_path = os.path.join(args.model_dir, "config_sentence_transformers.json")
    st_cfg = json.load(open(st_cfg_path)) if os.path.exists(st_cfg_path) else {}
    max_seq_length = int(model.max_seq_length)
    assert max_seq_length == sbert_cfg["max_seq_length"], (max_seq_length, sbert_cfg)
    print("max_seq_length:", max_seq_length, "default_prompt_name:",
          st_cfg.get("default_prompt_name"), "/", model.default_prompt_name, file=sys.stderr)

    dims = None
    tokenizer = model.tokenizer
    cases = []
    with torch.inference_mode():
        for text in TEXTS:
            # Canonical path: explicitly no prompt, and no extra normalization on top of the
            # model's own Normalize module.
            mean = model.encode([text], prompt=None, prompt_name=None, batch_size=1,
                                normalize_embeddings=False, convert_to_numpy=True)[0]
            features = model.preprocess([text], prompt=None)
            ids = features["input_ids"][0]
            mask = features["attention_mask"][0]
            assert int(mask.sum()) == ids.shape[0], "unexpected padding in a batch of one"
            input_ids = [int(t) for t in ids.tolist()]
            untrunc = tokenizer(text, add_special_tokens=True, truncation=False, padding=False)["input_ids"]

            out = model[0](dict(features))
            manual_mean = run_modules(model, dict(out), pooling_idx)["sentence_embedding"][0].numpy()
            cls_feats = dict(out)
            cls_feats["sentence_embedding"] = out["token_embeddings"][:, 0]
            cls = run_modules(model, cls_feats, pooling_idx + 1)["sentence_embedding"][0].numpy()

            assert np.allclose(mean, manual_mean, atol=1e-5), "manual pipeline != encode()"
            assert abs(np.linalg.norm(mean) - 1) < 1e-4 and abs(np.linalg.norm(cls) - 1) < 1e-4
            dims = int(mean.shape[0])
            cases.append({
                "text": text,
                "n_tokens": len(input_ids),
                "n_tokens_untruncated": len(untrunc),
                "input_ids": input_ids,
                "mean": round_sig(mean),
                "cls": round_sig(cls),
            })
            print(f"{len(input_ids):5d} tokens ({len(untrunc):5d} untruncated): {text[:50]!r}",
                  file=sys.stderr)

        if "gemma" in args.model_id.lower():
            q = model.encode([SANITY_QUERY], prompt=None, convert_to_tensor=True)
            d = model.encode([SANITY_DOC_PREFIX + t for t in SANITY_DOCS], prompt=None, convert_to_tensor=True)
            scores = model.similarity(q, d)[0].tolist()
            print("model-card sanity scores (expect ~[0.301, 0.636, 0.493, 0.489]):",
                  [round(s, 4) for s in scores])

    hf_cfg = model[0].auto_model.config
    with open(os.path.join(args.model_dir, "config.json")) as f:
        raw_cfg = json.load(f)
    attention = {"attn_implementation": hf_cfg._attn_implementation,
                 "bidirectional": bool(getattr(hf_cfg, "use_bidirectional_attention", False))
                 or hf_cfg.model_type == "bert"}
    if raw_cfg.get("sliding_window") is not None:
        attention["config_json_sliding_window"] = raw_cfg["sliding_window"]
        attention["layer_types"] = raw_cfg.get("layer_types")
        if getattr(hf_cfg, "use_bidirectional_attention", False):
            # transformers' Gemma3 config turns sliding_window into (w // 2) + 1 for bidirectional
            # models and then masks sliding layers with |i - j| < that value.
            attention["sliding_window_rule"] = (
                f"sliding_attention layers: query i attends key j iff |i - j| < {hf_cfg.sliding_window} "
                f"(i.e. <= {hf_cfg.sliding_window - 1} each side); full_attention layers: all tokens")

    fixture = {
        "model": args.model_id,
        "reference": (f"sentence-transformers=={sentence_transformers.__version__} "
                      f"torch=={torch.__version__} transformers=={transformers.__version__}"),
        "max_seq_length": max_seq_length,
        "dimensions": dims,
        "tolerance_cosine_distance": 1e-3,
        "modules": module_types,
        "attention": attention,
        "prompt": ("none: encode(prompt=None, prompt_name=None); config_sentence_transformers.json "
                   f"default_prompt_name={st_cfg.get('default_prompt_name')!r}, so no prefix is applied "
                   "by default either"),
        "normalization": "L2 via the model's own Normalize module (encode(normalize_embeddings=False))",
        "pooling": "mean = the model's Pooling module (masked mean over all tokens incl. special tokens)",
        "cls_definition": CLS_DEFINITION,
        "float_rounding": "7 significant digits",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # One case per line keeps the file diffable without putting every float on its own line.
    header = {k: v for k, v in fixture.items() if k != "cases"}
    lines = json.dumps(header, ensure_ascii=False, indent=1)[:-2]
    lines += ',\n "cases": [\n'
    lines += ",\n".join("  " + json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases)
    lines += "\n ]\n}\n"
    assert json.loads(lines) == json.loads(json.dumps(fixture))
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(lines)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, {len(cases)} cases)", file=sys.stderr)


if __name__ == "__main__":
    main()
