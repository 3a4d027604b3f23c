import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10-jpeg-binary.tar.gz"
sys.path.insert(0, str(Path(__file__).parent))

# Tests never touch the user's cache or the network: the cache goes to a temporary
# folder, and downloads go to a closed loopback port unless a test serves files.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `-n auto` (pyproject.toml): one test process per core, at most 4. Most tests start processes or wait on
# servers, so one process keeps 2 cores about 58 % busy; more than 4 processes of TensorFlow would only
# contend for memory bandwidth. PYTEST_XDIST_AUTO_NUM_WORKERS or -n N overrides it, -n 0 runs in one.
MAX_TEST_PROCESSES = 4


def pytest_xdist_auto_num_workers(config):
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):  # this hook outranks the variable in xdist: honour it here
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    return max(1, min(len(os.sched_getaffinity(0)), MAX_TEST_PROCESSES))


# The files that start training processes, longest first (`--durations`, benchmarks/RESULTS.md "test_suite").
# pytest-xdist hands files out in collection order (`--no-loadscope-reorder`; its default order, by number of
# tests, sent these few long tests last, to one process while the others had finished), so they start first
# and the many short files even out the end.
LONGEST_FILES = ("test_faults.py", "test_fast_faults.py", "test_backends.py", "test_experiments.py", "test_scale.py",
                 "test_cli.py", "test_fast.py", "test_gpu_dry_run.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("CIFARLAB_MIRROR", "http://127.0.0.1:9/")
    monkeypatch.delenv("CIFARLAB_DATA", raising=False)
    # Kernel choices keep their defaults: measuring them in every test's fresh cache costs seconds
    # each; tests/test_autotune.py turns it back on.
    monkeypatch.setenv("CIFARLAB_AUTOTUNE", "0")


@pytest.fixture(scope="session", autouse=True)
def _jax_compilation_cache(tmp_path_factory):
    """One JAX compilation cache for the session's processes (os.environ: subprocesses inherit it).

    The JAX tests start several processes that compile the same steps (tests/test_backends.py: the
    straight run, the killed one and its resumption, the predictions; the GPU dry run); on 2 cores each
    compile costs seconds. The cache hands a later process the executable an earlier one compiled from
    the same program, so what runs is unchanged; it is a fresh folder, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax-cache")))
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        yield


@pytest.fixture(scope="session")
def shared_archive() -> Path:
    if not SHARED_ARCHIVE.is_file():
        pytest.skip(f"shared CIFAR-10 copy not found at {SHARED_ARCHIVE}")
    return SHARED_ARCHIVE




@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's Chromium (installed by `make test` where it can be); skips without it."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium not installed (Debian package 'chromium'; `make browser` installs it as root)")
    return path


@pytest.fixture(scope="session")
def small_archive(shared_archive, tmp_path_factory) -> Path:
    """The first 1,000 training and 500 test images of the shared copy, same layout (tests/slices.py)."""
    from slices import slice_archive

    return slice_archive(shared_archive, tmp_path_factory.mktemp("slice") / "cifar10-slice.tar.gz")


@pytest.fixture(scope="session")
def medium_archive(shared_archive, tmp_path_factory) -> Path:
    """The first 2,000 training and 500 test images of the shared copy, same layout (tests/slices.py)."""
    from slices import slice_archive

    return slice_archive(shared_archive, tmp_path_factory.mktemp("slice-2k") / "cifar10-slice-2k.tar.gz", n_train=2000)


@pytest.fixture(scope="session")
def seed_run(medium_archive, tmp_path_factory):
    """One epoch of the seed recipe on the 2,000 training images of ``medium_archive``, tested on its 500
    test images: a real run directory. (The whole shared copy would add ~5 CPU s a run: reading 10,000
    test images and evaluating them.)"""
    from cifarlab.training.train import train

    out = tmp_path_factory.mktemp("runs") / "seed-run"
    return train(recipe="seed", data=str(medium_archive), epochs=1, seed=0, out=str(out), quiet=True)


@pytest.fixture(scope="module")
def server(seed_run, tmp_path_factory, request):
    """A real ``cifarlab serve`` of the seed run on 127.0.0.1, one per test module (tests/servers.py).

    A generous queue deadline: these tests are about answers, and a busy 2-core machine can stall
    the model thread longer than the default 250 ms (the benchmark measures the defaults)."""
    from servers import Server

    log = tmp_path_factory.mktemp(request.module.__name__) / "server.log"
    s = Server(seed_run.run_dir, "--queue-timeout-ms", "10000", log=log)
    yield s
    s.stop()
