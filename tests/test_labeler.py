"""The web labeler: a real server (subprocess), a real browser (Debian's chromium), a real database."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import hypothesis
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient

from prefrl.config import TrainConfig
from prefrl.data import SKIP, TIE, ComparisonStore, Query, Segment
from prefrl.labeler import LabelerProcess
from prefrl.labeler.server import create_app
from prefrl.labeler.store import Conflict, LabelQueue
from prefrl.oracles import HumanOracle
from prefrl.run import RunDir

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def cartpole_segments(n: int, T: int = 30, seed: int = 0) -> list[Segment]:
    """Segments with real CartPole states (so their clips render), some ending in a fall."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = T if i % 3 else int(rng.integers(5, T))
        states = rng.uniform(-0.05, 0.05, size=(T, 4))
        states[:, 0] += np.linspace(0, rng.uniform(-1, 1), T)  # the cart drifts, so frames differ
        obs = states.astype(np.float32)
        rewards = np.r_[np.ones(length), np.zeros(T - length)].astype(np.float32)
        out.append(
            Segment(
                id=i,
                obs=obs,
                actions=rng.integers(2, size=T),
                true_rewards=rewards,
                length=length,
                terminated=length < T,
                env_id="CartPole-v1",
                states=states,
            )
        )
    return out


def queries(segments: list[Segment], n: int, seed: int = 0) -> list[Query]:
    rng = np.random.default_rng(seed)
    rows = [rng.choice(len(segments), size=2, replace=False) for _ in range(n)]
    return [Query((segments[a], segments[b])) for a, b in rows]


def make_run(path: Path, n_queries: int, *, task: str = "keep the pole upright") -> tuple[RunDir, list[Query]]:
    run = RunDir(path)
    run.save_config(TrainConfig(task=task))
    qs = queries(cartpole_segments(40), n_queries)
    queue = LabelQueue(run.labels_path)
    queue.add_queries(qs)
    queue.close()
    return run, qs


@pytest.fixture
def serve():
    servers = []

    def start(run: Path, *args: str) -> LabelerProcess:
        proc = LabelerProcess(run, ("--clip-size", "128", *args), env={"SDL_AUDIODRIVER": "dummy"})
        servers.append(proc.start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def db_rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


# -- the store, on SQLite and on Postgres ----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    """A fresh, empty label store: a SQLite file, or the Postgres database of ``conftest.postgres_url``."""
    if request.param == "sqlite":
        return str(tmp_path / "labels.sqlite")
    url = request.getfixturevalue("postgres_url")
    import sqlalchemy as sa

    from prefrl.labeler.store import meta

    engine = sa.create_engine(url)
    meta.drop_all(engine)  # every test starts from an empty store
    engine.dispose()
    return url


def store_rows(queue: LabelQueue, sql: str) -> list[tuple]:
    import sqlalchemy as sa

    with queue.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql)).all()]


def test_leases_keep_a_question_with_one_labeler_until_they_expire(store_url):
    queue = LabelQueue(store_url, lease_s=60)
    qs = queries(cartpole_segments(10), 3)
    queue.add_queries(qs)
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    qa = queue.lease_next(a)
    assert qa.id == qs[0].id and queue.lease_next(a).id == qa.id  # a reload shows the same pair
    qb = queue.lease_next(b)
    assert qb.id == qs[1].id
    later = time.time() + 61  # a's lease has expired: its question goes to the next labeler
    assert queue.lease_next(uuid.uuid4().hex, now=later).id == qa.id
    queue.close()


