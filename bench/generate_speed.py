"""Generation speed: samples/s in process and through a SavedModel, against this machine's
matrix-vector limit.

    .venv/bin/python bench/generate_speed.py [--quick] [--repeats=3]

For [16,4]/dim 256 and [8,2]/dim 1024 (Q=256, GRU, random weights) at batch 1 and 16, prints
generated samples/s (all rows), the real-time factor at 16 kHz (total and per stream), the
model's FLOPs per generated sample, and the fraction of the matrix-vector limit: the rate of a
[b,1024]x[1024,3072] matmul loop, divided by FLOPs per sample. Each figure is the best of
--repeats timed calls, and the limit is re-measured between them (interleaved), because the
machine may be shared; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

RATE = 16000
CASES = [((16, 4), 256), ((8, 2), 1024)]


def model_flops_per_sample(frame_sizes, dim, q_levels, rnn_layers=1, gates=3, emb_adds=True):
    """Multiply-adds x 2 per generated sample: frame tiers amortized over their frames."""
    top = frame_sizes[0]
    ratios = [frame_sizes[k] // frame_sizes[k + 1] for k in range(len(frame_sizes) - 1)] + [frame_sizes[-1]]
    macs = 0.0
    for f, r in zip(frame_sizes, ratios):
        per_step = f * dim                                            # expand
        per_step += rnn_layers * (dim * gates * dim) * 2              # input projection + recurrent
        per_step += dim * r * dim                                     # upsampling
        macs += per_step * (top // f)
    per_frame_mlp = 2 * dim * dim + dim * q_levels                    # hidden x2 + logits
    if emb_adds:
        per_frame_mlp += frame_sizes[-1] * dim / 2                    # table gather-sum (adds)
    macs += per_frame_mlp * top
    return 2.0 * macs / top


class MatvecChain:
    """A [rows,1024]x[1024,3072] matmul chain in one tf.function (no Python per step): the
    matrix-vector (rows=1) or small-matrix rate this machine sustains from cache."""

    def __init__(self, rows: int, steps: int = 1500):  # ~1-2 s: as long as a timed generation
        self.rows, self.steps = rows, steps
        self.w = tf.Variable(tf.random.normal([1024, 3072], stddev=0.02))
        self.x = tf.random.normal([rows, 1024])

        @tf.function
        def chain(x):
            def body(i, x):
                return i + 1, tf.tanh(tf.matmul(x, self.w)[:, :1024])
            return tf.while_loop(lambda i, x: i < steps, body, (0, x))[1]
        self.chain = chain
        chain(self.x)

    def rate(self) -> float:
        """FLOP/s of one timed run."""
        return 2.0 * self.rows * 1024 * 3072 * self.steps / _timed(lambda: self.chain(self.x).numpy())


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build(frame_sizes, dim):
    import keras
    from samplernn_tf.config import Config, DataConfig, ModelConfig
    from samplernn_tf.model import SampleRNN
    keras.utils.set_random_seed(0)
    config = Config(model=ModelConfig(frame_sizes=frame_sizes, dim=dim, q_levels=256),
                    data=DataConfig(seq_len=512 if 512 % frame_sizes[0] == 0 else frame_sizes[0] * 32))
    return config, SampleRNN(config.model)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter runs, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames_per_call", type=int, default=32, help="as Generator's default")
    parser.add_argument("--jit", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    from samplernn_tf import export, generation
    jit = {"auto": None, "on": True, "off": False}[args.jit]

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}, intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
    chains = {b: MatvecChain(b) for b in (1, 16)}
    for b, chain in chains.items():
        rate = max(chain.rate() for _ in range(repeats))
        print(f"matrix-vector limit: [{b},1024]x[1024,3072] matmul chain = {rate / 1e9:.2f} GFLOP/s")
    print("(each row below re-measures it, interleaved with its own timings)\n")
    header = (f"{'model':>15} {'batch':>5} {'path':>10} {'samples/s':>10} {'RTF total':>9} "
              f"{'RTF/row':>8} {'MFLOP/smp':>9} {'GFLOP/s':>8} {'limit/s':>8} {'of limit':>8}")
    print(header)
    for frame_sizes, dim in CASES:
        config, model = build(frame_sizes, dim)
        flops = model_flops_per_sample(frame_sizes, dim, 256)
        gen = generation.Generator(model, config, jit=jit, frames_per_call=args.frames_per_call)
        module = export.ServingModule(model, config, step=0, jit=jit,
                                      frames_per_call=args.frames_per_call)
        path = os.path.join(tempfile.mkdtemp(prefix="genbench_"), "1")
        export.save(module, path)
        signature = tf.saved_model.load(path).signatures["generate"]
        for batch in (1, 16):
            # About 2-4 s per timed call on an idle 2-core machine.
            seconds = 2.0 if dim <= 256 else 0.25
            n = int(RATE * seconds / (1 if batch == 1 else (4 if dim <= 256 else 2)))
            if args.quick:
                n //= 4
            n -= n % frame_sizes[0]
            runs = {
                "in-process": lambda n=n, b=batch: gen.generate(n, b, 1.0, 0),
                "SavedModel": lambda n=n, b=batch: signature(
                    num_samples=tf.constant(n), batch_size=tf.constant(b),
                    temperature=tf.constant(1.0), seed=tf.constant(0, tf.int64))["codes"].numpy(),
            }
            for fn in runs.values():
                fn()  # trace / compile
            best = {name: float("inf") for name in runs}
            limit_rate = 0.0
            for _ in range(repeats):  # interleaved, so load spikes hit all three alike
                for name, fn in runs.items():
                    best[name] = min(best[name], _timed(fn))
                limit_rate = max(limit_rate, chains[batch].rate())
            limit = limit_rate / flops
            for name in runs:
                rate = n * batch / best[name]
                print(f"{str(list(frame_sizes)) + '/' + str(dim):>15} {batch:>5} {name:>10} "
                      f"{rate:>10.0f} {rate / RATE:>9.3f} {rate / batch / RATE:>8.3f} "
                      f"{flops / 1e6:>9.2f} {limit_rate / 1e9:>8.2f} {limit:>8.0f} {rate / limit:>8.1%}")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}. GFLOP/s: the [batch,1024]x[1024,3072] "
          f"matmul chain; limit/s = that / MFLOP per sample; RTF = generated audio seconds per "
          f"second at {RATE} Hz (total over rows, and per row).")


if __name__ == "__main__":
    main()
