"""Data-parallel scaling: training samples/s under --strategy=default / mirrored / multi_worker.

  python bench/scaling.py                  # every case, each in its own process(es)
  python bench/scaling.py --config=small --steps=40

Cases, at the same global batch:
  default                 one device;
  mirrored, 1 device      MirroredStrategy over one CPU (the cost of the strategy alone);
  mirrored, 2 devices     over 2 logical CPU devices of this machine;
  multi_worker, 2 procs   MultiWorkerMirroredStrategy, 2 processes on 127.0.0.1 (gRPC
                          collectives), each feeding its own half of the rows.

Each case runs the training job's own step path: the per-worker `pipelines.dataset`
iterator over an in-memory corpus of random codes, `distribute.split_batch`, the Trainer's
train step, and (multi_worker) the per-step stop vote that `training.run` makes. Steps are
timed after a warm-up; samples/s = steps * global batch * seq_len / seconds.

This machine has 2 CPU cores and no GPU: every replica and every process shares the same two
cores, so these figures cannot show a speed-up. They show what distribution costs per step
(all-reduce, replica threads, gRPC round trips) on top of the same arithmetic. Real scaling
needs one device per replica (GPUs, or one machine per worker).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    # name: (frame_sizes, dim, seq_len, global batch)
    "small": ((16, 4), 64, 256, 8),
    "medium": ((16, 4), 256, 512, 16),
}


def worker(args) -> None:
    """One process of one case; prints 'RESULT {json}' (the chief, or the only process)."""
    import tensorflow as tf
    if args.devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * args.devices)
    sys.path.insert(0, ROOT)
    import numpy as np
    from pipelines import dataset as dataset_lib
    from samplernn_tf import distribute
    from samplernn_tf.config import Config, DataConfig, ModelConfig, TrainConfig
    from samplernn_tf.trainer import Trainer

    strategy = distribute.make_strategy(args.strategy)
    topo = distribute.topology(strategy)
    frame_sizes, dim, seq_len, batch = CONFIGS[args.config]
    config = Config(model=ModelConfig(frame_sizes=frame_sizes, dim=dim, emb_size=dim, q_levels=256),
                    data=DataConfig(seq_len=seq_len),
                    train=TrainConfig(batch_size=batch, mixed_precision=args.precision))
    rng = np.random.default_rng(0)
    corpus = dataset_lib.Corpus(names=[f"f{i}" for i in range(2 * batch)],
                                codes=[rng.integers(0, 256, 16000 * 20).astype(np.int16)
                                       for _ in range(2 * batch)], sample_rate=16000)
    rows = batch // topo.num_workers
    iterator = iter(dataset_lib.train_dataset(corpus, config, rows, seed=1,
                                              num_shards=topo.num_workers,
                                              shard_index=topo.worker_index))
    trainer = Trainer(config, strategy)
    if strategy.num_replicas_in_sync > 1:
        trainer.use_input_spec(distribute.distributed_spec(strategy, topo, iterator.element_spec))

    def step():
        metrics = trainer.train_step(distribute.split_batch(strategy, topo, next(iterator)))
        distribute.any_worker(strategy, topo, [False, False, False])  # training.run's stop vote
        return metrics

    for _ in range(args.warmup):
        float(step()["bits_per_sample"])
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            metrics = step()
        float(metrics["bits_per_sample"])
        times.append(time.perf_counter() - start)
    best = min(times)
    if topo.is_chief:
        print("RESULT " + json.dumps({
            "samples_per_s": args.steps * batch * seq_len / best,
            "ms_per_step": 1000 * best / args.steps, "replicas": strategy.num_replicas_in_sync}))


def run_case(args, strategy, devices=1, processes=1):
    base = [sys.executable, os.path.abspath(__file__), "--worker", f"--strategy={strategy}",
            f"--devices={devices}", f"--config={args.config}", f"--precision={args.precision}",
            f"--steps={args.steps}", f"--warmup={args.warmup}", f"--repeats={args.repeats}"]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    if processes == 1:
        envs = [env]
    else:
        sys.path.insert(0, ROOT)
        from samplernn_tf import distribute
        envs = [dict(env, TF_CONFIG=c) for c in distribute.local_tf_configs(processes)]
    procs = [subprocess.Popen(base, env=e, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for e in envs]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (out, err) in zip(procs, outs):
        if p.returncode:
            raise RuntimeError(f"{strategy} failed:\n{err[-3000:]}")
    line = next(l for out, _ in outs for l in out.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS) + ["all"], default="all")
    p.add_argument("--precision", choices=["float32", "bf16"], default="float32")
    p.add_argument("--steps", type=int, default=0, help="steps per timed repeat (default: by config)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--strategy", default="default", help=argparse.SUPPRESS)
    p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"{os.cpu_count()} CPU cores, no GPU. Replicas and processes share these cores: the "
          f"figures show the per-step cost of distribution, not a speed-up.")
    user_steps = args.steps
    for name in sorted(CONFIGS) if args.config == "all" else [args.config]:
        args.config = name
        steps = args.steps = user_steps or {"small": 40, "medium": 8}[name]
        fs, dim, seq_len, batch = CONFIGS[name]
        print(f"\nconfig {name}: frame_sizes {','.join(map(str, fs))}, dim {dim}, seq_len {seq_len}, "
              f"global batch {batch}, Q 256, {args.precision}; best of {args.repeats} x {steps} steps")
        base = None
        for label, strategy, devices, processes in (
                ("default (1 device)", "default", 1, 1),
                ("mirrored, 1 device", "mirrored", 1, 1),
                ("mirrored, 2 logical CPUs", "mirrored", 2, 1),
                ("multi_worker, 2 processes", "multi_worker", 1, 2)):
            r = run_case(args, strategy, devices, processes)
            base = base or r["samples_per_s"]
            print(f"  {label:28s} {r['replicas']} replica(s)  {r['samples_per_s']:9.0f} samples/s  "
                  f"{r['ms_per_step']:8.1f} ms/step  ({r['samples_per_s'] / base:.2f}x default)  "
                  f"load {os.getloadavg()[0]:.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
