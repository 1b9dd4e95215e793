"""Fault injection, part 2 (issue 15): signals and broken pipes, with real processes.

- extract-regions killed with SIGKILL, then ``--resume``: the features equal an
  uninterrupted run's bit for bit when the resumed run forms the same batches (a given
  ``--batch-size``, or the default, which is sized on all the images); the rows the killed
  run finished are copied, never recomputed.
- SIGINT and SIGTERM at several points of a run: exit 130 / 143 with one closing line, no
  temporary left, no output under the final name, no worker process left, and the rows
  finished so far kept for ``--resume``.
- Every command that writes to stdout, with a reader that went away (``| head``): a quiet
  exit 141, distinct from bad input (1), with no traceback.

The long suite (``make test-faults-long``) interrupts at more points.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLES, REPO, child_env, faults_long, journal_rows, run_main
from test_faults import temporaries

from smcli.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_TERMINATED

IMAGES = sorted((EXAMPLES / "images").glob("*.jpg"))
FAST = ["--weights", "none", "--image-size", "64", "--batch-size", "2", "--workers", "1"]


def photos(d: Path, n: int) -> Path:
    """``n`` photos in ``d``: the bundled ones, then copies of them under other names."""
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = IMAGES[i % len(IMAGES)]
        shutil.copy(src, d / (src.name if i < len(IMAGES) else f"copy{i:03d}_{src.name}"))
    return d


def start(args, **kwargs) -> subprocess.Popen:
    """``python -m smcli ARGS`` in its own process group (so its workers can be found)."""
    return subprocess.Popen([sys.executable, "-m", "smcli", *map(str, args)], cwd=REPO, env=child_env(None),
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **kwargs)


def wait_for(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read().decode()
    assert ready(), "the run did not reach the point to interrupt it at in time"


def group_gone(pgid: int, timeout: float = 30) -> bool:
    """Every process of the group has exited (the workers included)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def same_file(a: Path, b: Path) -> None:
    assert pq.read_table(a).equals(pq.read_table(b))
    assert pq.read_schema(a).metadata == pq.read_schema(b).metadata


# ---------------------------------------------------------------------------------------
# SIGKILL, then --resume; and the guarantee across batchings

BATCHINGS = {"default": ["--workers", "2"],  # 40 images: batches of 20, passes of 16 + 4
             "batch-8": ["--batch-size", "8"]}  # passes of 8, as many workers as cores


@pytest.fixture(scope="module")
def forty(tmp_path_factory) -> dict:
    """40 photos, and the uninterrupted extract-regions run of them per batching."""
    root = tmp_path_factory.mktemp("forty")
    d = photos(root / "imgs", 40)
    runs = {}
    for name, extra in BATCHINGS.items():
        runs[name] = root / f"{name}.parquet"
        rc, _, err = run_main("extract-regions", d, *extra, "-o", runs[name])
        assert rc == 0, err
    return {"dir": d, **runs}


