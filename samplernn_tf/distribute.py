"""Distribution strategies and the per-worker / per-replica bookkeeping of a training job.

`--strategy`:
  default       one device (the first GPU if there is one, else the CPU).
  mirrored      MirroredStrategy over this machine's GPUs (over its logical CPUs if it has no
                GPU: one CPU, unless tests or benchmarks split it into logical devices).
  multi_worker  MultiWorkerMirroredStrategy; the cluster and this process's task come from the
                TF_CONFIG environment variable (see docs/distributed.md).
  tpu           TPUStrategy through TPUClusterResolver (TPU_NAME, or a local TPU VM). Written to
                the documented API but never run here: no TPU was available.

Rows. The global batch of R rows is owned row by row: worker w (of W) builds its own input
pipeline for rows w*R/W .. (w+1)*R/W - 1 (`pipelines.dataset.train_dataset(num_shards=W,
shard_index=w)`), and `split_batch` hands local replica k its fixed slice of those rows. A row
therefore stays on one replica for the whole run, with its RNN state, and the rows are the same
streams as on one device, whatever the topology.

We do not use `experimental_distribute_dataset` for this: under MultiWorkerMirroredStrategy it
treats each worker's batch as the global batch and rebatches it into W*R pieces consumed by
successive steps (`tf.data.experimental.rebatch`), which would move rows between replicas from
one step to the next. Splitting a plain per-worker iterator also keeps that iterator
checkpointable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import tensorflow as tf
from absl import logging

from samplernn_tf.errors import UserError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
WORKER_TEMP_PREFIX = "workertemp_"


def enable_gpu_memory_growth() -> None:
    """Lets TensorFlow allocate GPU memory as needed instead of all of it at start-up.

    Must run before TensorFlow initializes its devices (binaries call it first thing).
    """
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as e:  # devices already initialized: keep going, say why
            logging.warning("could not enable memory growth on %s: %s", gpu.name, e)


def local_tf_configs(num_processes: int, chief_job: bool = False) -> list[str]:
    """TF_CONFIG values for a multi-worker job on this machine (127.0.0.1, free ports).

    For trying `--strategy=multi_worker` locally, and for the tests and benchmarks. Task 0 is
    the chief: a `chief` task if `chief_job`, else `worker` 0.

    Returns:
      One JSON string per process, in task order.
    """
    socks = [socket.socket() for _ in range(num_processes)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    addrs = [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    for s in socks:
        s.close()
    if chief_job:
        cluster = {"chief": addrs[:1], "worker": addrs[1:]}
        tasks = [("chief", 0)] + [("worker", i) for i in range(num_processes - 1)]
    else:
        cluster = {"worker": addrs}
        tasks = [("worker", i) for i in range(num_processes)]
    return [json.dumps({"cluster": cluster, "task": {"type": t, "index": i}}) for t, i in tasks]


def parse_tf_config(text: str | None) -> dict:
    """Checks a TF_CONFIG value for multi-worker training and returns it parsed.

    Raises:
      UserError: naming TF_CONFIG and what is wrong with it.
    """
    example = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise UserError(f"--strategy=multi_worker needs the cluster in the TF_CONFIG environment "
                        f"variable, which is not set; e.g. {example}")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e}); e.g. {example}") from e
    cluster, task = (cfg.get("cluster"), cfg.get("task")) if isinstance(cfg, dict) else (None, None)
    if not isinstance(cluster, dict) or not any(cluster.get(j) for j in ("chief", "worker")):
        raise UserError(f"TF_CONFIG has no cluster with 'chief' and/or 'worker' tasks; e.g. {example}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses):
            raise UserError(f"TF_CONFIG cluster[{job!r}] must be a list of 'host:port' strings, "
                            f"got {addresses!r}")
    if not isinstance(task, dict) or task.get("type") not in cluster or not isinstance(
            task.get("index"), int) or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise UserError(f"TF_CONFIG task {task!r} must name a job of the cluster "
                        f"({', '.join(cluster)}) and an index within it; e.g. {example}")
    if task["type"] not in ("chief", "worker"):
        raise UserError(f"TF_CONFIG task type {task['type']!r}: only 'chief' and 'worker' tasks "
                        f"train with --strategy=multi_worker")
    return cfg


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Builds the strategy named by --strategy (see the module docstring).

    For multi_worker this must run before TensorFlow executes any op in the process.

    Raises:
      UserError: unknown name, or a missing or invalid TF_CONFIG for multi_worker.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            devices = [d.name for d in gpus]
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            logging.info("--strategy=mirrored: no GPU found, %d replica(s) on CPU", len(devices))
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        parse_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":  # untested here: no TPU
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise UserError(f"--strategy: unknown value {name!r}; choose one of {', '.join(STRATEGIES)}")


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where this process sits in the job.

    Attributes:
      num_workers: W, processes that train together.
      worker_index: this worker's id in the cluster (the chief is 0), which is also its input
        shard and the first global replica id / num_local_replicas.
      is_chief: writes checkpoints, config.json and summaries.
      num_local_replicas: replicas (devices) of this worker.
      task: 'type_index' of this process ('' for a single worker), for temp-dir names.
    """

    num_workers: int
    worker_index: int
    is_chief: bool
    num_local_replicas: int
    task: str = ""

    @property
    def num_replicas(self) -> int:
        return self.num_workers * self.num_local_replicas

    @property
    def exact_resume(self) -> bool:
        """Whether this topology's checkpoints hold the RNN state and the data position.

        Only a single worker can: with W workers each has its own input pipeline and rows, and
        only the chief writes checkpoints.
        """
        return self.num_workers == 1


