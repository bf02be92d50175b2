"""Training throughput against this machine's own peak: compact_cnn from scratch, before and after, side by side.

    python bench/throughput.py            # the shared 4,000-image sample, 96 px, batch 32
    python bench/throughput.py --quick    # a smoke run on the bundled sample

What it measures, each step in a fresh child process, all on the same decoded images:

- FLOPs per training image, counted from the model's layers (forward, plus the input
  and weight gradients of every convolution and dense layer but the first layer's input
  gradient).
- The peak: those same convolutions (forward, input gradient, filter gradient) at the
  run's batch size and precision, warm in one ``tf.function``, on every core, and
  nothing else. Training at that rate would spend all its time in its arithmetic.
- Training img/s over the epochs after the first, for the recipe as it was (stride-1
  stem, a new dataset iterator each epoch) and as it is (``params.yaml``'s
  ``compact_cnn`` settings, one endless iterator), and with XLA.
- Where a step goes: input only (the dataset alone) and compute only (one batch in
  memory, repeated), against the full training rate.

The share of the peak is FLOPs per image × img/s ÷ peak FLOP/s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import harness

EPOCHS = 4


def compact_settings(stem_stride: int | None) -> dict:
    """params.yaml's ``model.compact``, its stem stride replaced unless None."""
    import yaml

    committed = yaml.safe_load((harness.REPO_ROOT / "params.yaml").read_text())["model"]["compact"]
    return committed if stem_stride is None else {**committed, "stem_stride": stem_stride}


def configs(size: int, batch: int, stem_stride: int):  # noqa: ANN201 - (ModelConfig, TrainConfig)
    from crackcls.model.settings import ModelConfig, TrainConfig

    model = ModelConfig(backbone="compact_cnn", weights="none", image_size=size, compact=compact_settings(stem_stride))
    return model, TrainConfig(batch_size=batch)


def training_flops(model) -> tuple[float, float]:  # noqa: ANN001 - a keras.Model
    """(forward, training) FLOPs per image of the convolutions and dense layers, from their shapes."""
    import keras

    forward = training = 0.0
    first = True
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            flops = 2.0 * out[1] * out[2] * out[3] * layer.kernel_size[0] * layer.kernel_size[1] * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            flops = 2.0 * layer.input.shape[-1] * layer.units
        else:
            continue
        forward += flops
        training += flops * (2 if first else 3)  # the input layer's gradient is never needed
        first = False
    return forward, training


def _layers(model) -> list:  # noqa: ANN001
    found = []
    for layer in model.layers:
        found.extend(_layers(layer) if hasattr(layer, "layers") else [layer])
    return found


def peak(size: int, batch: int, stem_stride: int, precision: str) -> dict:
    """FLOP/s of the model's own convolutions, forward and both gradients, timed alone."""
    import keras
    import tensorflow as tf

    from crackcls.model import runtime
    from crackcls.model.build import build_model

    model_cfg, train_cfg = configs(size, batch, stem_stride)
    policy = runtime.configure_precision(precision, scratch=True)
    dtype = tf.bfloat16 if "bfloat16" in policy else tf.float16 if "float16" in policy else tf.float32
    crack = build_model(model_cfg, train_cfg)
    convs = [layer for layer in _layers(crack.backbone) if isinstance(layer, keras.layers.Conv2D)]
    shapes = [((batch, *c.input.shape[1:]), (*c.kernel_size, c.input.shape[-1], c.filters), (batch, *c.output.shape[1:]), c.strides[0]) for c in convs]
    tensors = [(tf.random.normal(i, dtype=dtype), tf.random.normal(k, dtype=dtype), tf.random.normal(o, dtype=dtype)) for i, k, o, _ in shapes]

    @tf.function
    def step() -> tf.Tensor:
        sums = []
        for index, ((_, _, _, stride), (x, kernel, grad)) in enumerate(zip(shapes, tensors)):
            strides = [1, stride, stride, 1]
            sums.append(tf.reduce_sum(tf.cast(tf.nn.conv2d(x, kernel, strides, "SAME")[:1, :1], tf.float32)))
            weight_grad = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=kernel.shape, out_backprop=grad, strides=strides, padding="SAME")
            sums.append(tf.reduce_sum(tf.cast(weight_grad[:1, :1], tf.float32)))
            if index:
                input_grad = tf.raw_ops.Conv2DBackpropInput(input_sizes=x.shape, filter=kernel, out_backprop=grad, strides=strides, padding="SAME")
                sums.append(tf.reduce_sum(tf.cast(input_grad[:1, :1], tf.float32)))
        return tf.add_n(sums)

    for _ in range(5):
        step().numpy()
    best = float("inf")
    for _ in range(5):  # the best of five rounds: a shared machine only ever slows a round down
        started = time.perf_counter()
        for _ in range(10):
            step().numpy()
        best = min(best, (time.perf_counter() - started) / 10)
    _, conv_training = training_flops(crack.backbone)  # as timed: its convolutions, no input gradient for the first
    return {"policy": policy, "step_ms": round(best * 1e3, 2), "peak_gflop_s": round(conv_training * batch / best / 1e9, 1)}


