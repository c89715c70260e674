"""Event sources of ``reco demo`` / ``replay`` / ``load``: a named dataset that is missing or
malformed is one line on stderr saying what to pass, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamproc.replay import DatasetError, load_catalog, load_events, load_reviews


def _reco(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    return subprocess.run([sys.executable, "-m", "streamproc.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**env, "HF_HUB_OFFLINE": "1"}, cwd=cwd)


def _ml(tmp_path: Path) -> Path:
    d = tmp_path / "ml"
    d.mkdir()
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,4.0,964982703\n2,10,1.5,964982000\n")
    (d / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,10,funny,964982800\n3,11,  ,964982801\n")
    (d / "movies.csv").write_text('movieId,title,genres\n10,"Heat (1995)",Action|Crime|Thriller\n11,Odd,(no genres listed)\n')
    return d


def test_movielens_directory_gives_events_and_a_catalog(tmp_path: Path) -> None:
    d = _ml(tmp_path)
    evs = [json.loads(v) for _, _, v in load_events(d)]
    assert [e["type"] for e in evs] == ["rating", "rating", "comment"]  # event-time order; blank tag skipped
    assert evs[2] == {"schema_version": 1, "type": "comment", "event_id": "ml-t-0", "user_id": "1", "item_id": "10",
                      "event_time": 964982800.0, "text": "funny", "rating": 4.0}
    assert load_catalog(d)["items"] == {"10": {"title": "Heat (1995)", "category": "Action", "categories": ["Action", "Crime", "Thriller"]},
                                        "11": {"title": "Odd", "category": "", "categories": []}}
    assert load_catalog(tmp_path) is None


@pytest.mark.parametrize("content, match", [
    ("user,movie\n1,2\n", "no column userId, movieId, rating, timestamp"),
    ("userId,movieId,rating,timestamp\n1,10,four,964982703\n", r"ratings.csv:2: rating must be a number, got 'four'"),
    ("userId,movieId,rating,timestamp\n1,10,4,nan\n", r"ratings.csv:2: timestamp must be a number"),
])
def test_malformed_ratings_name_file_line_and_column(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "ratings.csv").write_text(content)
    with pytest.raises(DatasetError, match=match):
        load_events(tmp_path)


def test_reviews_jsonl(tmp_path: Path) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text('{"user_id":"a","item_id":"x","rating":5,"time":1700000002,"text":"great"}\n\n'
                 '{"user_id":"b","item_id":7,"rating":2,"time":1700000001}\n')
    evs = [json.loads(v) for _, _, v in load_reviews(f)]
    assert [(e["type"], e["user_id"], e["item_id"], e["rating"]) for e in evs] == [("rating", "b", "7", 2.0), ("comment", "a", "x", 5.0)]
    assert evs[1]["text"] == "great"


@pytest.mark.parametrize("line, match", [
    ("not json", r"r.jsonl:1: not a JSON object"),
    ("[1, 2]", r"r.jsonl:1: expected a JSON object per line, got list"),
    ('{"item_id":"x","rating":3,"time":1}', r"r.jsonl:1: user_id is missing"),
    ('{"user_id":"a","item_id":"x","rating":"3","time":1}', r"r.jsonl:1: rating must be a number"),
    ('{"user_id":"a","item_id":"x","time":1}', r"r.jsonl:1: a line needs a rating, a text, or both"),
    ('{"user_id":"a","item_id":"x","rating":3}', r"r.jsonl:1: time must be a number"),
])
def test_malformed_reviews_name_the_line(tmp_path: Path, line: str, match: str) -> None:
    f = tmp_path / "r.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(DatasetError, match=match):
        load_reviews(f)


@pytest.mark.parametrize("args, says", [
    (["demo", "--dataset", "no/such/dir"], "no/such/dir: no such directory; pass --dataset DIR"),
    (["demo", "--reviews", "missing.jsonl"], "--reviews missing.jsonl: no such file"),
    (["replay", "--dataset", "."], ".: no ratings.csv (expected a MovieLens-style directory); pass --dataset DIR"),
    (["load", "--reviews", "bad.jsonl", "--duration", "1"], "bad.jsonl:1: not a JSON object"),
    (["demo", "--dataset", "x", "--reviews", "y"], "pass either --dataset DIR or --reviews FILE, not both"),
    (["load", "--rate", "fast"], "--rate must be a positive number of events per second, got 'fast'"),
    (["replay", "--speed", "-3"], "--speed must be a positive number of events per second or 'max'"),
    (["load", "--comments", "1.5"], "--comments must be a share between 0 and 1, got 1.5"),
    (["demo", "--users", "0"], "demo data: users: must be >= 1"),
])
def test_cli_bad_source_is_one_line_without_traceback(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "bad.jsonl").write_text("oops\n")
    out = _reco(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    assert lines[0].startswith("reco: error: ") and says in lines[0], lines[0]


def test_benchmarks_fall_back_to_demo_data_without_a_dataset_beside_the_clone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import streamproc.replay as replay_mod

    monkeypatch.setattr(replay_mod, "DEFAULT_DATASET", tmp_path / "nothing-here")
    texts, source = replay_mod.bench_texts(50)
    assert source == "demo-data comments" and len(texts) == 50 and all(t.strip() for t in texts)
    events, source = replay_mod.bench_events(comments=False, n=300)
    assert source.startswith("demo data") and len(events) == 300
    assert {json.loads(v)["type"] for _, _, v in events} <= {"click", "rating"}
    monkeypatch.setattr(replay_mod, "DEFAULT_DATASET", _ml(tmp_path))
    assert replay_mod.bench_texts(3) == (["funny", "funny", "funny"], "ml-latest-small tags.csv")


def test_a_dataset_source_carries_titles_and_its_most_active_users(tmp_path: Path) -> None:
    import argparse

    from streamproc.sources import event_source

    args = argparse.Namespace(dataset=str(_ml(tmp_path)), reviews=None, users=5, items=5, seed=1, comments=0.15)
    src = event_source(args)
    assert src.total == 3 and not src.generated
    assert src.catalog["items"]["10"]["title"] == "Heat (1995)"
    assert src.catalog["users"][0] == {"user_id": "1", "likes": ["Action"], "events": 2}  # rated Heat 4.0 and tagged it
    gen = event_source(argparse.Namespace(dataset=None, reviews=None, users=5, items=9, seed=1, comments=0.15), n=10)
    assert gen.generated and len(list(gen.events)) == 10 and len(gen.catalog["items"]) == 9
