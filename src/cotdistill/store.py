"""One SQLite file per run directory: problems, annotations, training runs, predictions, metrics.

Problems are stored by content key (`Problem.key`: task and text), never by position, so
files sharing a run never overwrite each other. Unique keys make every step idempotent:
annotation rows are keyed by a hash of the problem's key and what was asked (teacher, prompt,
sampling parameters, sample index), predictions by (eval run, problem key, sample). A step
asks the store what is already done, does only the rest, and commits in small batches, so a
crash or Ctrl-C loses at most the batch in flight. The schema's version is the file's
`PRAGMA user_version`; an older store is migrated when opened, a newer one refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cotdistill.errors import CotdistillError, EnvironmentProblem
from cotdistill.tasks import Problem

STUDENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def student_dir(run_dir: str | Path, name: str) -> Path:
    """Where student `name` lives: a plain name, so nothing lands outside the run directory."""
    if not STUDENT_NAME.fullmatch(name or ""):
        raise CotdistillError(f"student name {name!r}: use letters, digits and . _ + - (no path, at most 100)")
    return Path(run_dir) / "students" / name


def model_in_run(run_dir: str | Path, name: str) -> str:
    """A model named on the command line: a student of this run by name, else the name as
    given (an alias, a directory, a hub id, openai:MODEL)."""
    if not STUDENT_NAME.fullmatch(name):
        return name
    trained = student_dir(run_dir, name)
    return str(trained) if trained.is_dir() else name

SCHEMA_VERSION = 1  # PRAGMA user_version; 0: the positional problem ids of before (migrated on open)
SCHEMA = """
CREATE TABLE IF NOT EXISTS problems (
    key TEXT PRIMARY KEY,
    task TEXT NOT NULL, id TEXT NOT NULL, question TEXT NOT NULL, answer TEXT NOT NULL, kind TEXT NOT NULL,
    gold TEXT NOT NULL, repeat INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS annotations (
    key TEXT PRIMARY KEY,
    task TEXT NOT NULL, split TEXT NOT NULL, problem_id TEXT NOT NULL, problem_key TEXT NOT NULL,
    method TEXT NOT NULL, teacher TEXT NOT NULL, sample INTEGER NOT NULL,
    prompt TEXT NOT NULL, text TEXT NOT NULL, parsed TEXT NOT NULL, answer TEXT,
    kept INTEGER NOT NULL, reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost REAL NOT NULL,
    created REAL NOT NULL, finish_reason TEXT NOT NULL DEFAULT 'stop', logprobs TEXT
);
CREATE INDEX IF NOT EXISTS annotations_by_method ON annotations (task, split, method, kept);
CREATE TABLE IF NOT EXISTS runs (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL, result TEXT NOT NULL DEFAULT '{}', started REAL NOT NULL, finished REAL
);
CREATE TABLE IF NOT EXISTS predictions (
    run TEXT NOT NULL, problem_key TEXT NOT NULL, sample INTEGER NOT NULL,
    text TEXT NOT NULL, strict TEXT, flexible TEXT,
    correct_strict INTEGER NOT NULL, correct_flexible INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
    PRIMARY KEY (run, problem_key, sample)
);
CREATE TABLE IF NOT EXISTS stage_costs (
    run TEXT NOT NULL, problem_key TEXT NOT NULL, sample INTEGER NOT NULL, stage TEXT NOT NULL,
    calls INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    seconds REAL NOT NULL, flops REAL NOT NULL, usd REAL NOT NULL,
    PRIMARY KEY (run, problem_key, sample, stage)
);
CREATE TABLE IF NOT EXISTS metrics (
    run TEXT NOT NULL, name TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (run, name)
);
"""
# Not settings of a run: sizes may grow; where its data and models were read from may move with
# the run directory (what they are is `data` and `model_versions`, by content).
UNBOUND = {"problems", "examples", "data_source", "model_path"}
ORPHANED = "made from a question the store no longer holds (another file's problems replaced it before schema 1)"


def request_key(*parts: Any) -> str:
    """Content hash of everything that determines a teacher's reply: the resume key."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class Annotation:
    key: str
    task: str
    split: str
    problem_id: str  # where the problem is in its source, for people
    problem_key: str  # which problem exactly (Problem.key): what training and export rebuild it from
    method: str
    teacher: str
    sample: int
    prompt: str
    text: str
    parsed: dict[str, Any]
    answer: str | None
    kept: bool
    reason: str  # "ok" when kept, else why it was rejected
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    finish_reason: str = "stop"
    logprobs: list[Any] | None = None  # per generated token: [token, logprob, [[top token, logprob], ...]]


@dataclass(frozen=True)
class Prediction:
    run: str
    problem_key: str
    sample: int
    text: str
    strict: str | None
    flexible: str | None
    correct_strict: bool
    correct_flexible: bool
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class _Connection:
    """The store's SQLite connection, whose failures (disk full, I/O errors, a lock held too
    long) name the store's file: the machine's state, one line, exit 1."""

    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(path, timeout=60, check_same_thread=False)  # one writer thread in annotate
        self.db.row_factory = sqlite3.Row

    @contextlib.contextmanager
    def _named(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as error:  # not a database, corrupted, disk full, read-only
            raise EnvironmentProblem(f"{self.path}: the run's store failed ({error})") from None

    def execute(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        with self._named():
            return self.db.execute(sql, args)

    def executemany(self, sql: str, rows: Iterable[Any]) -> sqlite3.Cursor:
        with self._named():
            return self.db.executemany(sql, rows)

    def executescript(self, script: str) -> None:
        with self._named():
            self.db.executescript(script)

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._named():
            self.db.__exit__(*exc)  # commit, or roll back on an error

    def close(self) -> None:
        self.db.close()


class Store:
    """A run directory's database. Open it with `Store(run_dir)`; it is created on first use.
    `create=False` (the verbs that only read: report, export) refuses a directory without a
    store instead of making one."""

    def __init__(self, run_dir: str | Path, create: bool = True):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "store.sqlite"
        if not create and not self.path.is_file():
            raise CotdistillError(f"{self.run_dir}: no run here (no store.sqlite): check --run-dir")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:  # a file in the way, a read-only place, a name too long
            raise CotdistillError(f"run directory {self.run_dir}: {error.strerror}") from None
        self.db = _Connection(self.path)
        self._write_ahead_log()
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses no commit
        self._open_schema()
        self._running: set[str] = set()  # runs this process started and has not finished

    def _write_ahead_log(self, patience: float = 60.0) -> None:
        """Put the store in WAL mode (kept in the file, so only its first opening changes it).
        The switch needs the file to itself, and SQLite answers "database is locked" at once,
        without its busy timeout, while another process opens or closes the same store (the
        last connection's closing checkpoint): wait for it here instead of failing the run."""
        deadline = time.monotonic() + patience
        with self.db._named():  # any other failure (not a database, read-only): the store's one line
            while True:
                try:
                    if self.db.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        self.db.db.execute("PRAGMA journal_mode=WAL")
                    return
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def _open_schema(self) -> None:
        """Create the tables, or bring a store of an older schema to this one in place (one
        transaction, so a kill leaves the old store as it was), or refuse a newer one."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise EnvironmentProblem(f"{self.path}: written by a newer cotdistill (store schema {version}; this one "
                                     f"reads {SCHEMA_VERSION}): upgrade cotdistill to use this run")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # a second process opening the store waits, then finds it done
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'problems'").fetchone():
                self._from_positional_ids()
            if version < SCHEMA_VERSION:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _from_positional_ids(self) -> None:
        """Schema 0 -> 1: problems were keyed (task, split, id), with ids by position (`jsonl-0`
        in every file), and a second file's problems replaced the first's. Each problem gets its
        content key; an annotation follows the problem it names if its prompt holds that
        problem's question, else it was made from a replaced question: it stays, counted, but
        not kept (annotate the file again). Annotation keys become `request_key(problem key,
        old key)`, exactly what annotate now asks for, so nothing already paid is asked again.
        Predictions follow their eval's (task, split) problems (they hold no question to check)."""
        old_problems = {(r["task"], r["split"], r["id"]): Problem(r["id"], r["question"], r["answer"], r["kind"],
                                                                  json.loads(r["gold"]), r["task"])
                        for r in self.db.execute("SELECT * FROM problems")}
        annotations = [dict(r) for r in self.db.execute("SELECT * FROM annotations ORDER BY rowid")]
        evals = {r["name"]: json.loads(r["config"]) for r in self.db.execute("SELECT name, config FROM runs")}
        tables = {name: [dict(r) for r in self.db.execute(f"SELECT * FROM {name} ORDER BY rowid")]
                  for name in ("predictions", "stage_costs")}
        for name in ("problems", "annotations", "predictions", "stage_costs"):
            self.db.execute(f"DROP TABLE {name}")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                self.db.execute(statement)
        self.db.executemany("INSERT OR IGNORE INTO problems VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [_problem_row(p) for p in old_problems.values()])
        for row in annotations:
            problem = old_problems.get((row["task"], row["split"], row["problem_id"]))
            if problem is not None and problem.question in row["prompt"]:
                row.update(key=request_key(problem.key, row["key"]), problem_key=problem.key)
            else:
                row.update(problem_key="", kept=0, reason=ORPHANED)
            row.setdefault("finish_reason", "stop")  # columns added before schema 0 had a number
            row.setdefault("logprobs", None)
        if annotations:
            columns = list(annotations[0])
            self.db.executemany(f"INSERT INTO annotations ({', '.join(columns)}) VALUES "
                                f"({', '.join(':' + c for c in columns)})", annotations)
        for name, rows in tables.items():
            for row in rows:
                config = evals.get(row["run"], {})
                problem = old_problems.get((config.get("task"), config.get("split"), row["problem_id"]))
                row["problem_key"] = problem.key if problem else f"unknown:{row['problem_id']}"
                del row["problem_id"]
            if rows:
                columns = list(rows[0])
                self.db.executemany(f"INSERT OR IGNORE INTO {name} ({', '.join(columns)}) VALUES "
                                    f"({', '.join(':' + c for c in columns)})", rows)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, *_: object) -> None:
        """A step that fails (an error, Ctrl-C) marks the runs it started `failed` rather than
        leaving them `running`; their result stays empty (a failure is no result: the reason is
        the CLI's line and RUN_DIR/logs/errors.log), and a rerun resumes them as before."""
        try:
            if error is not None and self._running:
                with contextlib.suppress(sqlite3.Error), self.db:
                    self.db.executemany("UPDATE runs SET status = 'failed', finished = ? WHERE name = ?",
                                        [(time.time(), name) for name in self._running])
        finally:
            self.close()

    @contextlib.contextmanager
    def lease(self, job: str, why: str) -> Iterator[None]:
        """Hold `job` for this process, or refuse at once if another process holds it: two
        annotate runs sending the same paid requests would each pay for them, and neither
        budget would see the other's spend. A kernel file lock (flock), so a process that
        dies, even by kill -9, lets go of it."""
        import fcntl

        locks = self.run_dir / "locks"
        locks.mkdir(exist_ok=True)
        path = locks / (hashlib.sha256(job.encode()).hexdigest()[:16] + ".lock")
        with path.open("a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise EnvironmentProblem(f"{self.run_dir}: {holder} is already running {job}; {why}") from None
            handle.truncate(0)
            handle.write(f"pid {os.getpid()} (since {time.strftime('%H:%M:%S')})")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    # problems ---------------------------------------------------------------------------
    def add_problems(self, problems: Iterable[Problem]) -> None:
        """Store problems by content key: a key names one content, so a problem met again (in
        another file, another split) is the row there already, and no file replaces another's."""
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO problems VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                [_problem_row(p) for p in problems])

    def problems(self, keys: Iterable[str]) -> dict[str, Problem]:
        """The stored problems of these keys (those the store holds)."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, Problem] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for r in self.db.execute(f"SELECT * FROM problems WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                found[r["key"]] = Problem(r["id"], r["question"], r["answer"], r["kind"], json.loads(r["gold"]),
                                          r["task"], r["repeat"])
        return found

    # annotations ------------------------------------------------------------------------
    def _by_keys(self, columns: str, keys: Iterable[str]) -> Iterator[sqlite3.Row]:
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            yield from self.db.execute(f"SELECT {columns} FROM annotations WHERE key IN ({marks}) ORDER BY rowid", chunk)

    def annotation_keys(self, keys: Iterable[str]) -> set[str]:
        return {r[0] for r in self._by_keys("key", keys)}

    def annotations_by_key(self, keys: Iterable[str]) -> list[Annotation]:
        return [_annotation(r) for r in self._by_keys("*", keys)]

    def annotation_spend(self, keys: Iterable[str]) -> dict[str, Any]:
        totals = {"cost": 0.0, "prompt_tokens": 0, "completion_tokens": 0}
        for row in self._by_keys("cost, prompt_tokens, completion_tokens", keys):
            for name in totals:
                totals[name] += row[name]
        return totals

    def annotation_status(self, keys: Sequence[str]) -> dict[str, Any]:
        """done / kept / pending counts, rejection reasons and spend for one request set."""
        done = kept = 0
        reasons: dict[str, int] = {}
        for row in self._by_keys("kept, reason", keys):
            done += 1
            kept += row["kept"]
            if not row["kept"]:
                reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
        return {"done": done, "kept": kept, "rejected": done - kept, "pending": len(keys) - done,
                "rejected_by_reason": reasons, **self.annotation_spend(keys)}

    def update_annotations(self, updates: Iterable[tuple[str, dict[str, Any], bool, str, Any]]) -> None:
        """A later filter's verdict on existing rows: (key, parsed fields, kept, reason, the filter's
        completion); the filter's tokens and cost are added to the row's, so spend stays whole."""
        with self.db:
            self.db.executemany(
                "UPDATE annotations SET parsed = ?, kept = ?, reason = ?, prompt_tokens = prompt_tokens + ?, "
                "completion_tokens = completion_tokens + ?, cost = cost + ? WHERE key = ?",
                [(json.dumps(f), int(k), r, c.prompt_tokens, c.completion_tokens, c.cost, key)
                 for key, f, k, r, c in updates])

    def add_annotations(self, annotations: Iterable[Annotation]) -> None:
        rows = []
        for a in annotations:
            row = asdict(a)
            row["parsed"] = json.dumps(a.parsed)
            row["logprobs"] = json.dumps(a.logprobs) if a.logprobs is not None else None
            row["created"] = time.time()
            rows.append(row)
        if not rows:
            return
        columns = ", ".join(rows[0])
        marks = ", ".join(f":{c}" for c in rows[0])
        with self.db:
            self.db.executemany(f"INSERT OR IGNORE INTO annotations ({columns}) VALUES ({marks})", rows)

    def annotations(self, method: str, task: str | None = None, split: str | None = None,
                    kept_only: bool = True, teacher: str | None = None) -> list[Annotation]:
        query = "SELECT * FROM annotations WHERE method = ?"
        args: list[Any] = [method]
        for column, value in (("task", task), ("split", split), ("teacher", teacher)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        if kept_only:
            query += " AND kept = 1"
        return [_annotation(r) for r in self.db.execute(query + " ORDER BY rowid", args)]

    def annotation_counts(self) -> list[dict[str, Any]]:
        """Stored replies counted by method, teacher, task, kept and reason (most first)."""
        return [dict(row) for row in self.db.execute(
            "SELECT method, teacher, task, kept, reason, COUNT(*) AS n FROM annotations "
            "GROUP BY method, teacher, task, kept, reason ORDER BY method, teacher, kept DESC, n DESC")]

    # runs -------------------------------------------------------------------------------
    def start_run(self, name: str, kind: str, config: dict[str, Any], produced: bool = True,
                  defaults: dict[str, Any] | None = None) -> None:
        """Record a run; an earlier run of the same name and settings is resumed, not duplicated."""
        self.check_settings(name, config, produced, defaults)
        with self.db:
            self.db.execute(
                "INSERT INTO runs (name, kind, config, status, started) VALUES (?, ?, ?, 'running', ?) "
                "ON CONFLICT (name) DO UPDATE SET config = excluded.config, status = 'running'",
                (name, kind, json.dumps(config), time.time()),
            )
        self._running.add(name)

    def check_settings(self, name: str, config: dict[str, Any], produced: bool = True,
                       defaults: dict[str, Any] | None = None) -> None:
        """Refuse to resume a run under settings other than its own: its stored results would be
        silently mixed with, or taken for, results of the new settings. Sizes may grow.
        `produced`: whether the earlier attempt left anything (predictions, checkpoints); an
        unfinished one that left nothing (a dead server, a wrong path, killed for memory
        before its first checkpoint) binds nothing, and may be retried with other settings.
        A setting missing from either record stands for its value in `defaults`: a run
        recorded before the setting existed (or by a caller that left it out) still resumes."""
        previous = self.run(name)
        if previous is None or (previous["status"] != "done" and not produced):
            return
        old = {k: v for k, v in previous["config"].items() if k not in UNBOUND}
        new = {k: v for k, v in json.loads(json.dumps(config)).items() if k not in UNBOUND}
        fallback = json.loads(json.dumps(defaults or {}, default=str))
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k, fallback.get(k)) != new.get(k, fallback.get(k)))
        if "data" in changed:  # the one people most need told apart: which data was scored
            was = f"{previous['config'].get('data_source')} ({old['data']})" if "data" in old else "other data"
            raise CotdistillError(f"{self.path}: run {name!r} scored {was}, not {config.get('data_source')} "
                                  f"({new.get('data')}); give this one another name")
        if changed:
            raise CotdistillError(f"{self.path}: run {name!r} exists with other settings ({', '.join(changed)}); "
                                  "give this one another name")

    def finish_run(self, name: str, result: dict[str, Any]) -> None:
        with self.db:
            self.db.execute(
                "UPDATE runs SET status = 'done', result = ?, finished = ? WHERE name = ?",
                (json.dumps(result), time.time(), name),
            )
        self._running.discard(name)

    def run(self, name: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return {**dict(row), "config": json.loads(row["config"]), "result": json.loads(row["result"])}

    def runs(self, kind: str | None = None) -> list[dict[str, Any]]:
        names = self.db.execute(
            "SELECT name FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY started", (kind,) if kind else ()
        )
        return [self.run(r[0]) for r in names.fetchall()]  # type: ignore[misc]

    # predictions and metrics ------------------------------------------------------------
    def predicted(self, run: str) -> set[tuple[str, int]]:
        """(problem key, sample) of the run's stored predictions."""
        rows = self.db.execute("SELECT problem_key, sample FROM predictions WHERE run = ?", (run,))
        return {(r[0], r[1]) for r in rows}

    def add_predictions(self, predictions: Iterable[Prediction]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [tuple(asdict(p).values()) for p in predictions],
            )

    def predictions(self, run: str) -> Iterator[Prediction]:
        for r in self.db.execute("SELECT * FROM predictions WHERE run = ? ORDER BY rowid", (run,)):
            row = _columns(r, Prediction)
            yield Prediction(**{**row, "correct_strict": bool(row["correct_strict"]),
                                "correct_flexible": bool(row["correct_flexible"])})

    def add_stage_costs(self, run: str, costs: Iterable[tuple[str, int, dict[str, Any]]]) -> None:
        """(problem key, sample, {stage: StageCost}) rows for one eval run."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO stage_costs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run, problem_key, sample, stage, c.calls, c.prompt_tokens, c.completion_tokens, c.seconds, c.flops,
                  c.usd) for problem_key, sample, stages in costs for stage, c in stages.items()])

    def stage_costs(self, run: str, problem_keys: set[str]) -> dict[str, dict[str, float]]:
        """Totals per stage over the given problems (all their samples), in stage order of first use."""
        totals: dict[str, dict[str, float]] = {}
        keys = ("calls", "prompt_tokens", "completion_tokens", "seconds", "flops", "usd")
        for row in self.db.execute("SELECT * FROM stage_costs WHERE run = ? ORDER BY rowid", (run,)):
            if row["problem_key"] in problem_keys:
                stage = totals.setdefault(row["stage"], dict.fromkeys(keys, 0.0))
                for key in keys:
                    stage[key] += row[key]
        return totals

    def set_metrics(self, run: str, metrics: dict[str, float]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?)",
                                [(run, k, float(v)) for k, v in metrics.items()])

    def metrics(self, run: str) -> dict[str, float]:
        return {r[0]: r[1] for r in self.db.execute("SELECT name, value FROM metrics WHERE run = ?", (run,))}

    # The teacher log-prob cache (train/cache.py): one row per scored sequence, its top-k in
    # a compact blob. Its own table, made on first use, so stores without it are untouched.
    def _teacher_logprobs_table(self) -> None:
        self.db.executescript("""CREATE TABLE IF NOT EXISTS teacher_logprobs (
            key TEXT PRIMARY KEY, teacher TEXT NOT NULL, tokens INTEGER NOT NULL, data BLOB NOT NULL,
            prompt_tokens INTEGER NOT NULL, cost REAL NOT NULL, created REAL NOT NULL)""")

    def teacher_logprobs(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The cached blobs of these sequence keys (those present)."""
        self._teacher_logprobs_table()
        found = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            found.update(self.db.execute(f"SELECT key, data FROM teacher_logprobs WHERE key IN "
                                         f"({','.join('?' * len(chunk))})", chunk).fetchall())
        return found

    def add_teacher_logprobs(self, teacher: str, rows: Iterable[tuple[str, int, bytes, int, float]]) -> None:
        """(key, tokens scored, blob, prompt tokens sent, cost) per sequence; a key already there is kept."""
        self._teacher_logprobs_table()
        with self.db:
            self.db.executemany("INSERT OR IGNORE INTO teacher_logprobs VALUES (?, ?, ?, ?, ?, ?, ?)",
                                [(key, teacher, n, blob, prompt, cost, time.time())
                                 for key, n, blob, prompt, cost in rows])

    def teacher_logprob_spend(self, teacher: str) -> dict[str, float]:
        """Sequences, tokens, bytes, prompt tokens sent and cost cached for one teacher."""
        self._teacher_logprobs_table()
        row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(tokens), 0), COALESCE(SUM(LENGTH(data)), 0), "
                              "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(cost), 0) FROM teacher_logprobs "
                              "WHERE teacher = ?", (teacher,)).fetchone()
        return dict(zip(("sequences", "tokens", "bytes", "prompt_tokens", "cost"), row))


def _problem_row(p: Problem) -> tuple[Any, ...]:
    return (p.key, p.task, p.id, p.question, p.answer, p.kind, json.dumps(p.gold), p.repeat)


def _annotation(row: sqlite3.Row) -> Annotation:
    logprobs = row["logprobs"]
    return Annotation(**{**_columns(row, Annotation), "parsed": json.loads(row["parsed"]), "kept": bool(row["kept"]),
                         "logprobs": json.loads(logprobs) if logprobs else None})


def _columns(row: sqlite3.Row, cls: type) -> dict[str, Any]:
    names = cls.__dataclass_fields__
    return {k: row[k] for k in row.keys() if k in names}
