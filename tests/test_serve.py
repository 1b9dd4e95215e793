"""smcli serve: the JSON API, its refusals and its safety, on a real server on a loopback
port (the standard library has no test client), over a saved gallery of the 32 example
photos and the pretrained flickr8k model."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, child_env, run_main

DOG = "459814265_d48ba48978.jpg"  # the README's top hit for "a dog on grass"
CAPTION = "a dog on grass"


@pytest.fixture(scope="module")
def engine(serve_gallery):
    from smcli.serve.engine import SearchEngine

    g = serve_gallery
    return SearchEngine.open(model="flickr8k", index=str(g["gallery"]), captions=str(g["captions"]),
                             image_base=str(g["dir"]))


@pytest.fixture(scope="module")
def server(engine):
    from smcli.serve.server import make_server, running

    with running(make_server("127.0.0.1", 0, engine, log=False)) as srv:
        yield srv


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        assert self.headers["content-type"].startswith("application/json"), self.headers
        return json.loads(self.body)

    @property
    def error(self) -> str:
        data = self.json()
        assert set(data) == {"error", "status"} and data["status"] == self.status
        assert "\n" not in data["error"] and "Traceback" not in data["error"]
        return data["error"]


def call(server, method: str, path: str, body: bytes | str | dict | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    """One request, the path sent exactly as given (no normalisation)."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    if isinstance(body, dict):
        body, headers = json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def raw(server, data: bytes) -> bytes:
    """Bytes sent on a fresh connection and everything the server answers."""
    with socket.create_connection(server.server_address[:2], timeout=60) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def get(server, path: str) -> dict:
    reply = call(server, "GET", path)
    assert reply.status == 200, reply.body[:300]
    return reply.json()


# --- what it answers ------------------------------------------------------------------------


def test_info_describes_the_model_and_gallery(server):
    info = get(server, "/api/info")
    assert info["model"] == "flickr8k" and info["variant"] == "smlstm" and info["explain"] is True
    assert info["images"] == 32 and info["captions"] == 160
    assert info["limits"]["max_k"] == 100


def test_search_gives_what_retrieve_index_gives(server, serve_gallery, engine):
    from smcli.inference import tasks

    data = get(server, "/api/search?q=a+dog+on+grass&k=5")
    want = tasks.query_index(engine.model, engine.saved, [CAPTION], 5, 100).to_pylist()
    assert [r["id"] for r in data["results"]] == [w["id"] for w in want]
    assert [r["score"] for r in data["results"]] == [w["score"] for w in want]
    assert [r["rank"] for r in data["results"]] == [1, 2, 3, 4, 5]
    assert data["results"][0]["id"] == DOG
    # each result's image URL serves that photo's bytes
    for r in data["results"][:2]:
        reply = call(server, "GET", r["url"])
        assert reply.status == 200 and reply.headers["content-type"] == "image/jpeg"
        assert reply.body == (serve_gallery["photos"] / r["id"]).read_bytes()


def test_search_over_a_regions_file_ranks_as_the_index_does(serve_gallery, engine):
    from smcli.inference import tasks
    from smcli.serve.engine import SearchEngine

    feats = tasks.load_features(engine.model, str(serve_gallery["feats"]))
    in_memory = SearchEngine(engine.model, gallery=engine.model.encode_image_set(feats))
    a, b = ({r["id"]: r["score"] for r in e.search(CAPTION, k=5)["results"]} for e in (in_memory, engine))
    assert next(iter(a)) == next(iter(b)) == DOG
    # the index stores the matcher's tensors in 8 bits: near-ties may swap, scores move little
    both = a.keys() & b.keys()
    assert len(both) >= 4 and all(abs(a[i] - b[i]) < 5e-3 for i in both)


