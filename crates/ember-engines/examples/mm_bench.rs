use candle_core::{Device, Tensor};
use std::time::Instant;
fn bench(name: &str, flops: f64, f: impl Fn()) {
    f();
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!("{name}: {:.1} ms {:.1} GFLOPS", s * 1e3, flops / s / 1e9);
}
fn main() {
    let d = Device::Cpu;
    for (m, k, n) in [
        (3836usize, 768usize, 1280usize),
        (3836, 768, 2304),
        (3836, 1152, 768),
        (19, 768, 2304),
        (274, 768, 2304),
    ] {
        let a = Tensor::randn(0f32, 1., (m, k), &d).unwrap();
        let w = Tensor::randn(0f32, 1., (n, k), &d).unwrap();
        let wt = w.t().unwrap().contiguous().unwrap();
        let fl = 2.0 * (m * k * n) as f64;
        bench(&format!("{m}x{k}x{n} w.t()"), fl, || {
            a.matmul(&w.t().unwrap()).unwrap();
        });
        bench(&format!("{m}x{k}x{n} contig"), fl, || {
            a.matmul(&wt).unwrap();
        });
    }
    let (b, t) = (14usize, 274usize);
    let q = Tensor::randn(0f32, 1., (b, 1, 3 * t, 256), &d).unwrap();
    let k = Tensor::randn(0f32, 1., (b, 1, t, 256), &d).unwrap();
    let kt = k.t().unwrap().contiguous().unwrap();
    let fl = 2.0 * (b * 3 * t * t * 256) as f64;
    bench("scores q@k.t()", fl, || {
        q.matmul(&k.t().unwrap()).unwrap();
    });
    bench("scores q@kt contig", fl, || {
        q.matmul(&kt).unwrap();
    });
    let p = Tensor::randn(0f32, 1., (b, 1, 3 * t, t), &d).unwrap();
    bench("probs@v", fl, || {
        p.matmul(&k).unwrap();
    });
    bench("softmax", 0.0, || {
        candle_nn::ops::softmax_last_dim(&p).unwrap();
    });
    let x = Tensor::randn(0f32, 1., (3836, 1152), &d).unwrap();
    bench("gelu", 0.0, || {
        x.gelu().unwrap();
    });
    let g = Tensor::randn(0f32, 1., (3836, 2304), &d).unwrap();
    bench("gelu narrow", 0.0, || {
        g.narrow(1, 0, 1152).unwrap().gelu().unwrap();
    });
}
