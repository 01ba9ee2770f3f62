//! Ad-hoc throughput check (not committed): embeddings/s at batch 1 and 32, short and long texts.
use ember_core::catalog::Catalog;
use ember_core::runner::EmbeddingsRunner;
use ember_core::tasks::Pooling;
use std::time::Instant;

fn main() {
    let catalog = Catalog::builtin().unwrap();
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ember/models");
    let short = "The quick brown fox jumps over the lazy dog near the quiet river bank today.";
    let para = "Lighthouses were built along dangerous coasts to warn ships of rocks and shoals, and their keepers lived isolated lives tending the lamps through every storm. ";
    let ids: Vec<String> = std::env::args().skip(1).collect();
    for id in ids {
        let spec = catalog.get(&id).unwrap();
        let t0 = Instant::now();
        let mut model =
            ember_engines::embed::load_embedder(spec, &home.join(spec.dir_name())).unwrap();
        println!("{id}: load {:.2}s", t0.elapsed().as_secs_f64());
        // Long text: about 256 tokens in all.
        let mut long = String::new();
        while model.tokenize(&[long.clone()]).unwrap()[0].len() < 256 && long.len() < 4000 {
            long.push_str(para);
        }
        for (name, base) in [("short", short.to_string()), ("long", long)] {
            let texts: Vec<String> = (0..32).map(|i| format!("{i} {base}")).collect();
            let tokens = model.tokenize(&texts[..1]).unwrap()[0].len();
            model.embed(&texts[..1], Pooling::Mean).unwrap();
            let n1 = if name == "short" { 64 } else { 16 };
            let t = Instant::now();
            for text in texts.iter().cycle().take(n1) {
                model
                    .embed(std::slice::from_ref(text), Pooling::Mean)
                    .unwrap();
            }
            let b1 = n1 as f64 / t.elapsed().as_secs_f64();
            let reps = if name == "short" { 4 } else { 2 };
            let t = Instant::now();
            for _ in 0..reps {
                model.embed(&texts, Pooling::Mean).unwrap();
            }
            let b32 = (32 * reps) as f64 / t.elapsed().as_secs_f64();
            println!("{id}: {name} ({tokens} tokens): batch 1 {b1:.1}/s, batch 32 {b32:.1}/s");
        }
    }
}
