"""Training across processes and machines: ``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.

Every worker runs the same ``train`` stage with its own ``TF_CONFIG``; they train in
sync (gradients all-reduced each step) and so end with identical weights. Only the
chief (task ``chief``, or ``worker`` 0 when there is none) goes on to fit, save, log
and register the model, as a single process would; the others write nothing.

Keras 3's ``model.fit`` fails under this strategy (a ``PerReplica`` conversion error,
keras-team/keras#20585), so training here is a plain synchronous loop: ``strategy.run``
over a distributed dataset, the loss averaged over the global batch. Each worker reads
its own shard of the training files. All workers run the same number of steps (their
datasets repeat), and early stopping decides on all-reduced validation sums, so no
worker can wait forever on a collective that another has left.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from crackcls.data.decoded import decoded_images
from crackcls.data.pipeline import decoded_dataset
from crackcls.data.splitting import Item
from crackcls.model import runtime
from crackcls.model.build import adam, from_scratch, learning_rate_schedule, rebuilt, unfreeze_top
from crackcls.model.settings import ModelConfig, TrainConfig
from crackcls.model.training import EpochHook, Trained, merge_phases, new_model, recalibrate_batchnorm, split_items
from crackcls.util.errors import CrackclsError

TF_CONFIG = "TF_CONFIG"
TASK_TYPES = ("chief", "worker")


@dataclass(frozen=True)
class Task:
    type: str
    index: int
    workers: int  # chief + workers in the cluster

    @property
    def is_chief(self) -> bool:
        return self.type == "chief" or (self.type == "worker" and self.index == 0 and not self._has_chief)

    _has_chief: bool = False


def task(environ: dict[str, str] | None = None) -> Task | None:
    """This process's place in the cluster ``TF_CONFIG`` describes; None without one."""
    raw = (environ if environ is not None else os.environ).get(TF_CONFIG, "").strip()
    if not raw:
        return None
    try:
        spec = json.loads(raw)
        cluster, me = spec["cluster"], spec["task"]
        sizes = {kind: len(cluster.get(kind, [])) for kind in TASK_TYPES}
        kind, index = str(me["type"]), int(me["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CrackclsError(f"{TF_CONFIG} is not a valid cluster spec ({exc}); see docs/scaling-out.md") from None
    if kind not in TASK_TYPES or not 0 <= index < sizes[kind]:
        raise CrackclsError(f"{TF_CONFIG}: task {kind}:{index} is not one of the cluster's chief/worker tasks")
    return Task(kind, index, sum(sizes.values()), _has_chief=sizes["chief"] > 0)


def multi_worker(environ: dict[str, str] | None = None) -> bool:
    """Whether ``TF_CONFIG`` puts this process in a cluster of more than one training task."""
    me = task(environ)
    return me is not None and me.workers > 1


def _shard(items: Sequence[Item], context: tf.distribute.InputContext) -> list[Item]:
    return list(items[context.input_pipeline_id :: context.num_input_pipelines])


def _distributed_batches(
    strategy: tf.distribute.Strategy, items: Sequence[Item], size: int, global_batch: int, seed: int | None, base: Path,
) -> Iterator:
    """Endless per-replica batches: each input pipeline decodes only its own shard of the files, once (the decoded-image cache)."""

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = _shard(items, context)
        batch = context.get_per_replica_batch_size(global_batch)
        shard_seed = None if seed is None else seed + context.input_pipeline_id
        decoded = decoded_images([it.path for it in shard], size, base=base, desc=f"decode shard {context.input_pipeline_id}")
        ds = decoded_dataset(decoded, batch, [it.label for it in shard], shuffle_seed=shard_seed)
        return ds.repeat()

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


class SyncLoop:
    """One optimiser and the compiled train / validation steps of a model under a strategy."""

    def __init__(
        self, strategy: tf.distribute.Strategy, model: keras.Model, optimizer: keras.optimizers.Optimizer, global_batch: int,
        label_smoothing: float = 0.0,
    ):  # fmt: skip
        self.strategy, self.model, self.optimizer, self.global_batch = strategy, model, optimizer, global_batch
        self.loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing, reduction=None)
        self.train_step = tf.function(self._train_step)
        self.val_step = tf.function(self._val_step)

    def _sums(self, labels: tf.Tensor, probs: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        per_example = self.loss(labels[:, None], probs)
        correct = tf.cast(tf.equal(tf.cast(probs[:, 0] >= 0.5, tf.float32), labels), tf.float32)
        return per_example, tf.reduce_sum(per_example), tf.reduce_sum(correct), tf.cast(tf.size(labels), tf.float32)

    def _train_step(self, iterator: Iterator) -> list[tf.Tensor]:
        def step(images: tf.Tensor, labels: tf.Tensor):
            with tf.GradientTape() as tape:
                probs = self.model(images, training=True)
                per_example, loss_sum, correct, count = self._sums(labels, probs)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch)
            variables = self.model.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss_sum, correct, count

        images, labels = next(iterator)
        sums = self.strategy.run(step, args=(images, labels))
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums]

    def _val_step(self, iterator: Iterator) -> list[tf.Tensor]:
        def step(images: tf.Tensor, labels: tf.Tensor):
            return self._sums(labels, self.model(images, training=False))[1:]

        images, labels = next(iterator)
        sums = self.strategy.run(step, args=(images, labels))
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None) for s in sums]

    def epoch(self, step, iterator: Iterator, steps: int) -> tuple[float, float]:
        totals = np.zeros(3)
        for _ in range(steps):
            totals += np.array([float(v) for v in step(iterator)])
        loss_sum, correct, count = totals
        return loss_sum / max(count, 1.0), correct / max(count, 1.0)