def test_answers_are_comparisons_stored_once_and_undo_reopens_the_question(store_url):
    queue = LabelQueue(store_url)
    qs = queries(cartpole_segments(10), 3)
    oracle = HumanOracle(queue)
    oracle.submit(qs)
    assert oracle.pending() == 3 and oracle.collect(timeout=0.0) == []
    s = uuid.uuid4().hex
    q = queue.lease_next(s)
    aid = uuid.uuid4().hex
    assert queue.answer(answer_id=aid, query_id=q.id, label=0, labeler="ada", session=s)
    assert not queue.answer(answer_id=aid, query_id=q.id, label=0, labeler="ada", session=s)  # a retry
    with pytest.raises(Conflict, match="already answered"):
        queue.answer(answer_id=uuid.uuid4().hex, query_id=q.id, label=1, labeler="bob", session=uuid.uuid4().hex)
    with pytest.raises(Conflict, match="label 5"):
        queue.answer(answer_id=uuid.uuid4().hex, query_id=qs[1].id, label=5, labeler="ada", session=s)

    def stored():
        return [c for _, c in queue.answers_since(0)]

    (c,) = stored()
    assert (c.query_id, c.label, c.source, c.labeler) == (q.id, 0, "human", "ada") and c.time > 0
    assert all(queue.has_segment(i) for i in c.segment_ids)
    if not store_url.startswith("postgresql"):  # the training loop reads the same SQLite file
        assert ComparisonStore(store_url).comparisons() == [c]
    (got,) = oracle.collect(timeout=1.0)
    assert got.query_id == q.id and oracle.pending() == 2
    assert queue.undo(s).id == q.id and stored() == [] and queue.lease_next(s).id == q.id
    assert store_rows(queue, "SELECT COUNT(*) FROM answers WHERE undone IS NOT NULL") == [(1,)]  # kept, marked
    queue.answer(answer_id=uuid.uuid4().hex, query_id=q.id, label=TIE, labeler="ada", session=s)
    assert [c.label for c in stored()] == [TIE]
    assert queue.progress(s) == {"session": 1, "total": 1, "queue": 2, "last_hour": 1}
    queue.close()


def test_concurrent_labelers_racing_for_the_same_questions_store_each_once(store_url):
    """8 labelers answer 240 questions, each also trying a rival's question and retrying its own answers."""
    queue = LabelQueue(store_url)
    qs = queries(cartpole_segments(40), 240)
    queue.add_queries(qs)
    outcomes: list[str] = []

    def label(worker: int) -> None:
        session = uuid.uuid4().hex
        for i in range(worker, len(qs), 8):
            aid = uuid.uuid4().hex
            for target in (qs[i], qs[(i + 1) % len(qs)]):  # its own question, then the next worker's: races
                for _ in range(2):  # every answer sent twice, as a retry would
                    try:
                        fresh = queue.answer(
                            answer_id=aid, query_id=target.id, label=i % 2, labeler="w", session=session
                        )
                        outcomes.append("stored" if fresh else "repeat")
                    except Conflict:
                        outcomes.append("conflict")
                aid = uuid.uuid4().hex

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(label, range(8)))
    assert outcomes.count("stored") == len(qs)
    assert store_rows(queue, "SELECT COUNT(*), COUNT(DISTINCT query_id) FROM comparisons") == [(240, 240)]
    assert store_rows(queue, "SELECT COUNT(*) FROM answers") == [(240,)]
    assert store_rows(queue, "SELECT COUNT(*) FROM queries WHERE answered = 0") == [(0,)]
    queue.close()


def test_segment_ids_beyond_32_bits_are_stored(store_url):
    queue = LabelQueue(store_url)
    big = [Segment(**{**s.__dict__, "id": (1 << 40) + s.id}) for s in cartpole_segments(2)]
    queue.add_queries([Query(tuple(big))])
    assert queue.has_segment((1 << 40) + 1) and queue.segment(1 << 40).id == 1 << 40
    queue.close()


