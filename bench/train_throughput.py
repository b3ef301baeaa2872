"""Training throughput: samples/s in steady state, model FLOPs, fraction of the matmul rate, RSS.

  python bench/train_throughput.py                      # every config x precision, subprocesses
  python bench/train_throughput.py --config=1 --precision=bf16 [--jit] [--threads=2,2]
  python bench/train_throughput.py --config=1 --precision=bf16 --ablate   # what each lever gives

Configs: (1) frame_sizes 16,4, dim 256, 1 GRU layer/tier, seq_len 1024, batch 16, Q 256;
(2) the paper's 3-tier model: frame_sizes 8,2, dim 1024, seq_len 512, batch 16, Q 256.
Batches are random codes (throughput does not depend on the values). One target = one sample,
so samples/step = batch * seq_len. Steps are timed in chunks; the best chunk is reported (the
machine's speed when nothing else competes for its cores) with the median and the load average.
Peak memory is the process's max RSS, so the default mode runs every case in its own process.

`--ablate` builds, in one process, the model as shipped and one variant per lever with that
lever undone (naive embedding matmul instead of the lookup table, autodiff through a plain
while_loop instead of the hand-written RNN backward pass, TF's sparse softmax cross-entropy,
an IndexedSlices gather gradient), then times them interleaved, so that a shared machine's
noise hits all of them alike.
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
PRECISION_DTYPE = {"float32": "float32", "bf16": "bfloat16", "fp16": "float16"}


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
    total += 2 * frame_sizes[-1] * q * emb * dim                      # lookup table, per step
    total += n * (2 * 2 * dim * dim + 2 * dim * q)                    # 2 hidden + output
    return total / n


def matmul_rate(dtype_name: str, seconds: float = 2.0) -> float:
    """FLOP/s of 1024x1024 @ 1024x1024 tf.matmul in `dtype_name` (best of 1/4 s chunks)."""
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
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 0.25:
            run(a).numpy()
            n += 1
        best = max(best, n * len(bs) * 2 * 1024 ** 3 / (time.perf_counter() - start))
    return best


def make_trainer_and_batch(config_id: str, precision: str, jit: bool):
    import numpy as np
    import tensorflow as tf
    from pipelines.windows import tbptt_windows
    from samplernn_tf.config import Config, DataConfig, ModelConfig, TrainConfig
    from samplernn_tf.trainer import Trainer

    c = CONFIGS[config_id]
    config = Config(model=ModelConfig(frame_sizes=c["frame_sizes"], dim=c["dim"], q_levels=256),
                    data=DataConfig(seq_len=c["seq_len"]),
                    train=TrainConfig(batch_size=c["batch"], mixed_precision=precision))
    fs, L, B = c["frame_sizes"], c["seq_len"], c["batch"]
    w = tbptt_windows(np.random.default_rng(0).integers(0, 256, (B, L + fs[0])).astype(np.int32),
                      L, fs)
    batch = {"tier_inputs": tuple(t[:, 0] for t in w["tier_inputs"]),
             "sample_inputs": w["sample_inputs"][:, 0], "targets": w["targets"][:, 0],
             "weights": tf.ones([B, L]), "reset": tf.zeros([B], tf.bool)}
    return Trainer(config, jit_compile=jit), batch


def time_chunks(trainers: dict, batch, steps: int, chunks: int) -> dict:
    """Interleaved timing: {name: sorted seconds/step of each chunk}."""
    times = {name: [] for name in trainers}
    for _ in range(chunks):
        for name, trainer in trainers.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                m = trainer.train_step(batch)
            m["bits_per_sample"].numpy()
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: sorted(v) for k, v in times.items()}


def run_case(config_id, precision, jit, steps, warmup, chunks) -> dict:
    trainer, batch = make_trainer_and_batch(config_id, precision, jit)
    c = CONFIGS[config_id]
    t0 = time.perf_counter()
    trainer.train_step(batch)["bits_per_sample"].numpy()
    trace_s = time.perf_counter() - t0
    for _ in range(warmup):
        trainer.train_step(batch)["bits_per_sample"].numpy()
    load_before = os.getloadavg()[0]
    t = time_chunks({"model": trainer}, batch, steps, chunks)["model"]
    samples = c["batch"] * c["seq_len"]
    rate = samples / t[0]
    flops = model_flops_per_sample(c["frame_sizes"], c["dim"], c["seq_len"], c["batch"])
    mm = matmul_rate(PRECISION_DTYPE[precision])
    return {"config": config_id, "precision": precision, "jit": jit, "samples_per_s": rate,
            "median_samples_per_s": samples / t[len(t) // 2],
            "load": (load_before + os.getloadavg()[0]) / 2, "step_ms": t[0] * 1e3,
            "first_step_s": trace_s, "fwd_flops_per_sample": flops,
            "train_gflops": 3 * flops * rate / 1e9, "matmul_gflops": mm / 1e9,
            "fraction": 3 * flops * rate / mm,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _fmt(r: dict) -> str:
    return (f"config {r['config']} {r['precision']:>7} xla={str(r['jit']):5}  "
            f"{r['samples_per_s']:7.0f} samples/s (median {r['median_samples_per_s']:6.0f}, "
            f"load {r['load']:.1f})  {r['step_ms']:6.1f} ms/step  "
            f"fwd {r['fwd_flops_per_sample'] / 1e6:6.2f} MFLOP/sample  train {r['train_gflops']:6.1f} "
            f"GFLOP/s = {100 * r['fraction']:4.1f}% of {r['matmul_gflops']:6.0f} GFLOP/s "
            f"({r['precision']} 1024^3 matmul)  peak RSS {r['peak_rss_mb']:6.0f} MB  "
            f"(first step {r['first_step_s']:.1f}s)")


# ------------------------------------------------------------------------------- ablation --

def _autodiff_gru_sequence(xp, h0, u, b):
    """The GRU with TF autodiff through a plain while_loop (what the hand-written pass replaces)."""
    import tensorflow as tf
    from samplernn_tf import layers
    return tf.scan(lambda h, x: layers.gru_cell(x, h, u, b), xp, initializer=h0)


def _indexed_slices_gather_sum(table, codes):
    import tensorflow as tf
    f, q, d = table.shape
    idx = codes + tf.range(f, dtype=codes.dtype) * q
    return tf.reduce_sum(tf.gather(tf.reshape(table, [f * q, d]), idx), axis=-2)


def ablate(config_id, precision, steps, chunks, only=""):
    import contextlib
    import tensorflow as tf
    from samplernn_tf import layers, losses, model as model_lib

    @contextlib.contextmanager
    def patched(obj, name, value):
        old = getattr(obj, name)
        setattr(obj, name, value)
        try:
            yield
        finally:
            setattr(obj, name, old)

    tf_ce = lambda logits, labels: tf.nn.sparse_softmax_cross_entropy_with_logits(  # noqa: E731
        labels=labels, logits=logits)
    naive = lambda self, codes, params: self.first_naive(codes)  # noqa: E731
    variants = {
        "as shipped": contextlib.nullcontext(),
        "naive embedding matmul": patched(model_lib.SampleMLP, "_first_layer", naive),
        "autodiff RNN loop": patched(layers, "gru_sequence", _autodiff_gru_sequence),
        "tf sparse softmax CE": patched(losses, "sparse_softmax_nll", tf_ce),
        "IndexedSlices gather grad": patched(model_lib, "gather_sum", _indexed_slices_gather_sum),
        "XLA train step (added)": contextlib.nullcontext(),
    }
    if only:
        variants = {k: v for k, v in variants.items() if k == "as shipped" or k.startswith(only)}
    trainers, batch = {}, None
    for name, ctx in variants.items():
        with ctx:
            trainer, batch = make_trainer_and_batch(config_id, precision, name.startswith("XLA"))
            for _ in range(2):  # traces under the patch
                trainer.train_step(batch)["bits_per_sample"].numpy()
        trainers[name] = trainer
    c = CONFIGS[config_id]
    times = time_chunks(trainers, batch, steps, chunks)
    base = times["as shipped"][0]
    print(f"config {config_id} {precision}: best chunk (median), load {os.getloadavg()[0]:.1f}")
    for name, t in times.items():
        rate = c["batch"] * c["seq_len"] / t[0]
        print(f"  {name:28s} {t[0] * 1e3:7.1f} ms/step  {rate:7.0f} samples/s "
              f"(median {c['batch'] * c['seq_len'] / t[len(t) // 2]:7.0f})  x{t[0] / base:.2f} time")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["1", "2", "all"], default="all")
    p.add_argument("--precision", choices=["float32", "bf16", "fp16", "all"], default="all",
                   help="'all' = float32 and bf16")
    p.add_argument("--jit", action="store_true", help="XLA-compile the train step")
    p.add_argument("--jit_both", action="store_true", help="run each case with and without XLA")
    p.add_argument("--ablate", action="store_true", help="time each lever undone (one config)")
    p.add_argument("--only", default="", help="with --ablate: only variants starting with this")
    p.add_argument("--steps", type=int, default=0, help="steps per timed chunk (default 5 for "
                   "config 1, 2 for config 2)")
    p.add_argument("--chunks", type=int, default=6, help="timed chunks; the best one is reported")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", default="", help="'inter,intra' op thread pool sizes (default: TF's)")
    args = p.parse_args(argv)
    configs = ["1", "2"] if args.config == "all" else [args.config]
    precisions = ["float32", "bf16"] if args.precision == "all" else [args.precision]
    jits = [False, True] if args.jit_both else [args.jit]
    cases = [(c, pr, j) for c in configs for pr in precisions for j in jits]
    if len(cases) == 1 or args.ablate:
        import tensorflow as tf
        if args.threads:
            inter, intra = (int(t) for t in args.threads.split(","))
            tf.config.threading.set_inter_op_parallelism_threads(inter)
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            print(f"threads inter={inter} intra={intra}")
        c, pr, j = cases[0]
        steps = args.steps or (5 if c == "1" else 2)
        if args.ablate:
            ablate(c, pr, steps, args.chunks, args.only)
        else:
            print(_fmt(run_case(c, pr, j, steps, args.warmup, args.chunks)), flush=True)
        return
    here = os.path.abspath(__file__)
    for c, pr, j in cases:
        cmd = [sys.executable, here, f"--config={c}", f"--precision={pr}", f"--warmup={args.warmup}",
               f"--chunks={args.chunks}"]
        cmd += ["--jit"] if j else []
        cmd += [f"--steps={args.steps}"] if args.steps else []
        cmd += [f"--threads={args.threads}"] if args.threads else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("config")]
        print(lines[-1] if lines else f"config {c} {pr} xla={j}: FAILED\n{out.stderr[-2000:]}",
              flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