def _fit(
    loop: SyncLoop, train: tuple[Iterator, int], val: tuple[Iterator, int] | None, epochs: int, patience: int,
    first_epoch: int, log_epoch,
) -> tuple[dict[str, list[float]], int]:  # fmt: skip
    """Epochs of synchronous steps with early stopping (restoring the best weights); history and steps run."""
    history: dict[str, list[float]] = {}
    best, best_weights, waited, steps = math.inf, None, 0, 0
    for epoch in range(first_epoch, first_epoch + epochs):
        logs = dict(zip(("loss", "accuracy"), loop.epoch(loop.train_step, *train)))
        steps += train[1]
        if val is not None:
            logs.update(zip(("val_loss", "val_accuracy"), loop.epoch(loop.val_step, *val)))
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        log_epoch(epoch + 1, logs)
        monitored = logs["val_loss" if val is not None else "loss"]  # identical on every worker: all-reduced
        if monitored < best:
            best, best_weights, waited = monitored, loop.model.get_weights(), 0
        else:
            waited += 1
            if waited >= patience:  # as Keras's EarlyStopping counts
                break
    if best_weights is not None:
        loop.model.set_weights(best_weights)
    return history, steps


def _barrier(strategy: tf.distribute.Strategy) -> None:
    """Every worker waits here until the chief has written its outputs, so that all stop together.

    A worker that simply exited would stop sending heartbeats while the chief still runs,
    and TensorFlow's coordination service then reports it as crashed.
    """
    tf.function(lambda: strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.constant(1.0)), axis=None))()


def _steps(n_items: int, global_batch: int) -> int:
    return max(1, math.ceil(n_items / global_batch))