def test_the_shortlist_is_what_the_matcher_re_ranks(server, engine):
    from smcli.inference.gallery import search

    emb = engine.model.encode_texts(["q"], [CAPTION], cache=False).side.emb.float().numpy()
    _, top = search(engine.saved.index, emb, 4)
    shortlisted = {engine.image_ids[i] for i in top[0]}
    got = get(server, "/api/search?q=a+dog+on+grass&k=4&shortlist=4")["results"]
    assert {r["id"] for r in got} == shortlisted  # the embedding's four, in the matcher's order
    scores = [r["score"] for r in got]
    assert scores == sorted(scores, reverse=True)
    assert len(get(server, "/api/search?q=a+dog+on+grass&k=40")["results"]) == 32  # the whole gallery


def test_captions_for_an_image_are_ranked_and_scored_like_pairs(server, engine):
    data = get(server, f"/api/captions?image={DOG}&k=5")
    results = data["results"]
    scores = [r["score"] for r in results]
    assert len(results) == 5 and scores == sorted(scores, reverse=True)
    assert any(r["image_id"] == DOG for r in results[:3])  # one of the photo's own captions
    assert "dog" in results[0]["caption"].lower()
    pairs = [{"image": DOG, "caption": r["caption"]} for r in results]
    again = call(server, "POST", "/api/score", {"pairs": pairs}).json()["scores"]
    # bf16 (auto on bf16 hardware): a pair's score moves ~1e-4 with the batch it is computed in
    atol = 1e-5 if engine.model.precision == "fp32" else 1e-3
    assert np.allclose([s["score"] for s in again], scores, atol=atol)


def test_pair_scores_match_the_python_api(server, serve_gallery, engine):
    from smcli.inference.api import Model

    texts = ["a brown dog runs through a field of flowers", "two men sit on a bench"]
    reply = call(server, "POST", "/api/score", {"pairs": [{"image": DOG, "caption": t} for t in texts]})
    got = [s["score"] for s in reply.json()["scores"]]
    assert got[0] > got[1]
    model = Model("flickr8k")
    want = model.score(DOG, texts, regions=str(serve_gallery["feats"]))[0]
    assert np.allclose(got, want, atol=5e-3)  # the gallery's 8-bit tensors


def test_explain_gives_the_maps_smcli_explain_draws(server, serve_gallery):
    from PIL import Image

    reply = call(server, "GET", f"/api/explain?image={DOG}&caption=a+dog+on+grass")
    assert reply.status == 200
    assert str(serve_gallery["dir"]).encode() not in reply.body  # no server path goes out
    ex = reply.json()
    assert ex["image"] == DOG and ex["caption"] == CAPTION and ex["grid"] == [7, 7]
    assert len(ex["steps"]) == 3  # the flickr8k model's T
    score = call(server, "POST", "/api/score", {"pairs": [{"image": DOG, "caption": CAPTION}]}).json()
    assert ex["score"] == pytest.approx(score["scores"][0]["score"], abs=1e-5)
    assert [h["role"] for h in ex["header"]][:1] == ["title"] and CAPTION in ex["header"][-1]["text"]
    for step in ex["steps"]:
        m = np.array(step["map"])
        assert m.shape == (7, 7) and m.sum() == pytest.approx(1, abs=1e-4)
        assert (step["peak"]["row"], step["peak"]["col"]) == np.unravel_index(m.argmax(), m.shape)
        assert [w["word"] for w in step["words"]] == ["a", "dog", "on", "grass"]
        assert sum(w["weight"] for w in step["words"]) == pytest.approx(1, abs=1e-4)
        head, data = step["overlay"].split(",", 1)
        assert head == "data:image/png;base64"
        layer = Image.open(io.BytesIO(base64.b64decode(data)))
        assert layer.mode == "RGBA" and list(layer.size) == ex["size"]
        alpha = np.asarray(layer)[..., 3]
        assert alpha.max() > alpha.min()  # a map, not a flat layer