def topology(strategy: tf.distribute.Strategy) -> Topology:
    if strategy.num_replicas_in_sync == 1 and not isinstance(
            strategy, (tf.distribute.MultiWorkerMirroredStrategy, tf.distribute.MirroredStrategy)):
        return Topology(num_workers=1, worker_index=0, is_chief=True, num_local_replicas=1)
    local = len(strategy.extended.worker_devices)
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        spec = resolver.cluster_spec().as_dict()
        if spec:
            task_type, task_id = resolver.task_type, int(resolver.task_id)
            chiefs = len(spec.get("chief", []))
            workers = chiefs + len(spec.get("worker", []))
            # tf.distribute's id_in_cluster: the chief first, then the workers.
            index = task_id if task_type == "chief" else chiefs + task_id
            return Topology(num_workers=workers, worker_index=index, is_chief=index == 0,
                            num_local_replicas=local, task=f"{task_type}_{task_id}")
    if isinstance(strategy, tf.distribute.TPUStrategy):
        # One host feeds all cores of a single-host TPU; multi-host TPU pods are not handled.
        return Topology(num_workers=1, worker_index=0, is_chief=True, num_local_replicas=local)
    return Topology(num_workers=1, worker_index=0, is_chief=True, num_local_replicas=local)


def check_batch_size(batch_size: int, topo: Topology) -> None:
    from samplernn_tf.config import ConfigError
    if batch_size % topo.num_replicas:
        raise ConfigError(f"--batch_size: {batch_size} is not divisible by the {topo.num_replicas} "
                          f"replicas ({topo.num_workers} worker(s) x {topo.num_local_replicas} "
                          f"device(s)) of the distribution strategy")


def split_batch(strategy: tf.distribute.Strategy, topo: Topology, batch):
    """This worker's batch (its R/W rows) -> per-replica values, local replica k owning slice k.

    With one replica the batch is returned as it is.
    """
    if strategy.num_replicas_in_sync == 1:
        return batch
    n = topo.num_local_replicas
    rows = tf.nest.flatten(batch)[0].shape[0] // n
    first = topo.worker_index * n
    devices = strategy.extended.worker_devices

    def value_fn(ctx):
        k = ctx.replica_id_in_sync_group - first
        with tf.device(devices[k]):
            return tf.nest.map_structure(lambda t: t[k * rows:(k + 1) * rows], batch)

    return strategy.experimental_distribute_values_from_function(value_fn)