def test_a_bad_database_url_is_refused_with_what_to_do(tmp_path, capsys):
    from prefrl.cli import main

    make_run(tmp_path / "run", 1)
    cases = {
        "nosuch://host/db": "knows no database or driver 'nosuch'",
        str(tmp_path / "missing" / "labels.sqlite"): "directory exists",  # a path is a SQLite file
        "mysql+mysqldb://ada:s3cret@localhost/labels": "driver for 'mysql+mysqldb' is not installed",
        "postgresql+psycopg://ada:s3cret@127.0.0.1:1/labels": "cannot open the label store",
    }
    for url, problem in cases.items():
        assert main(["label", str(tmp_path / "run"), "--db", url, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("prefrl: error: ") and err.count("\n") == 1, err
        assert problem in err and "s3cret" not in err, err


def test_a_fresh_run_refuses_a_database_holding_another_runs_questions(tmp_path, capsys):
    from prefrl.cli import main

    shared = tmp_path / "team.sqlite"
    queue = LabelQueue(shared)
    queue.add_queries(queries(cartpole_segments(4), 2))
    queue.close()
    url = f"sqlite:///{shared}"
    assert main(["train", "--oracle", "human", "--db", url, "--run-dir", str(tmp_path / "r"), "--port", "0"]) == 2
    assert "already holds another run's questions" in capsys.readouterr().err
    assert main(["train", "--db", url, "--run-dir", str(tmp_path / "s")]) == 2  # with the synthetic oracle
    assert "needs --oracle human" in capsys.readouterr().err


# -- the HTTP API -----------------------------------------------------------------------------------


def test_every_input_is_validated_and_clips_are_served_by_id_only(tmp_path):
    queue = LabelQueue(tmp_path / "labels.sqlite")
    queue.add_queries(queries(cartpole_segments(4), 1))
    http = TestClient(create_app(queue, None, task="t"))
    s = uuid.uuid4().hex
    assert http.post("/api/next", json={"session": "x"}).status_code == 422  # too short
    assert http.post("/api/next", json={"session": s, "extra": 1}).status_code == 422
    q = http.post("/api/next", json={"session": s}).json()["query"]
    good = {"answer_id": uuid.uuid4().hex, "query_id": q["id"], "label": 0, "labeler": "ada", "session": s}
    for bad in ({"label": 99}, {"label": "left"}, {"labeler": "<script>"}, {"query_id": "../x"}, {"answer_id": ""}):
        assert http.post("/api/answer", json=good | bad).status_code == 422, bad
    assert http.post("/api/answer", json=good | {"query_id": "nosuchquery"}).status_code == 409
    for path in ("/clips/..%2F..%2Fetc%2Fpasswd.mp4", "/clips/-1.mp4", "/clips/abc.mp4", "/clips/0.mp4"):
        assert http.get(path).status_code in (404, 422), path
    assert http.post("/api/answer", json=good).status_code == 200


def test_any_address_but_loopback_needs_the_token(tmp_path):
    queue = LabelQueue(tmp_path / "labels.sqlite")
    http = TestClient(create_app(queue, None, token="s3cret-token"))
    assert http.get("/").status_code == 401
    assert http.get("/api/info", headers={"X-Token": "wrong"}).status_code == 401
    assert http.get("/?token=s3cret-token").status_code == 200
    assert http.get("/api/info", headers={"X-Token": "s3cret-token"}).status_code == 200
    make_run(tmp_path / "run", 1)
    cmd = [sys.executable, "-m", "prefrl.cli", "label", str(tmp_path / "run"), "--host", "0.0.0.0", "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert "labeler at http://0.0.0.0:" in line and "/?token=" in line, line
        port, token = line.split(":")[-1].split("/?token=")
        assert len(token.strip()) >= 24
        assert httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_8_clients_x_500_answers_are_stored_exactly_once(tmp_path, serve):
    clients, per_client = 8, 500
    run, _ = make_run(tmp_path / "run", clients * per_client)
    server = serve(run.path)
    statuses: list[int] = []

    def label(_):
        session = uuid.uuid4().hex
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(per_client):
                q = http.post("/api/next", json={"session": session}).json()["query"]
                body = {"answer_id": uuid.uuid4().hex, "query_id": q["id"], "label": i % 2, "labeler": "crowd"}
                for _ in range(2 if i % 10 == 0 else 1):  # every tenth answer is sent twice, as a retry would
                    statuses.append(http.post("/api/answer", json=body | {"session": session}).status_code)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(label, range(clients)))
    seconds = time.perf_counter() - start
    print(f"{clients * per_client} answers in {seconds:.1f} s: {clients * per_client / seconds:.0f} answers/s")
    assert set(statuses) == {200}
    db = run.labels_path
    assert db_rows(db, "SELECT COUNT(*), COUNT(DISTINCT query_id) FROM comparisons") == [(4000, 4000)]
    assert db_rows(db, "SELECT COUNT(*) FROM answers") == [(4000,)]
    assert db_rows(db, "SELECT COUNT(*) FROM queries WHERE answered = 0") == [(0,)]


def test_a_label_server_with_db_renders_queued_clips_ahead_and_keeps_answers_in_that_database(
    tmp_path, serve, postgres_url
):
    """``prefrl label RUN --db URL``: the queue, segments and answers are in that database (Postgres here), and
    clips are rendered as soon as questions are queued, before anyone asks, also while the server runs."""
    import sqlalchemy as sa

    from prefrl.labeler.store import meta

    engine = sa.create_engine(postgres_url)
    meta.drop_all(engine)
    engine.dispose()
    queue = LabelQueue(postgres_url)
    qs = queries(cartpole_segments(10), 2)
    queue.add_queries(qs)
    run = RunDir(tmp_path / "run")
    run.save_config(TrainConfig(task="keep the pole upright"))  # the run directory has no labels.sqlite
    server = serve(run.path, "--db", postgres_url)

    def wait_for_clips(questions: list[Query]) -> None:
        deadline = time.monotonic() + 120
        while not all((run.path / "clips" / f"{s.id}.mp4").exists() for q in questions for s in q.segments):
            assert time.monotonic() < deadline, "the clips of queued questions were not rendered"
            time.sleep(0.2)

    wait_for_clips(qs)
    more = queries([Segment(**{**s.__dict__, "id": 100 + s.id}) for s in cartpole_segments(6, seed=1)], 2, seed=1)
    queue.add_queries(more)  # as the training loop's HumanOracle.submit does
    wait_for_clips(more)
    session = uuid.uuid4().hex
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for label in (0, 1):
            q = http.post("/api/next", json={"session": session}).json()["query"]
            clip = http.get(q["clips"][0])
            assert clip.status_code == 200 and clip.headers["content-type"] == "video/mp4" and clip.content
            body = {"answer_id": uuid.uuid4().hex, "query_id": q["id"], "label": label, "labeler": "ada"}
            assert http.post("/api/answer", json=body | {"session": session}).status_code == 200
    rows = store_rows(queue, "SELECT query_id, label, source, labeler FROM comparisons ORDER BY seq")
    assert rows == [(qs[0].id, 0, "human", "ada"), (qs[1].id, 1, "human", "ada")]
    assert store_rows(queue, "SELECT COUNT(*) FROM answers") == [(2,)]
    assert not run.labels_path.exists()
    queue.close()


def test_kill_9_loses_no_acknowledged_answer(tmp_path, serve):
    run, _ = make_run(tmp_path / "run", 3000)
    server = serve(run.path)
    acked: list[str] = []
    stop = threading.Event()

    def label():
        session = uuid.uuid4().hex
        with httpx.Client(base_url=server.url, timeout=10) as http:
            while not stop.is_set():
                try:
                    q = http.post("/api/next", json={"session": session}).json()["query"]
                    aid = uuid.uuid4().hex
                    body = {"answer_id": aid, "query_id": q["id"], "label": 1, "labeler": "k", "session": session}
                    if http.post("/api/answer", json=body).status_code == 200:
                        acked.append(aid)
                except httpx.TransportError:
                    return

    threads = [threading.Thread(target=label) for _ in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 200:
        time.sleep(0.05)
    server.kill()
    stop.set()
    for t in threads:
        t.join()
    serve(run.path)  # restart on the same database
    stored = {r[0] for r in db_rows(run.labels_path, "SELECT answer_id FROM answers")}
    assert set(acked) <= stored, f"{len(set(acked) - stored)} acknowledged answers lost"
    assert db_rows(run.labels_path, "SELECT COUNT(*) FROM comparisons")[0][0] == len(stored)


def test_fuzzed_requests_never_get_a_server_error(tmp_path):
    """The labeler's OpenAPI schema fuzzed with schemathesis, in-process, over a queue of real questions."""
    from prefrl.clips import ClipCache

    queue = LabelQueue(tmp_path / "labels.sqlite")
    queue.add_queries(queries(cartpole_segments(6), 20))
    clips = ClipCache(tmp_path / "clips", load=queue.segment, size=64, workers=1)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(queue, clips, task="fuzz"))
    calls: list[str] = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(
                max_examples=40, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
            )
            def no_server_error(case):
                response = case.call()
                calls.append(f"{case.method} {response.status_code}")
                assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text}"

            no_server_error()
    finally:
        clips.close()
        queue.close()
    assert {c.split()[0] for c in calls} == {"GET", "POST"} and len(calls) > 100


# -- the page, in a real browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium, which .ci/run installs")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


DRAWN = """async (id) => {
  const v = document.getElementById(id);
  if (v.readyState < 2) await new Promise(r => v.addEventListener('loadeddata', r, {once: true}));
  // The first frame is always a real step (padding after an episode end comes last): pause there, so
  // the check does not depend on where playback happens to be.
  v.pause();
  const seeked = new Promise(r => v.addEventListener('seeked', r, {once: true}));
  v.currentTime = 0;
  await seeked;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  const px = g.getImageData(0, 0, c.width, c.height).data;
  let lo = 255, hi = 0;
  for (let i = 0; i < px.length; i += 4) { lo = Math.min(lo, px[i]); hi = Math.max(hi, px[i]); }
  return {w: v.videoWidth, h: v.videoHeight, lo, hi};
}"""


def test_page_plays_both_clips_and_keys_record_answers(tmp_path, serve, browser):
    run, _ = make_run(tmp_path / "run", 6, task="keep the pole upright")
    server = serve(run.path)
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.body.dataset.query")
    assert "keep the pole upright" in page.inner_text("#task")
    for side in ("left", "right"):
        drawn = page.evaluate(DRAWN, side)
        assert drawn["w"] > 0 and drawn["h"] > 0
        assert drawn["hi"] - drawn["lo"] > 50, f"{side} clip drew a blank frame: {drawn}"

    def answered() -> list[tuple]:
        return db_rows(run.labels_path, "SELECT query_id, label, source FROM comparisons ORDER BY seq")

    first = page.evaluate("document.body.dataset.query")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"document.body.dataset.query && document.body.dataset.query !== '{first}'")
    second = page.evaluate("document.body.dataset.query")
    page.keyboard.press("ArrowUp")
    page.wait_for_function(f"document.body.dataset.query !== '{second}'")
    assert answered() == [(first, 0, "human"), (second, TIE, "human")]
    page.keyboard.press("u")  # undo: the second pair comes back, its answer is gone
    page.wait_for_function(f"document.body.dataset.query === '{second}'")
    assert answered() == [(first, 0, "human")]
    page.keyboard.press("ArrowDown")
    page.wait_for_function(f"document.body.dataset.query !== '{second}'")
    page.click("#b-right")
    page.wait_for_function("document.getElementById('progress').textContent.includes('3 labels this session')")
    assert [r[1] for r in answered()] == [0, SKIP, 1]
    page.keyboard.press("+")
    assert page.inner_text("#speed") == "1.5×"
    page.close()