def test_explain_as_png_is_the_smcli_explain_picture(server, serve_gallery, tmp_path):
    from PIL import Image

    reply = call(server, "GET", f"/api/explain?image={DOG}&caption=a+dog+on+grass&format=png")
    assert reply.status == 200 and reply.headers["content-type"] == "image/png"
    rc, _, err = run_main("explain", "--model", "flickr8k", "--regions", serve_gallery["feats"], "--image", DOG,
                          "--caption", CAPTION, "-o", tmp_path / "cli.png", cwd=serve_gallery["dir"])
    assert rc == 0, err
    served = np.asarray(Image.open(io.BytesIO(reply.body)).convert("RGB"), dtype=np.int16)
    cli = np.asarray(Image.open(tmp_path / "cli.png").convert("RGB"), dtype=np.int16)
    assert served.shape == cli.shape
    # the same picture; the overlays (and the score's last digit) differ by the gallery's rounding only
    assert np.abs(served - cli).mean() < 2.0


# --- refusals -------------------------------------------------------------------------------

LONG = "dog " * 126  # 504 characters


@pytest.mark.parametrize("method, path, body, status, fragment", [
    ("GET", "/api/search", None, 400, "q: missing"),
    ("GET", "/api/search?q=", None, 400, "q: empty"),
    ("GET", "/api/search?q=%20%20", None, 400, "q: empty"),
    ("GET", f"/api/search?q={LONG.replace(' ', '+')}", None, 400, "504 characters, at most 500"),
    ("GET", "/api/search?q=xyzzyqq+blorf", None, 400, "query 'xyzzyqq blorf': no word of it is in the model's"),
    ("GET", "/api/search?q=dog&k=0", None, 400, "k 0: must be between 1 and 100"),
    ("GET", "/api/search?q=dog&k=101", None, 400, "k 101: must be between 1 and 100"),
    ("GET", "/api/search?q=dog&k=ten", None, 400, "k 'ten': must be a whole number"),
    ("GET", "/api/search?q=dog&k=99999999999999999999", None, 400, "must be a whole number"),
    ("GET", "/api/search?q=dog&shortlist=0", None, 400, "shortlist 0: must be between 1 and 1000"),
    ("GET", "/api/search?q=dog&shortlist=5000", None, 400, "shortlist 5000: must be between 1 and 1000"),
    ("GET", "/api/search?q=dog&q=cat", None, 400, "q: given 2 times"),
    ("GET", "/api/search?q=dog&top_k=3", None, 400, "unknown parameter 'top_k'"),
    ("GET", "/api/search?q=%ff", None, 400, "query string"),
    ("GET", "/api/captions", None, 400, "image: missing"),
    ("GET", "/api/captions?image=nope.jpg", None, 404, "image 'nope.jpg': not in the gallery"),
    ("GET", f"/api/captions?image={DOG}&k=500", None, 400, "k 500"),
    ("GET", f"/api/explain?image={DOG}", None, 400, "caption: missing"),
    ("GET", "/api/explain?image=nope.jpg&caption=a+dog", None, 404, "not in the gallery"),
    ("GET", f"/api/explain?image={DOG}&caption=a+dog&format=gif", None, 400, "format 'gif'"),
    ("GET", f"/api/explain?image={DOG}&caption=%20", None, 400, "caption: empty"),
    ("GET", "/api/score", None, 405, "GET /api/score: method not allowed (use POST)"),
    ("POST", "/api/search?q=dog", {}, 405, "method not allowed (use GET)"),
    ("DELETE", "/api/info", None, 405, "method not allowed"),
    ("PUT", "/", "x", 405, "method not allowed"),
    ("POST", "/api/score", {"pairs": []}, 400, "pairs: must be a non-empty list"),
    ("POST", "/api/score", {"pair": []}, 400, 'body: must be {"pairs"'),
    ("POST", "/api/score", {"pairs": [{"image": DOG}]}, 400, "pairs[0]: must be"),
    ("POST", "/api/score", {"pairs": [{"image": "x.jpg", "caption": "a dog"}]}, 404,
     "pairs[0].image 'x.jpg': not in the gallery"),
    ("POST", "/api/score", {"pairs": [{"image": DOG, "caption": 3}]}, 400, "pairs[0].caption: must be a string"),
    ("POST", "/api/score", {"pairs": [{"image": DOG, "caption": "qqzx"}]}, 400, "pairs[0].caption: query 'qqzx'"),
    ("POST", "/api/score", {"pairs": [{"image": DOG, "caption": "a dog"}] * 101}, 400, "101 pairs, at most 100"),
    ("GET", "/nope", None, 404, "/nope: no such page or API endpoint"),
    ("GET", "/api/", None, 404, "no such page"),
])
def test_bad_requests_get_one_json_line_and_their_status(server, method, path, body, status, fragment):
    reply = call(server, method, path, body)
    assert reply.status == status, reply.body[:300]
    assert fragment in reply.error
    if status == 405:
        assert reply.headers["allow"]