def test_sigkill_then_resume_equals_an_uninterrupted_run(forty, tmp_path):
    """The pretrained backbone at its default size and dtype, --batch-size 8: killed with
    SIGKILL after some batches, --resume recomputes nothing that was finished and gives the
    uninterrupted run's file, bit for bit."""
    args = ["extract-regions", forty["dir"], *BATCHINGS["batch-8"]]
    out = tmp_path / "feats.parquet"
    journal = tmp_path / ".feats.parquet.resume"
    proc = start([*args, "-o", out], stdout=subprocess.DEVNULL)
    wait_for(proc, lambda: journal_rows(journal) >= 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert group_gone(proc.pid), "worker processes outlived the killed run"
    assert not out.exists()
    done = journal_rows(journal)
    assert 8 <= done < 40 and done % 8 == 0  # whole batches

    rc, _, err = run_main(*args, "-o", out, "--resume")
    assert rc == 0, err
    assert f"resuming: {done} image(s) done by the interrupted run" in err
    assert f"processed {40 - done}," in err  # the finished rows were copied, not recomputed
    same_file(out, forty["batch-8"])
    assert not journal.exists() and not temporaries(tmp_path)


def test_default_batches_resume_bit_for_bit(forty, tmp_path, monkeypatch):
    """Default settings (batch size chosen by smcli): a run stopped after its first batch
    resumes with the batches the uninterrupted run formed, so the features are equal bit
    for bit. (Sizing the resumed batches on the images left, as smcli did, made passes of
    other sizes, whose features differed by up to 2^-8.)"""
    from smcli.images import journal as journal_mod

    args = ["extract-regions", forty["dir"], *BATCHINGS["default"]]
    real_append = journal_mod.Journal.append

    def append_then_stop(self, batch):
        real_append(self, batch)
        raise KeyboardInterrupt  # Ctrl-C right after the first batch is safe in the journal

    out = tmp_path / "feats.parquet"
    monkeypatch.setattr(journal_mod.Journal, "append", append_then_stop)
    rc, _, err = run_main(*args, "-o", out)
    monkeypatch.undo()
    assert rc == EXIT_INTERRUPTED and err.strip().splitlines()[-1] == "smcli: interrupted", err
    assert "partial results kept" in err and not out.exists() and not temporaries(tmp_path)
    done = journal_rows(tmp_path / ".feats.parquet.resume")
    assert done == 20

    rc, _, err = run_main(*args, "-o", out, "--resume")
    assert rc == 0, err
    assert f"processed {40 - done}," in err
    same_file(out, forty["default"])


def _agree_within(a: np.ndarray, b: np.ndarray, tol: float = 2 ** -8) -> None:
    """The guarantee across batchings: every value within ``tol``, every row's cosine > 0.999999."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    assert np.abs(a - b).max() <= tol, np.abs(a - b).max()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999999, cos.min()


def test_features_across_batchings_agree_within_2_to_the_minus_8(forty):
    """Other batch sizes, and retrieve --image FILE (the network on the fly) against the
    file's rows: equal or within 2^-8, as README states."""
    from smcli.images.extract import extract_images
    from smcli.images.features import feature_signature, load_regions

    default, batch8 = load_regions(forty["default"]), load_regions(forty["batch-8"])
    assert default.image_ids == batch8.image_ids
    _agree_within(default.regions, batch8.regions)
    _agree_within(default.global_, batch8.global_)
    rows = [0, 17, 39]
    regions, glob = extract_images([default.paths[i] for i in rows], signature=feature_signature(default.meta))
    _agree_within(regions, default.regions[rows])
    _agree_within(glob, default.global_[rows])


# ---------------------------------------------------------------------------------------
# SIGINT and SIGTERM at several points

POINTS = {
    "started": lambda journal: journal.is_dir(),  # the output's lock is taken; the backbone loads
    "mid-run": lambda journal: journal_rows(journal) >= 6,
}
if faults_long():
    POINTS["first-batch"] = lambda journal: journal_rows(journal) >= 2
    POINTS["late"] = lambda journal: journal_rows(journal) >= 18


def signal_end(sig: int) -> tuple[int, str]:
    """The exit code and the one closing line of a run stopped by ``sig``."""
    return (EXIT_INTERRUPTED, "smcli: interrupted") if sig == signal.SIGINT else (EXIT_TERMINATED, "smcli: terminated")


def run_cli_over(body: str) -> subprocess.CompletedProcess:
    """``smcli.cli.main()`` in a fresh interpreter, its command replaced by ``run()`` as
    ``body`` defines it (os, errno, sys and time imported)."""
    code = "import errno, os, sys, time\nsys.argv = ['smcli', 'models']\nimport smcli.cli as cli\n" + body + \
        "\ncli.app = lambda standalone_mode: run()\ncli.main()\n"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(None), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_extract_interrupted_by_a_signal(tmp_path, sig, point):
    d = photos(tmp_path / "imgs", 24)
    out = tmp_path / "feats.parquet"
    journal = tmp_path / ".feats.parquet.resume"
    proc = start(["extract-regions", d, *FAST, "-o", out], stdout=subprocess.DEVNULL)
    wait_for(proc, lambda: POINTS[point](journal))
    os.kill(proc.pid, sig)
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=120)
    code, line = signal_end(sig)
    assert rc == code, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == line, err
    assert all(ln.startswith("smcli") for ln in err.strip().splitlines()), err
    assert group_gone(proc.pid), "worker processes outlived the interrupted run"
    assert not out.exists() and not temporaries(tmp_path)
    kept = journal_rows(journal)
    assert (kept > 0) == ("partial results kept" in err), err
    if kept == 0:
        assert not journal.exists()  # nothing worth keeping: nothing left behind
    rc, _, err = run_main("extract-regions", d, *FAST, "-o", out, "--resume")
    assert rc == 0, err
    assert pq.read_metadata(out).num_rows == 24 and not journal.exists() and not temporaries(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_that_lands_in_a_finaliser_is_not_lost(sig):
    """A signal arriving while a __del__ runs raises there, where Python drops exceptions:
    smcli sends it again so that the program still stops (CI once saw extract-regions run
    to the end after a SIGTERM at start-up)."""
    proc = run_cli_over(f"""
class Finaliser:
    def __del__(self):
        os.kill(os.getpid(), {int(sig)})
        time.sleep(0.5)
def run():
    Finaliser()
    for _ in range(200):
        time.sleep(0.005)
    print("the run went on")
""")
    code, line = signal_end(sig)
    assert "the run went on" not in proc.stdout
    assert proc.returncode == code and proc.stderr.strip() == line, proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_error_while_a_signal_unwinds_the_run_still_ends_as_the_signal(sig):
    """Cleanup that fails after a signal (CI once saw extract-regions end with "smcli: error:
    Bad file descriptor", exit 1, after a SIGTERM at start-up) does not hide the signal: the
    user stopped the run, and is told so with the signal's exit code."""
    proc = run_cli_over(f"""
def run():
    try:
        os.kill(os.getpid(), {int(sig)})
        time.sleep(5)
    finally:
        raise OSError(errno.EBADF, "Bad file descriptor")
""")
    code, line = signal_end(sig)
    assert proc.returncode == code and proc.stderr.strip() == line, proc.stderr


def test_a_helper_thread_whose_peer_went_away_prints_no_traceback():
    """CI once saw an interrupted extract-regions end with "Exception in thread ...
    (_serve)" and a BrokenPipeError traceback: a DataLoader worker's resource-sharer thread
    lost the parent mid-handover. Workers and a signalled parent drop lost-peer errors of
    helper threads; any other thread error is still reported."""
    code = """import threading
from smcli.runtime import quiet_lost_peer_threads
quiet_lost_peer_threads(0)
quiet_lost_peer_threads(1)  # a second call keeps one hook
def fail(exc):
    raise exc
for exc in (BrokenPipeError(32, 'Broken pipe'), ConnectionResetError(104, 'reset'), EOFError(), ValueError('real bug')):
    t = threading.Thread(target=fail, args=(exc,), name=type(exc).__name__)
    t.start(); t.join()
def serve(exc):  # multiprocessing.resource_sharer._serve catches the error and calls sys.excepthook
    try:
        raise exc
    except BaseException:
        sys.excepthook(*sys.exc_info())
import sys
for exc in (EOFError(), BrokenPipeError(32, 'Broken pipe'), KeyError('served bug')):
    t = threading.Thread(target=serve, args=(exc,))
    t.start(); t.join()
try:
    raise EOFError('main thread')  # the main thread's own errors are never dropped
except EOFError:
    sys.excepthook(*sys.exc_info())
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(None), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ValueError: real bug" in proc.stderr and "KeyError: 'served bug'" in proc.stderr, proc.stderr
    assert "EOFError: main thread" in proc.stderr and proc.stderr.count("Traceback") == 3, proc.stderr
    for quiet in ("BrokenPipeError", "ConnectionResetError", "EOFError\n"):
        assert quiet not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------------------
# Broken pipes: every command that writes to stdout


@pytest.fixture(scope="module")
def pipe_commands(example_pipeline, example_model, tmp_path_factory) -> dict[str, list]:
    feats, caps, model = example_pipeline["feats"], example_pipeline["captions"], example_model
    big = tmp_path_factory.mktemp("pipes") / "queries.txt"
    big.write_text("".join(f"a dog number {i} runs on the grass\n" for i in range(20000)))
    search = ["--model", model, "--regions", feats, "--captions", caps]
    return {
        "help": ["--help"],
        "command-help": ["score", "--help"],
        "version": ["--version"],
        "tokenize": ["tokenize", big],  # Parquet, larger than a pipe's buffer
        "extract-regions": ["extract-regions", IMAGES[0], IMAGES[1], "--weights", "none", "--image-size", "64"],
        "score": ["score", *search],
        "caption-rank": ["caption-rank", *search, "--top-k", "3"],
        "retrieve": ["retrieve", *search, "-q", "a dog"],
        "retrieve-table": ["retrieve", *search, "-q", "a dog", "--table"],
        "retrieve-eval": ["retrieve", *search, "--eval", "--split", "test"],  # a table on stdout
        "inspect": ["inspect", feats],
        "inspect-json": ["inspect", "--json", feats],
        "models": ["models"],
    }


BROKEN_PIPE_CASES = ["help", "command-help", "version", "tokenize", "extract-regions", "score", "caption-rank",
                     "retrieve", "retrieve-table", "retrieve-eval", "inspect", "inspect-json", "models"]


@pytest.fixture(scope="module")
def closed_pipe_runs(pipe_commands) -> dict[str, tuple[int, str, bool]]:
    """Each command run with a stdout whose reader is gone before it writes (``smcli ... |
    true``), four at a time: name -> (exit status, stderr, its process group is gone)."""
    results, running, waiting = {}, {}, list(BROKEN_PIPE_CASES)
    while waiting or running:
        while waiting and len(running) < 4:
            name = waiting.pop(0)
            proc = start(pipe_commands[name], stdout=subprocess.PIPE)
            proc.stdout.close()
            running[name] = proc
        name, proc = next(iter(running.items()))
        err = proc.stderr.read().decode()
        rc = proc.wait(timeout=300)
        results[name] = (rc, err, group_gone(proc.pid))
        del running[name]
    return results


@pytest.mark.parametrize("name", BROKEN_PIPE_CASES)
def test_broken_pipe_exits_quietly_with_its_own_code(closed_pipe_runs, name):
    """Exit 141 (not 1, bad input), nothing on stderr but the command's own lines, no
    traceback, no worker left."""
    rc, err, gone = closed_pipe_runs[name]
    assert rc == EXIT_BROKEN_PIPE, (rc, err)
    assert "Traceback" not in err and "Exception ignored" not in err and "Errno 32" not in err, err
    assert all(ln.startswith("smcli") for ln in err.strip().splitlines()), err
    assert gone


def test_broken_pipe_mid_stream_leaves_a_truncated_file(tmp_path):
    """`smcli tokenize big.txt | head -c 100`: the reader goes away mid-stream; 141, and
    what it got is not a complete Parquet file."""
    big = tmp_path / "big.txt"
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(5000)]
    big.write_text("".join(" ".join(rng.choice(words, 12)) + "\n" for _ in range(15000)))
    proc = start(["tokenize", big], stdout=subprocess.PIPE)
    head = proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE, err
    assert head.startswith(b"PAR1") and "Traceback" not in err