@dataclass
class Cluster:
    """This process's part in a multi-worker run: the strategy, and who it is among the workers."""

    strategy: tf.distribute.Strategy
    me: Task

    @property
    def is_chief(self) -> bool:
        return self.me.is_chief

    def describe(self) -> dict[str, str]:
        """Tags for the MLflow run: the strategy and the size of the cluster."""
        replicas = str(self.strategy.num_replicas_in_sync)
        return {"strategy": "MultiWorkerMirroredStrategy", "workers": str(self.me.workers), "replicas": replicas}

    def fit(self, model: ModelConfig, train: TrainConfig, workspace: Path, on_epoch: EpochHook | None = None) -> Trained:
        """Train in sync with the other workers; the chief gets the trained model, ready to save.

        ``on_epoch`` runs on the chief only. Every worker prints its per-epoch losses, which
        are all-reduced and so identical on every worker.
        """
        me, strategy = self.me, self.strategy
        if train.hard_negatives.epochs > 0:
            raise CrackclsError("train.hard_negatives is single-process only: set train.hard_negatives.epochs: 0 for multi-worker training")
        global_batch = train.batch_size * strategy.num_replicas_in_sync
        train_items, val_items = split_items(workspace, "train"), split_items(workspace, "val")
        if len(train_items) < me.workers:
            raise CrackclsError(f"{len(train_items)} training images cannot be shared among {me.workers} workers")
        if val_items and len(val_items) < me.workers:
            val_items = []  # too few to shard: early stopping watches the training loss, as with data.split.val: 0
        size, seed, scratch = model.image_size, train.seed, from_scratch(model)
        with strategy.scope():
            crack = new_model(model, train, workspace)  # seeded: the same initial weights on every worker

        steps = _steps(len(train_items), global_batch)
        train_batches = (_distributed_batches(strategy, train_items, size, global_batch, seed, workspace), steps)
        val_batches = (_distributed_batches(strategy, val_items, size, global_batch, None, workspace), _steps(len(val_items), global_batch)) if val_items else None  # fmt: skip

        def log_epoch(epoch: int, logs: dict[str, float]) -> None:
            print(f"distributed: {me.type} {me.index} epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in logs.items()), flush=True)
            if me.is_chief and on_epoch is not None:
                on_epoch(epoch, logs)

        def loop(learning_rate, weight_decay: float = 0.0, label_smoothing: float = 0.0) -> SyncLoop:
            with strategy.scope():
                optimizer = adam(learning_rate, weight_decay)
            return SyncLoop(strategy, crack.model, optimizer, global_batch, label_smoothing)

        started = time.perf_counter()
        params: dict[str, str] = {}
        if scratch:  # every layer, with the from-scratch recipe
            recipe = train.scratch
            schedule = learning_rate_schedule(recipe.learning_rate, recipe.schedule, steps, train.epochs, recipe.warmup_epochs)
            history, ran = _fit(loop(schedule, recipe.weight_decay, recipe.label_smoothing), train_batches, val_batches, train.epochs, train.patience, 0, log_epoch)
            phases = [("scratch", history)]
        else:
            history, ran = _fit(loop(train.learning_rate), train_batches, val_batches, train.epochs, train.patience, 0, log_epoch)
            phases = [("frozen", history)]
            if model.fine_tune_layers > 0 and train.fine_tune_epochs > 0:
                with strategy.scope():
                    params["fine_tune_layers_unfrozen"] = str(unfreeze_top(crack.backbone, model.fine_tune_layers))
                first = len(history["loss"])
                history, more = _fit(loop(train.fine_tune_learning_rate), train_batches, val_batches,
                                     train.fine_tune_epochs, train.patience, first, log_epoch)  # fmt: skip
                phases.append(("fine_tune", history))
                ran += more
        seconds = time.perf_counter() - started
        print(f"distributed: {me.type} {me.index} of {me.workers} done: {ran} steps in {seconds:.1f} s"
              + ("" if me.is_chief else "; the chief writes the outputs"), flush=True)  # fmt: skip
        merged = merge_phases(phases)
        metrics = {"training_time_s": round(seconds, 2), "epochs_trained": len(merged["loss"]), "steps": ran}
        trained = Trained(crack, merged, metrics, params)
        if not me.is_chief:
            return trained
        trained.crack = rebuilt(crack, model, train)
        if scratch:
            metrics["batchnorm_recalibration_images"] = recalibrate_batchnorm(trained.crack, model, train, train_items, workspace)
        return trained


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """Join the cluster ``TF_CONFIG`` describes; on leaving, wait until every worker (the chief last) is done."""
    me = task()
    if me is None:
        raise CrackclsError(f"{TF_CONFIG} is not set: this process is in no cluster")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # first: collectives must be set up before other TF work
    runtime.configure_precision()
    yield Cluster(strategy, me)
    _barrier(strategy)