def test_bodies_are_bounded_typed_and_sized(server):
    big = json.dumps({"pairs": [{"image": DOG, "caption": "a dog " * 12_000}]})
    reply = call(server, "POST", "/api/score", big, {"Content-Type": "application/json"})
    assert reply.status == 413 and "at most 65,536" in reply.error
    reply = call(server, "POST", "/api/score", '{"pairs": []}', {"Content-Type": "text/plain"})
    assert reply.status == 415 and "send application/json" in reply.error
    reply = call(server, "POST", "/api/score", "{not json", {"Content-Type": "application/json"})
    assert reply.status == 400 and reply.error.startswith("body: not JSON")
    answer = raw(server, b"POST /api/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411") and b'"POST needs a Content-Length"' in answer
    answer = raw(server, b"POST /api/score HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: application/json\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411") and b"send Content-Length" in answer


def test_long_urls_foreign_hosts_and_garbage_are_refused_as_json(server):
    reply = call(server, "GET", "/api/search?q=" + "dog+" * 3000)
    assert reply.status == 414 and "at most 8,192" in reply.error
    reply = call(server, "GET", "/", headers={"Host": "attacker.example:8000"})
    assert reply.status == 421 and "not this server" in reply.error
    for line in (b"GARBAGE\r\n\r\n", b"GET / HTTP/7.0\r\n\r\n", b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"):
        answer = raw(server, line)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] (400|501|505) ", head), answer[:200]
        assert json.loads(body)["error"] and b"Traceback" not in answer