def decoded_training_set(project: Path, size: int):  # noqa: ANN201 - (DecodedImages, labels)
    from crackcls.data import manifest
    from crackcls.data.decoded import decoded_split
    from crackcls.util import paths

    items = manifest.read(manifest.manifest_path("train", project / paths.SPLIT_DIR))
    return decoded_split(items, size, project, "train"), [it.label for it in items]


def train_rate(project: Path, size: int, batch: int, stem_stride: int, endless: bool, jit: bool, precision: str) -> dict:
    """Steady training img/s (epochs 2..) of the train stage's model, compile and dataset."""
    import keras
    import tensorflow as tf

    from crackcls.data.pipeline import batches_per_epoch, decoded_dataset
    from crackcls.model import runtime
    from crackcls.model.build import build_model, compile_binary

    os.chdir(project)
    started = time.perf_counter()
    decoded, labels = decoded_training_set(project, size)
    decode_s = time.perf_counter() - started
    model_cfg, train_cfg = configs(size, batch, stem_stride)
    runtime.configure_precision(precision, scratch=True)
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(train_cfg.seed)
    crack = build_model(model_cfg, train_cfg)
    compile_binary(crack.model, 1e-3, train_cfg.scratch.weight_decay)
    if jit:
        crack.model.jit_compile = True
    epochs: list[float] = []
    dataset = decoded_dataset(decoded, batch, labels, shuffle_seed=1, repeat=endless)
    steps = batches_per_epoch(decoded, batch) if endless else None
    crack.model.fit(dataset, steps_per_epoch=steps, epochs=EPOCHS, verbose=0, callbacks=[epoch_timer(epochs)], shuffle=False)
    images = len(decoded.rows)
    forward, training = training_flops(crack.model)
    return {
        "images": images, "decode_s": round(decode_s, 2), "decode_reused": decoded.reused,
        "epoch_s": [round(e, 2) for e in epochs], "img_s": round(images * (len(epochs) - 1) / sum(epochs[1:]), 1),
        "forward_mflop": round(forward / 1e6, 1), "train_mflop": round(training / 1e6, 1),
    }  # fmt: skip


def epoch_timer(seconds: list[float]):  # noqa: ANN201 - a keras.callbacks.Callback
    """A callback that appends each epoch's wall seconds to ``seconds``."""
    import keras

    started: list[float] = []
    return keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: started.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: seconds.append(time.perf_counter() - started[-1]),
    )


