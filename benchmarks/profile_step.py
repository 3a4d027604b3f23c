"""Images/s of one training step of the fast net under variants (activation, its dtype, XLA, batch).

    python benchmarks/profile_step.py --act gelu --act-dtype float32 --jit --batch 1024 --steps 6

Random uint8 images of the same shape as CIFAR-10 (throughput does not depend on
content). Prints one JSON line per run; used for the design loop in benchmarks/RESULTS.md.
"""

import argparse
import json
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--act", default="gelu")
    ap.add_argument("--act-dtype", default=None)
    ap.add_argument("--jit", action="store_true")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--forward", default="ops", choices=("ops", "keras"))
    args = ap.parse_args()

    from cifarlab.models.fast import model_flops
    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training import precision as prec
    from cifarlab.training.fast import FastTrainer

    prec.apply(prec.resolve(args.precision))
    recipe = get_recipe(args.recipe).with_overrides(batch_size=args.batch, whiten_init_images=0)
    model = get_model(recipe.model).build(10, activation=args.act, act_dtype=args.act_dtype)
    n = args.batch * (args.steps + 2)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    tr = FastTrainer(model, recipe, x, y, forward=args.forward, jit_compile=args.jit)
    import tensorflow as tf

    idx = [tf.constant(np.arange(i * args.batch, (i + 1) * args.batch), tf.int32) for i in range(args.steps + 2)]
    t0 = time.perf_counter()
    tr.timed_step(idx[0])
    compile_s = time.perf_counter() - t0
    tr.timed_step(idx[1])
    t0 = time.perf_counter()
    c0 = time.process_time()
    for i in range(args.steps):
        tr.timed_step(idx[2 + i], wait=False)
    tr.seen.numpy()
    dt = (time.perf_counter() - t0) / args.steps
    cpu = (time.process_time() - c0) / args.steps
    flops = 3 * model_flops(model)
    print(json.dumps({"recipe": args.recipe, "act": args.act, "act_dtype": args.act_dtype, "jit": args.jit,
                      "batch": args.batch, "forward": args.forward, "precision": args.precision, "step_s": round(dt, 4),
                      "images_per_s": round(args.batch / dt, 1), "tflops": round(flops * args.batch / dt / 1e12, 3),
                      "compile_s": round(compile_s, 1),
                      "cpu_s_per_step": round(cpu, 4), "images_per_cpu_s": round(args.batch / cpu, 1)}))


if __name__ == "__main__":
    main()