def test_a_failure_inside_a_request_is_a_500_without_a_trace(server, engine, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the matcher fell over\n  File secret.py, line 3")

    monkeypatch.setattr(engine, "search", broken)
    reply = call(server, "GET", "/api/search?q=a+dog")
    assert reply.status == 500 and "secret.py" not in reply.error and "fell over" not in reply.error
    monkeypatch.undo()
    assert call(server, "GET", "/api/search?q=a+dog").status == 200  # and it goes on serving


# --- only the gallery's own files -----------------------------------------------------------

TRAVERSALS = [
    "/image/../../../../etc/passwd", "/image/..%2f..%2f..%2fetc%2fpasswd", "/image/%2e%2e/%2e%2e/etc/passwd",
    "/image/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/image//etc/passwd", "/image/%2Fetc%2Fpasswd",
    "/image/photos/459814265_d48ba48978.jpg", "/image/459814265_d48ba48978.jpg", "/image/-1", "/image/32",
    "/image/1e1", "/image/01", "/image/0x1", "/image/%201", "/image/1%00", "/image/%D9%A1",
    "/image/1/../2", "/image/", "/static/../../../../etc/passwd", "/static/%2e%2e/engine.py",
    "/static/../server.py", "//etc/passwd", "/../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
    "/static/app.js/../../../../etc/passwd", "/static/index.html", "/static/", "/smcli/serve/server.py",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_only_gallery_rows_and_the_page_are_served(server, path):
    reply = call(server, "GET", path)
    assert reply.status == 404, (path, reply.body[:200])
    assert b"root:" not in reply.body and b"import" not in reply.body
    assert reply.error


def test_a_gallery_photo_replaced_by_a_link_out_of_its_folder_is_not_served(serve_gallery, engine, tmp_path):
    """The same gallery read from another folder where some photos are links: a link to a
    photo outside the folder, to a system file, a photo that is not an image, a directory
    and a missing photo are 404; a link to another photo inside the folder is served."""
    from smcli.serve.engine import SearchEngine
    from smcli.serve.server import make_server, running

    ids = engine.image_ids
    photos, outside = tmp_path / "photos", tmp_path / "outside"
    photos.mkdir()
    outside.mkdir()
    for name in ids[5:]:
        (photos / name).write_bytes((serve_gallery["photos"] / name).read_bytes())
    (outside / ids[0]).write_bytes((serve_gallery["photos"] / ids[0]).read_bytes())
    os.symlink(outside / ids[0], photos / ids[0])  # a real photo, but outside the folder
    os.symlink(photos / ids[5], photos / ids[1])  # another photo of the folder
    os.symlink("/etc/passwd", photos / ids[2])
    (photos / ids[3]).write_text("root:x:0:0:not an image\n")
    (photos / ids[4]).mkdir()
    (photos / ids[6]).unlink()  # gone since the gallery was built
    moved = SearchEngine(engine.model, saved=engine.saved, image_base=tmp_path)
    with running(make_server("127.0.0.1", 0, moved, log=False)) as srv:
        status = {row: call(srv, "GET", f"/image/{row}").status for row in range(7)}
        assert status == {0: 404, 1: 200, 2: 404, 3: 404, 4: 404, 5: 200, 6: 404}
        assert call(srv, "GET", "/image/1").body == (serve_gallery["photos"] / ids[5]).read_bytes()
        reply = call(srv, "GET", f"/api/explain?image={ids[0]}&caption=a+dog")
        assert reply.status == 404 and "not available on this server" in reply.error


def test_image_files_are_sniffed_not_trusted_by_name(tmp_path):
    from smcli.serve.files import ImageFiles, sniff_image

    assert sniff_image(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "image/jpeg"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_image(b"<svg xmlns=") is None and sniff_image(b"") is None
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    (tmp_path / "a" / "y.png").write_bytes(b"<html><script>alert(1)</script>")
    os.mkfifo(tmp_path / "a" / "z.png")
    files = ImageFiles(["a/x.png", "a/y.png", "a/z.png", ""], tmp_path)
    assert files.root == tmp_path / "a"
    fh, kind, size = files.open(0)
    fh.close()
    assert (kind, size) == ("image/png", 28)
    assert [files.open(r) for r in (1, 2, 3, 4, -1)] == [None] * 5


# --- concurrency and the model loaded once ---------------------------------------------------


def test_concurrent_requests_answer_as_one_at_a_time_and_load_nothing(server, monkeypatch):
    import smcli.inference.matcher as matcher
    import smcli.models.factory as factory

    def no_loading(*args, **kwargs):
        raise AssertionError("a request loaded a model")

    queries = ["a dog on grass", "two children play in the water", "a man rides a bike", "a black dog runs",
               "people on a street", "a girl in a pink dress"]
    jobs = [("GET", f"/api/search?q={q.replace(' ', '+')}&k=8", None) for q in queries]
    jobs += [("GET", f"/api/captions?image={DOG}&k=4", None),
             ("POST", "/api/score", {"pairs": [{"image": DOG, "caption": q} for q in queries]})]
    alone = [call(server, m, p, b).json() for m, p, b in jobs]
    monkeypatch.setattr(factory, "load_model", no_loading)
    monkeypatch.setattr(matcher, "load_model", no_loading)
    together: dict[int, list] = {}
    errors = []

    def worker(w: int) -> None:
        try:
            order = list(range(len(jobs)))[w % len(jobs):] + list(range(len(jobs)))[:w % len(jobs)]
            for _ in range(2):
                for j in order:
                    together.setdefault(j, []).append(call(server, *jobs[j]).json())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert errors == [] and not any(t.is_alive() for t in threads)
    for j, answers in together.items():
        assert len(answers) == 12
        assert all(a == alone[j] for a in answers), jobs[j][1]


def test_connections_beyond_the_limit_are_answered_503_at_once(engine, serve_gallery):
    from smcli.serve.engine import Limits, SearchEngine
    from smcli.serve.server import make_server, running

    two = SearchEngine(engine.model, saved=engine.saved, image_base=serve_gallery["dir"],
                       limits=Limits(max_connections=2))
    with running(make_server("127.0.0.1", 0, two, log=False)) as srv:
        idle = [socket.create_connection(srv.server_address[:2], timeout=30) for _ in range(2)]
        try:
            answer = raw(srv, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 503 ") and b"2 connections are open" in answer
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 30  # their threads end once the idle clients are gone
        while call(srv, "GET", "/api/info").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


# --- the page -------------------------------------------------------------------------------


def test_the_page_and_its_files_are_local_and_guarded(server):
    page = call(server, "GET", "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    text = page.body.decode()
    assert 'id="q"' in text and 'id="results"' in text and "<dialog" in text
    for ref in re.findall(r'(?:src|href)="([^"]+)"', text):
        assert ref.startswith(("/", "data:", "#")), ref  # nothing from a CDN
        if ref.startswith("/static/"):
            asset = call(server, "GET", ref)
            assert asset.status == 200 and b"http://" not in asset.body and b"https://" not in asset.body
    assert call(server, "HEAD", "/static/app.js").body == b""


# --- the command ----------------------------------------------------------------------------


def test_serve_refuses_bad_arguments_in_one_line(tmp_path):
    rc, _, err = run_main("serve", cwd=tmp_path)
    assert_one_line_error(rc, err, "nothing to serve: give --index")
    rc, _, err = run_main("serve", "--index", "g", "--regions", "f.parquet", cwd=tmp_path)
    assert_one_line_error(rc, err, "give --index or --regions, not both")
    rc, _, err = run_main("serve", "--index", "g", "--image-root", "nowhere", cwd=tmp_path)
    assert_one_line_error(rc, err, "--image-root nowhere: not a directory")
    rc, _, err = run_main("serve", "--index", "g", "--port", "70000", cwd=tmp_path)
    assert_one_line_error(rc, err, "--port")
    (tmp_path / "g").mkdir()
    rc, _, err = run_main("serve", "--model", "flickr8k", "--index", tmp_path / "g", "--port", "0", cwd=tmp_path)
    assert_one_line_error(rc, err, "not an smcli index")


def test_a_taken_port_is_refused_before_the_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        rc, _, err = run_main("serve", "--index", tmp_path, "--port", str(port), cwd=tmp_path)
    line = assert_one_line_error(rc, err, f"--port {port}: address already in use")
    assert "smcli model" not in err, line  # it failed before resolving and loading the model


def test_smcli_serve_runs_until_terminated(serve_gallery):
    """The real command in a process: it says where it listens, answers, and ends on SIGTERM."""
    g = serve_gallery
    cmd = [sys.executable, "-m", "smcli", "serve", "--model", "flickr8k", "--index", "gallery", "--port", "0",
           "--captions", "captions.parquet"]
    proc = subprocess.Popen(cmd, cwd=g["dir"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=child_env(None), text=True)
    try:
        lines, url = [], None
        deadline = time.monotonic() + 240
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            url = found and found[1]
        assert url, "".join(lines)
        assert "32 images (index gallery), model flickr8k" in lines[-1]
        host, port = url[7:-1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("GET", "/api/search?q=a+dog+on+grass&k=1")
        reply = json.loads(conn.getresponse().read())
        conn.close()
        assert reply["results"][0]["id"] == DOG
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, err
    assert "GET /api/search?q=a+dog+on+grass&k=1 200" in err
    assert err.strip().splitlines()[-1] == "smcli: terminated" and "Traceback" not in err


def test_serve_is_documented_where_users_look():
    readme = (REPO / "README.md").read_text()
    assert "smcli serve --index" in readme and "docs/serve.png" in readme
    assert (REPO / "docs" / "serve.png").is_file()
    assert Path(REPO / "smcli" / "serve" / "static" / "index.html").is_file()
