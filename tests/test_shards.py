"""Sharded runs: --shard i/N parts, finalize and its manifest, directories read as one file,
the built-in drivers (local, and Ray inside a network namespace of its own), and scoring in
shards (over a pairs file's rows, and over pairs partitioned by feature part)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLES, REPO, assert_one_line_error, child_env, run_main, run_smcli

from smcli.distributed.shards import RECORD_KEY, ShardSpec, parse_shard
from smcli.errors import UsageError
from smcli.images.features import load_regions

IMAGES = EXAMPLES / "images"
FAST = ["--weights", "none", "--image-size", "64"]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sorted_features(source) -> dict[str, np.ndarray]:
    f = load_regions(source)
    order = np.argsort(f.image_ids)
    return {"image_id": np.array(f.image_ids)[order], "path": np.array(f.paths)[order], "width": f.width[order],
            "height": f.height[order], "regions": f.regions[order], "global": f.global_[order]}


def assert_same_rows(a, b) -> None:
    fa, fb = sorted_features(a), sorted_features(b)
    for key in fa:
        assert np.array_equal(fa[key], fb[key]), key


def hidden(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def last_counts(stderr: str) -> dict[str, int]:
    line = stderr.strip().splitlines()[-1]
    parts = line.split(": ")[-1].split(", ")
    return {p.rsplit(" ", 1)[0]: int(p.rsplit(" ", 1)[1].replace(",", "")) for p in parts}


# ---------------------------------------------------------------------------------------
# Shards and their rows


def test_shard_rows_cover_the_list_once():
    for n in (0, 1, 7, 32, 1001):
        for count in (1, 2, 3, 4, 7, 50):
            rows = [r for i in range(count) for r in range(*ShardSpec(i, count).rows(n))]
            assert rows == list(range(n)), (n, count)
    assert ShardSpec(1, 4).rows(10) == (2, 5) and ShardSpec(3, 4).part_name == "part-00003-of-00004.parquet"
    assert parse_shard("2/5") == ShardSpec(2, 5)
    for bad in ("4/4", "1/0", "-1/3", "a/b", "3"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


def test_two_shards_finalized_equal_the_single_run(example_pipeline, tmp_path):
    """Shards 0/2 and 1/2 of the example photos (real pretrained features), finalized, are
    the single-run file row for row; a retried shard writes the same bytes."""
    out = tmp_path / "feats"
    errs = []
    for i in (0, 1):
        rc, _, err = run_smcli("extract-regions", IMAGES, "-o", f"{out}/", "--shard", f"{i}/2", cwd=REPO)
        assert rc == 0, err
        errs.append(err)
    assert errs[0].strip().splitlines()[-1] == "smcli extract-regions: shard 0/2: processed 16, written 16, failed 0"
    rc, _, err = run_main("retrieve", "--regions", out, "--query", "a dog")
    assert_one_line_error(rc, err, f"{out}: a directory without _manifest.json", "smcli finalize")
    rc, _, err = run_main("finalize", out)
    assert rc == 0, err
    assert err.strip().splitlines()[-1] == (f"smcli finalize: 2 part(s) in {out}: listed 32, duplicates 0, "
                                            "processed 32, written 32, failed 0")
    assert_same_rows(example_pipeline["feats"], out)
    # and in the same order: the parts in order are the frozen (sorted) list
    assert load_regions(out).image_ids == load_regions(example_pipeline["feats"]).image_ids
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows"] == 32 and [p["list_rows"] for p in manifest["parts"]] == [[0, 16], [16, 32]]
    record = json.loads(pq.ParquetFile(out / "part-00001-of-00002.parquet").metadata.metadata[RECORD_KEY])
    assert record["counts"] == {"failed": 0, "processed": 16, "written": 16}
    assert record["list_fingerprint"] == manifest["list_fingerprint"] and record["rows"] == [16, 32]
    assert pq.read_table(out / "part-00000-of-00002.errors.parquet").num_rows == 0
    assert hidden(out) == []
    # a committed shard is not redone; a lost one is rewritten byte for byte
    part = out / "part-00001-of-00002.parquet"
    before, stat = sha(part), part.stat()
    rc, _, err = run_main("extract-regions", IMAGES, "-o", out, "--shard", "1/2")
    assert rc == 0 and "already committed; nothing to do" in err
    assert part.stat().st_mtime_ns == stat.st_mtime_ns
    part.unlink()
    rc, _, err = run_smcli("extract-regions", IMAGES, "-o", out, "--shard", "1/2", cwd=REPO)
    assert rc == 0, err
    assert sha(part) == before
    manifest_bytes = (out / "_manifest.json").read_bytes()
    rc, _, err = run_main("finalize", out)
    assert rc == 0 and (out / "_manifest.json").read_bytes() == manifest_bytes


def _fast_parts(directory: Path, photos: Path, count: int, *indices: int) -> None:
    for i in indices:
        rc, _, err = run_main("extract-regions", photos, "-o", directory, "--shard", f"{i}/{count}", *FAST,
                              "--workers", "0", "--threads", "1")
        assert rc == 0, err


def test_stages_refuse_a_directory_without_manifest(example_pipeline, example_model, tmp_path):
    out = tmp_path / "feats"
    _fast_parts(out, IMAGES, 2, 0)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_id,caption\n509778093_21236bb64d.jpg,a dog\n")
    commands = {
        "inspect": ["inspect", out],
        "score": ["score", "--model", example_model, "--regions", out, "--pairs", pairs, "-o", tmp_path / "s.parquet"],
        "retrieve": ["retrieve", "--model", example_model, "--regions", out, "--query", "a dog", "--table"],
        "caption-rank": ["caption-rank", "--model", example_model, "--regions", out, "--candidates", pairs, "--table"],
        "index": ["index", "--model", example_model, "--regions", out, "-o", tmp_path / "gallery"],
        "train": ["train", "--regions", out, "--captions", example_pipeline["captions"], "-o", tmp_path / "m"],
    }
    for name, argv in commands.items():
        rc, _, err = run_main(*argv)
        assert_one_line_error(rc, err, "a directory without _manifest.json")
        assert not (tmp_path / "gallery").exists() and not (tmp_path / "s.parquet").exists(), name
    rc, _, err = run_main("finalize", out)
    assert_one_line_error(rc, err, "1 of 2 part(s) missing (part-00001-of-00002.parquet)", "rerun the same command")
    assert not (out / "_manifest.json").exists()


def test_finalize_refuses_mixed_lists_and_duplicates_and_sweeps_leftovers(tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(IMAGES, photos)
    a, b = tmp_path / "a", tmp_path / "b"
    _fast_parts(a, photos, 2, 0, 1)
    (photos / "324355356_859988a710.jpg").unlink()  # another list
    _fast_parts(b, photos, 2, 1)
    rc, _, err = run_main("extract-regions", photos, "-o", a, "--shard", "0/2", *FAST)
    assert rc == 0 and "already committed" in err  # a's list is frozen: the folder changed, a's split did not
    good = (a / "part-00001-of-00002.parquet").read_bytes()
    shutil.copy(b / "part-00001-of-00002.parquet", a / "part-00001-of-00002.parquet")
    rc, _, err = run_main("extract-regions", photos, "-o", a, "--shard", "1/2", *FAST)
    assert_one_line_error(rc, err, "part-00001-of-00002.parquet: a part made from another input list")
    rc, _, err = run_main("finalize", a)
    assert_one_line_error(rc, err, "parts made from 2 different input lists")
    # part 1 holding part 0's rows under a well-formed record: image_id twice
    pf = pq.ParquetFile(a / "part-00000-of-00002.parquet")
    record = json.loads(pf.metadata.metadata[RECORD_KEY])
    record.update(index=1)
    with pq.ParquetWriter(a / "part-00001-of-00002.parquet", pf.schema_arrow) as w:
        w.write_table(pf.read())
        w.add_key_value_metadata({RECORD_KEY.decode(): json.dumps(record)})
    rc, _, err = run_main("finalize", a)
    assert_one_line_error(rc, err, "is in more than one row",
                          "part-00000-of-00002.parquet, part-00001-of-00002.parquet")
    (a / "part-00001-of-00002.parquet").write_bytes(good)
    # leftovers of a killed shard: a temporary and a resume journal, swept
    (a / ".part-00001-of-00002.parquet.x1y2.tmp").write_bytes(b"half")
    (a / ".part-00001-of-00002.errors.parquet.z3.tmp").write_bytes(b"")
    (a / ".part-00001-of-00002.parquet.resume").mkdir()
    (a / ".part-00001-of-00002.parquet.resume" / "seg-00000.arrows").write_bytes(b"x")
    rc, _, err = run_main("finalize", a)
    assert rc == 0, err
    assert "swept 3 leftover(s) of killed shards" in err and hidden(a) == []
    rc, out, err = run_main("inspect", a, "--json")
    info = json.loads(out)
    assert rc == 0 and info["rows"] == 32 and info["parts"]["shards"] == 2
    assert info["parts"]["counts"]["written"] == 32


@pytest.mark.parametrize("fork_server", ["1", "0"], ids=["fork-server", "fresh-processes"])
def test_the_local_driver_runs_only_missing_shards(tmp_path, fork_server):
    out = tmp_path / "feats"
    _fast_parts(out, IMAGES, 3, 1)
    kept = (out / "part-00001-of-00003.parquet").stat()
    rc, _, err = run_smcli("extract-regions", IMAGES, "-o", out, "--shards", "3", *FAST, cwd=REPO, timeout=300,
                           env={"SMCLI_FORK_SERVER": fork_server})
    assert rc == 0, err
    assert "1 of 3 part(s) already committed" in err and "submitting 2 shard(s) to local" in err
    assert (out / "part-00001-of-00003.parquet").stat().st_mtime_ns == kept.st_mtime_ns
    assert last_counts(err) == {"listed": 32, "duplicates": 0, "processed": 32, "written": 32, "failed": 0}
    single = tmp_path / "single.parquet"
    rc, _, err = run_main("extract-regions", IMAGES, "-o", single, *FAST)
    assert rc == 0, err
    assert_same_rows(single, out)


# ---------------------------------------------------------------------------------------
# Ray, in a network namespace of its own with only loopback up


def _namespace_ok() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip not found"
    try:
        proc = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare -n failed: {exc}"
    return None if proc.returncode == 0 else f"unshare -n is not allowed here: {proc.stderr.decode().strip()}"


def _ray_skip() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'smcli[ray]')"
    return _namespace_ok()


needs_ray = pytest.mark.skipif(_ray_skip() is not None, reason=str(_ray_skip()))


def run_isolated(*args, env: dict[str, str] | None = None, timeout: float = 300) -> tuple[int, str]:
    """``python -m smcli ARGS`` inside ``unshare -n`` with only loopback up (Ray listens on
    every interface otherwise), without usage statistics; bounded in time."""
    cmd = " ".join(["ip link set lo up && exec", sys.executable, "-m", "smcli", *map(_quote, args)])
    proc = subprocess.run(["unshare", "-n", "sh", "-c", cmd], cwd=REPO, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
                          env=child_env({"RAY_USAGE_STATS_ENABLED": "0", **(env or {})}))
    return proc.returncode, proc.stderr.decode("utf-8", "replace")


def _quote(arg) -> str:
    import shlex

    return shlex.quote(str(arg))


@needs_ray
def test_ray_with_a_killed_worker_loses_and_duplicates_nothing(tmp_path):
    """4 shards on Ray; the Ray worker running shard 1 is SIGKILLed after its first batch
    (a test hook): the driver retries it, and exactly 4 parts make up the single run."""
    out, marker = tmp_path / "feats", tmp_path / "killed"
    rc, err = run_isolated("extract-regions", IMAGES, "-o", f"{out}/", "--shards", "4", "--distributor", "ray",
                           *FAST, "--batch-size", "2", "--max-shard-retry", "2",
                           env={"SMCLI_TEST_KILL_SHARD": f"1:{marker}:parent"})
    assert rc == 0, err
    assert marker.exists(), "the hook did not fire"
    assert "shard 1/4 failed" in err and "retrying 1 shard(s) (try 2 of 2)" in err
    parts = sorted(p.name for p in out.glob("part-*-of-*.parquet") if not p.name.endswith(".errors.parquet"))
    assert parts == [f"part-{i:05d}-of-00004.parquet" for i in range(4)]
    assert hidden(out) == []  # no temporary, no resume journal
    counts = last_counts(err)
    assert counts == {"listed": 32, "duplicates": 0, "processed": 32, "written": 32, "failed": 0}
    records = [json.loads(pq.ParquetFile(out / p).metadata.metadata[RECORD_KEY]) for p in parts]
    assert sum(r["counts"]["written"] for r in records) == 32
    single = tmp_path / "single.parquet"
    rc, _, err = run_main("extract-regions", IMAGES, "-o", single, *FAST)
    assert rc == 0, err
    assert_same_rows(single, out)


@needs_ray
def test_ray_a_failing_shard_fails_the_run_and_the_rerun_does_only_it(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    sources = sorted(IMAGES.glob("*.jpg"))[:12]
    for k, src in enumerate(sources):
        shutil.copy(src, photos / f"img{k:02d}.jpg")
    (photos / "img06.jpg").write_bytes(b"not a picture")  # rows [6, 9) are shard 2 of 4
    out = tmp_path / "feats"
    argv = ("extract-regions", photos, "-o", f"{out}/", "--shards", "4", "--distributor", "ray", *FAST,
            "--strict", "--max-shard-retry", "2")
    rc, err = run_isolated(*argv)
    assert rc == 1, err
    assert "shard 2/4 failed 2 time(s)" in err and "img06.jpg" in err
    assert_one_line_error(rc, "\n".join(ln for ln in err.splitlines() if ln.startswith("smcli")),
                          "1 of 4 shard(s) failed (2/4)", "rerun the same command to continue")
    committed = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("part-*")}
    assert len(committed) == 6 and not (out / "_manifest.json").exists()  # 3 parts and their error reports
    shutil.copy(sources[6], photos / "img06.jpg")  # the bad file fixed
    rc, err = run_isolated(*argv)
    assert rc == 0, err
    assert "3 of 4 part(s) already committed" in err and "submitting 1 shard(s) to ray" in err
    assert {n: (out / n).stat().st_ino for n in committed} == {n: v[0] for n, v in committed.items()}
    assert {n: (out / n).stat().st_mtime_ns for n in committed} == {n: v[1] for n, v in committed.items()}
    assert last_counts(err)["written"] == 12 and hidden(out) == []


# ---------------------------------------------------------------------------------------
# Scoring in shards


def _scores_sorted(source) -> pa.Table:
    from smcli.stage import open_any

    stage = open_any(source)
    table = stage.read()
    stage.close()
    return table.sort_by("input_row") if "input_row" in table.column_names else table


def test_score_in_shards_equals_one_run(example_pipeline, example_model, tmp_path):
    """A pairs file scored as 2 shards (driver) and as pairs partitioned by 3 feature parts
    gives the single run's scores, in its order once sorted by input_row. In fp32: in bf16 a pair's
    score moves ~1e-4 with the batch it is computed in (the README says so)."""
    feats = example_pipeline["feats"]
    ids = sorted(p.name for p in IMAGES.glob("*.jpg"))
    rng = np.random.default_rng(0)
    texts = ["a dog runs on the grass", "two men talk in a street", "a child plays with a ball"]
    rows = [(ids[int(rng.integers(len(ids)))] if k % 9 else "nope.jpg", texts[k % 3]) for k in range(40)]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_id,caption\n" + "".join(f"{i},{t}\n" for i, t in rows))
    single = tmp_path / "scores.parquet"
    common = ("--model", example_model, "--precision", "fp32", "--pairs")
    rc, _, err = run_main("score", *common, pairs, "--regions", feats, "-o", single)
    assert rc == 0, err
    expected = _scores_sorted(single)
    rc, _, err = run_smcli("score", *common, pairs, "--regions", feats, "-o", tmp_path / "s2/", "--shards", "2",
                           cwd=REPO, timeout=300)
    assert rc == 0, err
    assert last_counts(err) == {"read": 40, "written": 35, "rejected": 5}
    got = _scores_sorted(tmp_path / "s2")
    assert got.column("image_id").to_pylist() == expected.column("image_id").to_pylist()
    assert np.allclose(got.column("score").to_numpy(), expected.column("score").to_numpy(), atol=1e-6)
    assert sorted(got.column("input_row").to_pylist()) == [k for k in range(40) if k % 9]
    # features as 3 parts, pairs partitioned by them, each shard reading one part of each
    parts = tmp_path / "feats"
    for i in range(3):
        rc, _, err = run_main("extract-regions", IMAGES, "-o", parts, "--shard", f"{i}/3")
        assert rc == 0, err
    assert run_main("finalize", parts)[0] == 0
    rc, _, err = run_main("partition-pairs", pairs, "--regions", parts, "-o", tmp_path / "pp")
    assert rc == 0, err
    assert "40 pairs into 3 part(s)" in err and "written 35, rejected 5" in err
    for i in range(3):
        rc, _, err = run_main("score", *common, tmp_path / "pp", "--regions", parts, "-o", tmp_path / "s3",
                              "--shard", f"{i}/3")
        assert rc == 0, err
    rc, _, err = run_main("finalize", tmp_path / "s3")
    assert rc == 0, err
    got = _scores_sorted(tmp_path / "s3")
    assert got.column("image_id").to_pylist() == expected.column("image_id").to_pylist()
    assert np.allclose(got.column("score").to_numpy(), expected.column("score").to_numpy(), atol=1e-6)
    rc, _, err = run_main("score", *common, tmp_path / "pp", "--regions", parts, "-o", tmp_path / "s4",
                          "--shard", "0/2")
    assert_one_line_error(rc, err, "holds 3 part(s); score it as --shard I/3")


def test_sharded_argument_errors_are_one_line(tmp_path):
    cases = [
        (["extract-regions", IMAGES, "-o", tmp_path / "o", "--shard", "2/2"], "--shard 2/2"),
        (["extract-regions", IMAGES, "--shard", "0/2"], "give -o DIR/"),
        (["extract-regions", IMAGES, "-o", tmp_path / "o", "--shard", "0/2", "--shards", "2"], "not both"),
        (["extract-regions", IMAGES, "-o", tmp_path / "o", "--shards", "2", "--distributor", "spark"],
         "--distributor spark"),
        (["extract-regions", IMAGES, "-o", tmp_path / "o", "--shard", "0/2", "--errors", tmp_path / "e.csv"],
         "--errors does not go with sharded runs"),
        (["extract-regions", "-", "-o", tmp_path / "stdin", "--shard", "0/2"], "cannot split '-'"),
        (["score", "-o", tmp_path / "o", "--shard", "0/2"], "give --pairs FILE"),
    ]
    for argv, fragment in cases:
        rc, _, err = run_main(*argv)
        assert_one_line_error(rc, err, fragment)
    assert not (tmp_path / "o" / "_inputs.parquet").exists()  # refused before listing anything
    _fast_parts(tmp_path / "o", IMAGES, 2, 0)
    rc, _, err = run_main("extract-regions", tmp_path / "o", "-o", tmp_path / "o", "--shard", "1/2")
    assert_one_line_error(rc, err, "its input list _inputs.parquet was made from")


def test_shard_processes_are_not_left_behind():
    """The shard launcher exits at once when its parent is gone (no orphan shard)."""
    from smcli.distributed.drivers import _LAUNCH

    proc = subprocess.run([sys.executable, "-c", _LAUNCH, str(os.getpid() + 10**6), "--version"],
                          capture_output=True, timeout=60)
    assert proc.returncode == 137 and proc.stdout == b""


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _is_fork_server(pid: int) -> bool:
    try:
        return b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _gone(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc (Linux)")
def test_the_fork_server_runs_shards_side_by_side_and_they_die_with_it(example_pipeline, tmp_path):
    """Two shard processes at once, each with its own exit status and stderr (as the plain
    launcher reports them); a process that does not end by itself (smcli serve) is killed
    with the server, and its run reports the kill."""
    import threading
    import time

    from smcli.distributed.drivers import run_shard_process
    from smcli.distributed.forkserver import ForkServer

    bad = ["extract-regions", str(tmp_path / "missing"), "-o", str(tmp_path / "o.parquet")]
    plain = run_shard_process(bad)
    server = ForkServer()
    try:
        results = {}
        threads = [threading.Thread(target=lambda k=k, a=a: results.__setitem__(k, run_shard_process(a, server)))
                   for k, a in (("bad", bad), ("version", ["--version"]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results["bad"] == plain and plain[0] == 1 and "missing" in plain[1]
        assert results["version"] == (0, "")

        blocked = {}
        serve = ["serve", "--regions", str(example_pipeline["feats"]), "--model", "flickr8k", "--port", "0"]
        runner = threading.Thread(target=lambda: blocked.__setitem__("result", run_shard_process(serve, server)))
        runner.start()
        deadline = time.monotonic() + 60
        while not _children(server._proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        (shard,) = _children(server._proc.pid)
        time.sleep(1.0)
        assert runner.is_alive()
        server._proc.kill()
        runner.join(60)
        assert blocked["result"][0] == -9 and blocked["result"][1].startswith("killed by signal 9")
        deadline = time.monotonic() + 30
        while not _gone(shard) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(shard), "the shard process outlived its fork server"
    finally:
        server.close()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc (Linux)")
def test_a_terminated_driver_stops_its_shards_and_leaves_no_process(tmp_path):
    """SIGTERM to the driver alone (not its process group) while a shard runs: the driver
    ends with the terminated line and code within seconds, and neither the fork server nor
    the shard process outlives it."""
    import signal
    import time

    from PIL import Image

    from smcli.errors import EXIT_TERMINATED

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for k in range(1500):  # enough for the shard to be running long after the signal comes
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(photos / f"{k:04d}.jpg")
    argv = ["extract-regions", str(photos), "-o", str(tmp_path / "feats") + "/", "--shards", "1",
            "--weights", "none", "--image-size", "224"]
    proc = subprocess.Popen([sys.executable, "-m", "smcli", *argv], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=child_env(None))
    try:
        deadline = time.monotonic() + 120
        server = shard = None
        while shard is None and time.monotonic() < deadline and proc.poll() is None:
            server = next((c for c in _children(proc.pid) if _is_fork_server(c)), None)
            shard = next(iter(_children(server)), None) if server else None
            time.sleep(0.05)
        assert shard is not None, "no shard process appeared"
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_TERMINATED, err
    assert err.decode().strip().splitlines()[-1] == "smcli: terminated"
    assert took < 20, f"the driver took {took:.1f} s to stop"
    deadline = time.monotonic() + 30
    while not (_gone(server) and _gone(shard)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(server) and _gone(shard)
    assert not (tmp_path / "feats" / "_manifest.json").exists()
