"""The per-machine kernel choices: measured once, cached, reused, and re-measured when the machine changes."""

import json

import numpy as np
import pytest

from cifarlab.training import autotune


@pytest.fixture(autouse=True)
def _autotune_on(monkeypatch):
    monkeypatch.delenv(autotune.ENV, raising=False)  # conftest turns it off for the other tests


def _counting(names):
    calls = {n: 0 for n in names}

    def make(name, seconds):
        def run():
            calls[name] += 1
            import time
            time.sleep(seconds)
        return run

    return calls, make


def test_choice_is_measured_once_cached_and_reused():
    calls, make = _counting(["slow", "fast"])
    candidates = {"slow": make("slow", 0.02), "fast": make("fast", 0.0)}
    assert autotune.choose("k1", candidates, default="slow") == "fast"
    assert calls["slow"] > 0 and calls["fast"] > 0
    saved = json.loads(autotune.cache_path().read_text())
    assert saved["fingerprint"] == autotune.fingerprint() and saved["choices"]["k1"]["choice"] == "fast"
    assert set(saved["choices"]["k1"]["seconds"]) == {"slow", "fast"}
    before = dict(calls)
    assert autotune.choose("k1", candidates, default="slow") == "fast"
    assert calls == before  # the cache answered: nothing ran


def test_cache_of_another_machine_or_version_is_measured_again(monkeypatch):
    calls, make = _counting(["a", "b"])
    candidates = {"a": make("a", 0.0), "b": make("b", 0.02)}
    autotune.choose("k", candidates, default="b")
    real = autotune.fingerprint()
    monkeypatch.setattr(autotune, "fingerprint", lambda: {**real, "tensorflow": "9.99"})
    n = calls["a"]
    assert autotune.choose("k", candidates, default="b") == "a"
    assert calls["a"] > n  # measured anew
    assert json.loads(autotune.cache_path().read_text())["fingerprint"]["tensorflow"] == "9.99"


@pytest.mark.parametrize("junk", [b"{not json", b"[1, 2]", b'{"fingerprint": 1, "choices": []}', b"\x00\xff" * 10])
def test_corrupt_cache_is_ignored_and_rewritten(junk):
    path = autotune.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(junk)
    calls, make = _counting(["a", "b"])
    assert autotune.choose("k", {"a": make("a", 0.0), "b": make("b", 0.02)}, default="b") == "a"
    assert json.loads(path.read_text())["choices"]["k"]["choice"] == "a"


def test_turned_off_gives_the_default_and_measures_nothing(monkeypatch):
    calls, make = _counting(["a", "b"])
    candidates = {"a": make("a", 0.0), "b": make("b", 0.02)}
    with autotune.turned_off():
        assert autotune.choose("k", candidates, default="b") == "b"
    monkeypatch.setenv(autotune.ENV, "0")
    assert autotune.choose("k", candidates, default="b") == "b"
    assert calls == {"a": 0, "b": 0} and not autotune.cache_path().exists()


def test_conv_kernel_gradient_is_tuned_for_the_shapes_in_hand():
    """A real measurement of both kernel-gradient methods, cached under the conv's shape and dtype."""
    import tensorflow as tf

    from cifarlab.training import ops

    x = tf.random.stateless_normal([4, 7, 7, 16], seed=[1, 2])
    k = tf.random.stateless_normal([3, 3, 16, 8], seed=[3, 4])
    with tf.GradientTape() as tape:
        tape.watch(k)
        y = ops.conv2d(x, k, (1, 1), "SAME")
    g = tape.gradient(y, k)
    np.testing.assert_allclose(g, tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=[3, 3, 16, 8], out_backprop=tf.ones_like(y), strides=[1, 1, 1, 1], padding="SAME"),
        rtol=1e-4, atol=1e-4)
    entry = json.loads(autotune.cache_path().read_text())["choices"]["conv3x3_kernel_grad/float32/4x7x7x16->8"]
    assert entry["choice"] in ops.KERNEL_GRADS and set(entry["seconds"]) == set(ops.KERNEL_GRADS)
