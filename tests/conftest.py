"""Shared test fixtures: paths, the shared-data skip marker and a real-CLI runner.

Use from any test module (pytest puts tests/ on sys.path):

    from conftest import EXAMPLES, needs_shared, run_smcli   # or the fixtures below

``run_smcli(*args, input=None, stdout_tty=False, cwd=None, env=None, python_flags=())``
runs ``python -m smcli ARGS`` in a subprocess and returns ``(returncode, stdout bytes,
stderr text)``; with ``stdout_tty=True`` the child's stdout is a real pseudo-terminal.
Use it for what needs a process: pipes, terminals, imports, exit statuses.

``run_main(*args, input=None, cwd=None)`` runs the same entry point (``smcli.cli.main``)
in this process with its own stdin/stdout/stderr, for the many error-path checks that do
not need a process (about 100 times faster). Same return value.

``assert_one_line_error(rc, stderr, *fragments)`` checks the team's error contract.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
DATA = REPO / "tests" / "data"  # small caption fixtures
# ../shared beside the clone (as on the team machines and in CI when it is provided).
SHARED = REPO.parent / "shared"
FLICKR8K = SHARED / "data" / "flickr8k"
FLICKR8K_TOKENS = FLICKR8K / "Flickr8k_text" / "Flickr8k.token.txt"
FLICKR8K_SPLITS = FLICKR8K / "splits.csv"

needs_shared = pytest.mark.skipif(
    not FLICKR8K_TOKENS.is_file(), reason=f"shared Flickr8k data not found under {FLICKR8K}"
)

# Modules that must never be loaded by the light commands (--help, tokenize, inspect).
HEAVY_MODULES = ("torch", "torchvision", "timm", "transformers", "faiss")


# The long fault-injection suite (make test-faults-long): more damage offsets, signal points
# and hypothesis examples. Set before the test modules are imported, which read it.
FAULTS_LONG_ENV = "SMCLI_FAULTS_LONG"


def pytest_addoption(parser) -> None:
    parser.addoption("--faults-long", action="store_true", default=False,
                     help="run the long fault-injection suite (tests/test_faults*.py; make test-faults-long)")


def pytest_configure(config) -> None:
    if config.getoption("--faults-long"):
        os.environ[FAULTS_LONG_ENV] = "1"


def faults_long() -> bool:
    """Whether this is the long fault-injection run (--faults-long or SMCLI_FAULTS_LONG=1)."""
    return os.environ.get(FAULTS_LONG_ENV) == "1"


def child_env(env: dict[str, str] | None) -> dict[str, str]:
    base = dict(os.environ)
    # A predictable child: no colour codes, a fixed width for rich, unbuffered stderr.
    base.update({"NO_COLOR": "1", "COLUMNS": "100", "PYTHONUNBUFFERED": "1", "TERM": "dumb"})
    base.pop("FORCE_COLOR", None)
    if env:
        base.update(env)
    return base


def run_smcli(
    *args: str | os.PathLike,
    input: bytes | None = None,
    stdout_tty: bool = False,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    python_flags: Sequence[str] = (),
    timeout: float = 300,
) -> tuple[int, bytes, str]:
    """Run the real CLI (``sys.executable -m smcli``); returns (returncode, stdout, stderr).

    ``input`` is fed to stdin (stdin is /dev/null when it is None). With ``stdout_tty`` the
    child's stdout is the slave side of a pseudo-terminal, so ``isatty()`` is true there;
    what it writes is returned as stdout (with the terminal's \\r\\n line ends).
    """
    cmd = [sys.executable, *python_flags, "-m", "smcli", *map(str, args)]
    kwargs = dict(cwd=cwd, env=child_env(env), stderr=subprocess.PIPE)
    if not stdout_tty:
        if input is None:
            kwargs["stdin"] = subprocess.DEVNULL
        proc = subprocess.run(cmd, input=input, stdout=subprocess.PIPE, timeout=timeout,
                              **kwargs)
        return proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace")
    kwargs["stdin"] = subprocess.PIPE if input is not None else subprocess.DEVNULL

    import pty

    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the child has closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    try:
        proc = subprocess.Popen(cmd, stdout=slave, **kwargs)
        os.close(slave)
        slave = -1
        reader.start()
        _, err = proc.communicate(input=input, timeout=timeout)
        reader.join(timeout=10)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    return proc.returncode, b"".join(chunks), err.decode("utf-8", "replace")


def run_main(
    *args: str | os.PathLike,
    input: bytes | None = None,
    cwd: str | os.PathLike | None = None,
) -> tuple[int, bytes, str]:
    """Run ``smcli.cli.main`` in this process; returns (exit status, stdout, stderr).

    stdin/stdout are byte-backed text streams (so ``.buffer`` works and isatty() is false).
    """
    import io

    from smcli.cli import main

    stdin = io.TextIOWrapper(io.BytesIO(input or b""), encoding="utf-8")
    out_bytes = io.BytesIO()
    stdout = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)
    stderr = io.StringIO()
    saved = sys.argv, sys.stdin, sys.stdout, sys.stderr
    old_cwd = os.getcwd()
    sys.argv = ["smcli", *map(str, args)]
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    rc = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        main()
    except SystemExit as exc:
        code = exc.code
        rc = code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        os.chdir(old_cwd)
        sys.argv, sys.stdin, sys.stdout, sys.stderr = saved
    stdout.flush()
    return rc, out_bytes.getvalue(), stderr.getvalue()


def journal_rows(journal: Path) -> int:
    """Rows in an extract-regions / read-text resume journal (whole batches only, as
    --resume reads it)."""
    import pyarrow as pa

    n = 0
    for seg in sorted(journal.glob("seg-*.arrows")):
        try:
            reader = pa.ipc.open_stream(pa.OSFile(str(seg), "r"))
            while True:
                n += reader.read_next_batch().num_rows
        except (StopIteration, pa.ArrowInvalid, OSError):
            pass
    return n


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from the ``-X importtime`` lines of a child's stderr."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


def assert_one_line_error(rc: int, stderr: str, *fragments: str) -> str:
    """The team's error contract: non-zero exit, stderr ends in one 'smcli: error:' line.

    Lines before it may only be the command's own progress/reject lines ("smcli CMD: ...").
    Returns the error line.
    """
    assert rc != 0, f"expected a failure, got rc 0; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").splitlines()
    assert lines, "nothing on stderr"
    errors = [ln for ln in lines if ln.startswith("smcli: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line at the end:\n{stderr}"
    assert all(ln.startswith("smcli") for ln in lines), f"stray stderr lines:\n{stderr}"
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


@pytest.fixture
def smcli():
    """The :func:`run_smcli` helper as a fixture."""
    return run_smcli


@pytest.fixture
def smcli_main():
    """The :func:`run_main` helper as a fixture."""
    return run_main


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def examples() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def flickr8k() -> Path:
    """The shared Flickr8k directory; skips the test when it is absent."""
    if not FLICKR8K_TOKENS.is_file():
        pytest.skip(f"shared Flickr8k data not found under {FLICKR8K}")
    return FLICKR8K


@pytest.fixture(scope="session")
def example_pipeline(tmp_path_factory) -> dict[str, Path]:
    """The bundled example run through extract-regions and tokenize (real pretrained
    features of the 32 example photos, captions with their splits)."""
    d = tmp_path_factory.mktemp("example_pipeline")
    feats, caps = d / "feats.parquet", d / "captions.parquet"
    rc, _, err = run_smcli("extract-regions", EXAMPLES / "images", "-o", feats, cwd=REPO)
    assert rc == 0, err
    rc, _, err = run_smcli("tokenize", EXAMPLES / "captions.txt", "--splits", EXAMPLES / "splits.csv",
                           "-o", caps, cwd=REPO)
    assert rc == 0, err
    return {"dir": d, "feats": feats, "captions": caps}


# Small model sizes for fast tests; the defaults are for real data.
SMALL_MODEL_ARGS = ("--inst-dim", "64", "--att-dim", "32", "--hidden-dim", "64", "--emb-dim", "64")


@pytest.fixture(scope="session")
def example_model(example_pipeline) -> Path:
    """A small sm-LSTM trained on the example data (train split, epoch chosen on val)."""
    out = example_pipeline["dir"] / "model"
    rc, _, err = run_smcli("train", "--regions", example_pipeline["feats"], "--captions",
                           example_pipeline["captions"], "-o", out, "--epochs", "6", "--batch-size", "16",
                           "--lr", "1e-3", *SMALL_MODEL_ARGS, cwd=REPO, timeout=600)
    assert rc == 0, err
    return out


@pytest.fixture(scope="session")
def serve_gallery(tmp_path_factory) -> dict[str, Path]:
    """What ``smcli serve`` needs, built as a user would in a folder of their own: the 32
    example photos copied to photos/, their regions (paths stored relative, as photos/X.jpg),
    the example captions, and a saved gallery of the pretrained flickr8k model."""
    import shutil

    d = tmp_path_factory.mktemp("serve")
    shutil.copytree(EXAMPLES / "images", d / "photos")
    rc, _, err = run_smcli("extract-regions", "photos", "-o", "feats.parquet", cwd=d)
    assert rc == 0, err
    rc, _, err = run_main("tokenize", EXAMPLES / "captions.txt", "--splits", EXAMPLES / "splits.csv",
                          "-o", d / "captions.parquet")
    assert rc == 0, err
    rc, _, err = run_main("index", "--model", "flickr8k", "--regions", d / "feats.parquet", "-o", d / "gallery",
                          cwd=d)
    assert rc == 0, err
    return {"dir": d, "photos": d / "photos", "feats": d / "feats.parquet", "captions": d / "captions.parquet",
            "gallery": d / "gallery"}