def test_train_with_a_human_oracle_queues_in_the_run_store_and_keeps_states(tmp_path):
    from prefrl.config import load_config
    from prefrl.make import check_config, clip_state_fn, make_oracle

    cfg = load_config(None, ["oracle.kind=human"])
    check_config(cfg)
    oracle = make_oracle(cfg.oracle, seed=0, labels_path=tmp_path / "labels.sqlite")
    assert isinstance(oracle, HumanOracle) and oracle.pending() == 0
    assert clip_state_fn(cfg) is not None
    assert clip_state_fn(load_config(None, [])) is None  # synthetic runs record no states


def text_segments(n: int) -> list[Segment]:
    """Segments of a text task: what people see is their text, not a clip."""
    out = []
    for i in range(n):
        tokens = np.arange(8) + i
        out.append(
            Segment(
                id=1000 + i,
                obs=tokens,
                actions=tokens,
                true_rewards=np.zeros(8, dtype=np.float32),
                length=8,
                terminated=False,
                env_id="text",
                text=f"Prompt: say something kind\nReply {i}: you are doing great, number {i}",
            )
        )
    return out


def test_page_shows_text_pairs_and_best_of_4_sets_with_number_keys(tmp_path, serve, browser):
    run = RunDir(tmp_path / "run")
    run.save_config(TrainConfig(task="pick the kindest reply"))
    texts, clips = text_segments(6), cartpole_segments(4)
    qs = [Query(tuple(texts[:2])), Query(tuple(texts[2:6])), Query(tuple(clips))]
    queue = LabelQueue(run.labels_path)
    queue.add_queries(qs)
    queue.close()
    server = serve(run.path)
    page = browser.new_page()
    page.goto(server.url + "/")

    page.wait_for_function(f"document.body.dataset.query === '{qs[0].id}'")  # a text pair: two texts, no video
    assert page.locator("video").count() == 0
    assert page.inner_text("#left") == texts[0].text and page.inner_text("#right") == texts[1].text
    page.keyboard.press("ArrowRight")

    page.wait_for_function(f"document.body.dataset.query === '{qs[1].id}'")  # best of 4 texts, keys 1-4
    assert page.locator("#pair figure").count() == 4 and page.inner_text("#opt-2") == texts[4].text
    assert page.inner_text("h1") == "Which text is best?"
    page.keyboard.press("3")

    page.wait_for_function(f"document.body.dataset.query === '{qs[2].id}'")  # best of 4 clips: all four play
    for i in range(4):
        drawn = page.evaluate(DRAWN, f"opt-{i}")
        assert drawn["w"] > 0 and drawn["hi"] - drawn["lo"] > 50, f"clip {i} drew a blank frame: {drawn}"
    page.click("#b-opt-3")
    page.wait_for_function("document.getElementById('progress').textContent.includes('3 labels this session')")
    rows = db_rows(run.labels_path, "SELECT query_id, segment_ids, label FROM comparisons ORDER BY seq")
    assert [(q, json.loads(ids), label) for q, ids, label in rows] == [
        (qs[0].id, [s.id for s in qs[0].segments], 1),
        (qs[1].id, [s.id for s in qs[1].segments], 2),
        (qs[2].id, [s.id for s in qs[2].segments], 3),
    ]
    page.close()
