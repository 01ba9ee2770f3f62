use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    let d = Device::Cpu;
    for (m, k, n) in [
        (512usize, 384usize, 1536usize),
        (4864, 384, 1536),
        (512, 768, 2304),
        (32, 768, 2304),
    ] {
        let a = Tensor::randn(0f32, 1., (m, k), &d).unwrap();
        let w = Tensor::randn(0f32, 1., (n, k), &d).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        for (name, rhs) in [("w.t()", w.t().unwrap()), ("contig", wt.clone())] {
            a.matmul(&rhs).unwrap();
            let reps = 10;
            let t = Instant::now();
            for _ in 0..reps {
                a.matmul(&rhs).unwrap();
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "{m}x{k}x{n} {name}: {:.1} GFLOPS",
                2.0 * (m * k * n) as f64 / s / 1e9
            );
        }
    }
}