def distributed_spec(strategy: tf.distribute.Strategy, topo: Topology, element_spec):
    """The type spec of `split_batch` of a batch of `element_spec` (for Trainer.use_input_spec)."""
    zeros = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), element_spec)
    return tf.nest.map_structure(tf.type_spec_from_value, split_batch(strategy, topo, zeros))


class GlobalRnnState:
    """Checkpointable copies, one row per global row, of per-replica RNN-state variables.

    The state variables are ON_READ: each replica holds its own rows and a checkpoint of them
    would hold replica 0's only. With one worker, `variables` are plain [R, D] variables (the
    state variables themselves with one replica): `gather()` before saving, `scatter()` after
    restoring. The checkpoint then looks the same whatever the number of replicas.
    """

    def __init__(self, strategy: tf.distribute.Strategy, state_variables):
        self.strategy = strategy
        self.flat = tf.nest.flatten(state_variables)
        self.trivial = strategy.num_replicas_in_sync == 1
        if self.trivial:
            self.variables = list(self.flat)
        else:
            self.variables = [tf.Variable(self._global(v), trainable=False, name="rnn_state_global")
                              for v in self.flat]

    def _global(self, v):
        return tf.concat([tf.convert_to_tensor(c) for c in
                          self.strategy.experimental_local_results(v)], axis=0)

    def gather(self) -> None:
        if not self.trivial:
            for g, v in zip(self.variables, self.flat):
                g.assign(self._global(v))

    def scatter(self) -> None:
        if not self.trivial:
            for g, v in zip(self.variables, self.flat):
                parts = self.strategy.experimental_local_results(v)
                rows = g.shape[0] // len(parts)
                for k, c in enumerate(parts):
                    c.assign(g[k * rows:(k + 1) * rows])


def sum_over_workers(strategy: tf.distribute.Strategy, topo: Topology,
                     values: list[float]) -> list[float]:
    """Element-wise sum of `values` over all workers (a collective: every worker must call it)."""
    if topo.num_workers == 1:
        return [float(v) for v in values]
    fn = _SUMS.get(id(strategy))
    if fn is None:
        n = float(topo.num_local_replicas)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float64)])
        def fn(local):
            # Every local replica contributes local / n: the worker's share.
            return strategy.reduce(tf.distribute.ReduceOp.SUM,
                                   strategy.run(lambda x: x / n, args=(local,)), axis=None)

        _SUMS[id(strategy)] = fn
    return [float(x) for x in fn(tf.constant(values, tf.float64)).numpy()]


_SUMS = {}


def any_worker(strategy: tf.distribute.Strategy, topo: Topology, flags: list[bool]) -> list[bool]:
    """Element-wise OR of `flags` over all workers (a collective: every worker must call it).

    Stop decisions (a signal, a time limit) are local to one process; the other workers would
    wait forever in their next all-reduce if it stopped alone.
    """
    total = sum_over_workers(strategy, topo, [1.0 if f else 0.0 for f in flags])
    return [x > 0.5 for x in total]


def check_same_step(strategy: tf.distribute.Strategy, topo: Topology, step: int) -> None:
    """Raises UserError unless every worker restored the same step (i.e. shares the logdir)."""
    total = sum_over_workers(strategy, topo, [float(step)])[0]
    if abs(total - step * topo.num_workers) > 0.5:
        raise UserError(f"the workers resumed from different steps (this one from {step}): "
                        f"--logdir must be on a file system that every worker sees (GCS, NFS)")


def barrier(strategy: tf.distribute.Strategy, topo: Topology) -> None:
    """Returns once every worker has reached it."""
    any_worker(strategy, topo, [False])


def worker_temp_dir(directory: str, topo: Topology) -> str:
    """Where a non-chief worker writes the checkpoint it must save too (then deletes it)."""
    return os.path.join(directory, f"{WORKER_TEMP_PREFIX}{topo.task}")
