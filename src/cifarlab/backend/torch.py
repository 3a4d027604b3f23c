"""PyTorch glue: autograd on detached leaves, eager steps (as Keras' PyTorch trainer runs by default)."""

from __future__ import annotations

import torch


def value_and_grad(fn):
    def run(values):
        with torch.enable_grad():  # the step runs under no_grad; only this part needs the graph
            leaves = [v.detach().requires_grad_(True) for v in values]
            loss, aux = fn(leaves)
            grads = torch.autograd.grad(loss, leaves)
        return (loss.detach(), _map(lambda t: t.detach(), aux)), list(grads)

    return run


def compile_step(fn):
    """``fn`` under ``no_grad``, eager: ``torch.compile`` of the portable step measured 0.95x the eager speed
    on a 2-core AVX2 EPYC (quick, batch 500: 1108 vs 1048 ms a step, 34-65 s to compile; Keras' layers
    graph-break under dynamo), so it is not used (``benchmarks/torch_compile.py``, RESULTS.md ``torch_compile``)."""
    def step(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return step


def compile_forward(fn):
    return compile_step(fn)


def place(tree, distribution=None):
    from keras import ops

    return _map(ops.convert_to_tensor, tree)


def _map(f, tree):
    """``f`` on every leaf of nested lists/tuples."""
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(f, t) for t in tree)
    return f(tree)


def apply(optimizer, variables, opt_values, grads, values):
    """New ``(values, opt_values)`` after one optimizer step (``variables`` are what ``values`` stand for)."""
    return optimizer.stateless_apply(opt_values, grads, values)