def split_rates(project: Path, size: int, batch: int, stem_stride: int, precision: str) -> dict:
    """img/s of the dataset alone, and of the training step alone on one batch already in memory."""
    import tensorflow as tf

    from crackcls.data.pipeline import decoded_dataset
    from crackcls.model import runtime
    from crackcls.model.build import build_model, compile_binary

    os.chdir(project)
    decoded, labels = decoded_training_set(project, size)
    dataset = decoded_dataset(decoded, batch, labels, shuffle_seed=1, repeat=True)
    steps = 200
    iterator = iter(dataset)
    next(iterator)
    started = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    input_img_s = steps * batch / (time.perf_counter() - started)

    model_cfg, train_cfg = configs(size, batch, stem_stride)
    runtime.configure_precision(precision, scratch=True)
    tf.config.experimental.enable_op_determinism()
    crack = build_model(model_cfg, train_cfg)
    compile_binary(crack.model, 1e-3, train_cfg.scratch.weight_decay)
    one = next(iterator)
    in_memory = tf.data.Dataset.from_tensors(one).repeat()
    compute_steps = max(20, 2000 // batch)
    epochs: list[float] = []
    crack.model.fit(in_memory, steps_per_epoch=compute_steps, epochs=3, verbose=0, shuffle=False, callbacks=[epoch_timer(epochs)])
    compute_img_s = compute_steps * batch / min(epochs[1:])  # the first epoch traces
    return {"input_img_s": round(input_img_s, 1), "compute_img_s": round(compute_img_s, 1)}


def table(result: dict) -> str:
    rows = [
        f"compact_cnn at {result['size']} px, batch {result['batch']}, {result['policy']}, on {result['machine']['cpu_count']} cores "
        f"({result['cpu_flags']}); the peak is that of each recipe's own convolutions, timed alone.",
        "",
        "| recipe | stem stride | train MFLOP / image | peak GFLOP/s | img/s (epochs 2–4) | share of peak | vs before |",
        "|---|---|---|---|---|---|---|",
    ]
    before = result["rates"]["before"]["img_s"]
    for name, rate in result["rates"].items():
        share = rate["train_mflop"] * 1e6 * rate["img_s"] / (rate["peak_gflop_s"] * 1e9)
        rows.append(
            f"| {name} | {rate['stem_stride']} | {rate['train_mflop']} | {rate['peak_gflop_s']} | {rate['img_s']} | {share:.0%} | "
            f"{rate['img_s'] / before:.2f}× |"
        )
    split = result["split"]
    rows += ["", f"Where a step of the current recipe goes: the dataset alone gives {split['input_img_s']} img/s, the training "
             f"step alone on one batch in memory {split['compute_img_s']} img/s, training {result['rates']['after']['img_s']} img/s."]  # fmt: skip
    return "\n".join(rows)


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "flags unknown"
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return " ".join(shown) or "no AVX2"


def main() -> None:
    parser = harness.parser(__doc__, "throughput")
    harness.data_argument(parser)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="auto", help="train.precision for every row (default: %(default)s)")
    args = parser.parse_args()
    data = harness.default_data(args.data) if not args.quick else harness.BUNDLED_SAMPLE
    size = 48 if args.quick else args.size
    current = compact_settings(None)["stem_stride"]
    with harness.scratch() as work:
        project = harness.make_project(work / "project", data, size, EPOCHS, args.batch)
        split = harness.in_child(harness.prepare, project)
        os.environ["CRACKCLS_CACHE_DIR"] = str(work / "cache")  # the first step decodes, the others reuse
        recipes = {"before": (1, False, False), "after": (current, True, False), "after, XLA": (current, True, True)}
        rates = {name: harness.in_child(train_rate, project, size, args.batch, *recipe, args.precision) for name, recipe in recipes.items()}
        peaks = {stride: harness.in_child(peak, size, args.batch, stride, args.precision) for stride in sorted({1, current})}
        for name, (stride, _, _) in recipes.items():
            rates[name]["stem_stride"] = stride
            rates[name]["peak_gflop_s"] = peaks[stride]["peak_gflop_s"]
        result = {
            "data": str(data), "size": size, "batch": args.batch, "cpu_flags": cpu_flags(), "policy": peaks[current]["policy"],
            "split_counts": {k: split[k]["total"] for k in ("train", "val", "test")},
            "peaks": {f"stem_stride_{stride}": figures for stride, figures in peaks.items()},
            "rates": rates,
            "split": harness.in_child(split_rates, project, size, args.batch, current, args.precision),
        }  # fmt: skip
    result["machine"] = harness.machine()
    result["table"] = table(result)
    harness.write(result, args.out)


if __name__ == "__main__":
    main()
