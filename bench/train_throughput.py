"""Training throughput: samples/s in steady state, model FLOPs, fraction of the matmul rate, RSS.

  python bench/train_throughput.py                      # every config x precision, subprocesses
  python bench/train_throughput.py --config=1 --precision=bf16 [--jit]

Configs: (1) frame_sizes 16,4, dim 256, 1 GRU layer/tier, seq_len 1024, batch 16, Q 256;
(2) the paper's 3-tier model: frame_sizes 8,2, dim 1024, seq_len 512, batch 16, Q 256.
Batches are random codes (throughput does not depend on the values). One target = one sample,
so samples/step = batch * seq_len. Steps are timed in chunks; the best chunk is reported (the
machine's speed when nothing else competes for its cores) with the median and the load average. Peak memory is the process's max RSS, so `--all` runs every
case in its own process.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time

CONFIGS = {
    "1": dict(frame_sizes=(16, 4), dim=256, seq_len=1024, batch=16),
    "2": dict(frame_sizes=(8, 2), dim=1024, seq_len=512, batch=16),
}


def model_flops_per_sample(frame_sizes, dim, seq_len, batch, q=256, emb=256, layers=1, gates=3):
    """Forward matmul FLOPs (2 per multiply-add) per target sample.

    The sample MLP's first layer is a gather-sum from the [F, Q, D] table (no matmul per
    sample); building the table costs F*Q*E*D multiply-adds per step.
    """
    n = batch * seq_len
    total = 0
    for k, f in enumerate(frame_sizes):
        steps = batch * seq_len // f
        ratio = f // frame_sizes[k + 1] if k + 1 < len(frame_sizes) else f
        total += 2 * steps * f * dim                                  # expand f -> D
        total += layers * 2 * steps * dim * gates * dim * 2           # input proj + recurrent
        total += 2 * steps * dim * ratio * dim                        # upsampling
    big_f = frame_sizes[-1]
    total += 2 * big_f * q * emb * dim                                # lookup table, per step
    total += n * (2 * 2 * dim * dim + 2 * dim * q)                    # 2 hidden + output
    return total / n


def matmul_rate(dtype_name: str, seconds: float = 2.0) -> float:
    """FLOP/s of chained 1024x1024 @ 1024x1024 tf.matmul in `dtype_name`."""
    import tensorflow as tf
    dtype = tf.as_dtype(dtype_name)
    bs = [tf.cast(tf.random.normal([1024, 1024]), dtype) for _ in range(8)]
    a = tf.cast(tf.random.normal([1024, 1024]), dtype)

    @tf.function
    def run(a):
        acc = tf.zeros([1024, 1024], dtype)
        for b in bs:  # distinct operands, so grappler cannot merge the products
            acc += tf.matmul(a, b)
        return acc
    run(a).numpy()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(a).numpy()
        n += 1
    return n * len(bs) * 2 * 1024 ** 3 / (time.perf_counter() - start)


def run_case(config_id: str, precision: str, jit: bool, steps: int, warmup: int,
             chunks: int) -> dict:
    import numpy as np
    import tensorflow as tf
    from samplernn_tf.config import Config, DataConfig, ModelConfig, TrainConfig
    from samplernn_tf.trainer import Trainer

    c = CONFIGS[config_id]
    config = Config(model=ModelConfig(frame_sizes=c["frame_sizes"], dim=c["dim"], q_levels=256),
                    data=DataConfig(seq_len=c["seq_len"]),
                    train=TrainConfig(batch_size=c["batch"], mixed_precision=precision))
    trainer = Trainer(config, jit_compile=jit)
    rng = np.random.default_rng(0)
    fs, L, B = c["frame_sizes"], c["seq_len"], c["batch"]
    raw = rng.integers(0, 256, (B, L + fs[0])).astype(np.int32)
    from pipelines.windows import tbptt_windows
    w = tbptt_windows(raw, L, fs)
    batch = {"tier_inputs": tuple(t[:, 0] for t in w["tier_inputs"]),
             "sample_inputs": w["sample_inputs"][:, 0], "targets": w["targets"][:, 0],
             "weights": tf.ones([B, L]), "reset": tf.zeros([B], tf.bool)}
    t0 = time.perf_counter()
    trainer.train_step(batch)["bits_per_sample"].numpy()
    trace_s = time.perf_counter() - t0
    for _ in range(warmup):
        trainer.train_step(batch)
    trainer.train_step(batch)["bits_per_sample"].numpy()
    load_before = os.getloadavg()[0]
    # Timed in chunks: the best chunk is the machine's speed when nothing else competes for
    # the cores; the median is what a shared machine gave during this run.
    chunk_times = []
    for _ in range(chunks):
        t0 = time.perf_counter()
        for _ in range(steps):
            m = trainer.train_step(batch)
        m["bits_per_sample"].numpy()
        chunk_times.append((time.perf_counter() - t0) / steps)
    chunk_times.sort()
    dt = chunk_times[0]
    rate = B * L / dt
    flops = model_flops_per_sample(fs, c["dim"], L, B)
    mm_dtype = {"float32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
    mm = matmul_rate(mm_dtype)
    return {"config": config_id, "precision": precision, "jit": jit, "samples_per_s": rate,
            "median_samples_per_s": B * L / chunk_times[len(chunk_times) // 2],
            "load": (load_before + os.getloadavg()[0]) / 2,
            "step_ms": dt * 1e3, "first_step_s": trace_s,
            "fwd_flops_per_sample": flops, "train_gflops": 3 * flops * rate / 1e9,
            "matmul_gflops": mm / 1e9, "fraction": 3 * flops * rate / mm,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _fmt(r: dict) -> str:
    return (f"config {r['config']} {r['precision']:>7} xla={str(r['jit']):5}  "
            f"{r['samples_per_s']:7.0f} samples/s (median {r['median_samples_per_s']:6.0f}, "
            f"load {r['load']:.1f})  {r['step_ms']:6.1f} ms/step  "
            f"fwd {r['fwd_flops_per_sample'] / 1e6:6.2f} MFLOP/sample  train {r['train_gflops']:6.1f} "
            f"GFLOP/s = {100 * r['fraction']:4.1f}% of {r['matmul_gflops']:6.0f} GFLOP/s "
            f"({r['precision']} 1024^3 matmul)  peak RSS {r['peak_rss_mb']:6.0f} MB  "
            f"(first step {r['first_step_s']:.1f}s)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["1", "2", "all"], default="all")
    p.add_argument("--precision", choices=["float32", "bf16", "fp16", "all"], default="all",
                   help="'all' = float32 and bf16")
    p.add_argument("--jit", action="store_true", help="XLA-compile the train step")
    p.add_argument("--jit_both", action="store_true", help="with --config/--precision all: also XLA")
    p.add_argument("--steps", type=int, default=0, help="steps per timed chunk (default 5 for "
                   "config 1, 2 for config 2)")
    p.add_argument("--chunks", type=int, default=6, help="timed chunks; the best one is reported")
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    configs = ["1", "2"] if args.config == "all" else [args.config]
    precisions = ["float32", "bf16"] if args.precision == "all" else [args.precision]
    jits = [False, True] if args.jit_both else [args.jit]
    cases = [(c, pr, j) for c in configs for pr in precisions for j in jits]
    if len(cases) == 1:
        c, pr, j = cases[0]
        r = run_case(c, pr, j, args.steps or (5 if c == "1" else 2), args.warmup, args.chunks)
        print(_fmt(r), flush=True)
        return
    here = os.path.abspath(__file__)
    for c, pr, j in cases:
        cmd = [sys.executable, here, f"--config={c}", f"--precision={pr}", f"--warmup={args.warmup}",
               f"--chunks={args.chunks}"]
        cmd += ["--jit"] if j else []
        cmd += [f"--steps={args.steps}"] if args.steps else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("config")]
        print(lines[-1] if lines else f"config {c} {pr} xla={j}: FAILED\n{out.stderr[-2000:]}",
              flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
