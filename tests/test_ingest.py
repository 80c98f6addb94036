"""ingest_suggested_tasks.py: every suggestion becomes a task exactly once, and nothing is lost."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from crew import suggestions
from crew.tasks import json_store
from support.repos import ROOT


def run_ingest(cfg, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "ingest_suggested_tasks.py"), "--config", str(cfg), *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_lines_become_linked_labelled_tasks(repo, config, store, capsys):
    parent = store.create("parent task")
    (repo / "suggested_tasks.txt").write_text(
        "# a comment\n\n"
        f"[from:{parent.id}] Add retries -- retry HTTP 503 with backoff -- files: src/http.py, ./lib\\util.py\n"
        "Plain idea with no extras\n", encoding="utf-8")
    result = suggestions.ingest(config, store)
    assert len(result.created) == 2 and result.skipped == []
    retry = store.get(result.created[0])
    assert retry.title == "Add retries"
    assert retry.description.startswith("retry HTTP 503 with backoff")
    assert sorted(retry.files) == ["lib/util.py", "src/http.py"]
    assert retry.deps_of("discovered-from") == [parent.id]
    assert any(label.startswith("suggestion:") for label in retry.labels)
    assert not (repo / "suggested_tasks.txt").exists()
    assert not (repo / "suggested_tasks.txt.ingesting").exists()


def test_second_ingest_of_the_same_lines_skips_them_with_reasons(repo, config, store):
    text = "Write the docs\nAdd a test -- for the parser\n"
    (repo / "suggested_tasks.txt").write_text(text, encoding="utf-8")
    first = suggestions.ingest(config, store)
    store.close(first.created[0], "done")
    (repo / "suggested_tasks.txt").write_text(text + "  add A   TEST  \n", encoding="utf-8")
    second = suggestions.ingest(config, store)
    assert second.created == []
    reasons = [s["reason"] for s in second.skipped]
    assert reasons[0] == f"already ingested as {first.created[0]}"  # closed, still remembered
    assert reasons[1] == f"already ingested as {first.created[1]}"
    assert reasons[2] == f"same title as open task {first.created[1]}"
    assert len(store.list(None)) == 2


def test_unusable_lines_go_verbatim_to_the_rejected_file(repo, config, store):
    bad_utf8 = b"caf\xe9 latin-1 line"
    lines = [b"Good one", bad_utf8, b"Bad path -- x -- files: ../../etc/passwd", b"ctrl \x01 char",
             b"Hostile $(rm -rf ~) `id`; echo \"x\" & del"]
    (repo / "suggested_tasks.txt").write_bytes(b"\n".join(lines) + b"\n")
    result = suggestions.ingest(config, store)
    assert [store.get(i).title for i in result.created] == ["Good one", 'Hostile $(rm -rf ~) `id`; echo "x" & del']
    rejected = (repo / "suggested_tasks.rejected.txt").read_bytes()
    assert rejected == bad_utf8 + b"\n" + lines[2] + b"\n" + lines[3] + b"\n"
    assert {s["reason"].split(" (")[0] for s in result.skipped} == {
        "not valid UTF-8", "file path '../../etc/passwd' leaves the repository", "contains control characters"}


def test_overlong_title_is_cut_at_a_word_and_kept_whole(repo, config, store):
    long_title = " ".join(["word"] * 80)
    (repo / "suggested_tasks.txt").write_text(long_title + "\n", encoding="utf-8")
    task = store.get(suggestions.ingest(config, store).created[0])
    assert len(task.title) <= 200 and task.title.endswith("word")
    assert long_title in task.description


def test_dry_run_and_json_output(repo, make_config):
    cfg = make_config(task_backend="json", task_prefix="proj")
    (repo / "suggested_tasks.txt").write_text("One -- d -- files: a.py\n", encoding="utf-8")
    proc = run_ingest(cfg, "--dry-run", "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"plan": [{"title": "One", "description": "d\n\nFiles: a.py",
                                                 "files": ["a.py"], "deps": []}], "skipped": []}
    assert (repo / "suggested_tasks.txt").exists() and not (repo / "task_queue.json").exists()
    proc = run_ingest(cfg, "--json")
    assert json.loads(proc.stdout) == {"created": ["proj-1"], "skipped": []}


@pytest.mark.parametrize("failpoint", ["ingest_after_rename", "ingest_after_create", "ingest_before_delete"])
def test_killed_ingest_then_rerun_creates_each_suggestion_once(repo, make_config, failpoint):
    cfg = make_config(task_backend="json", task_prefix="proj")
    (repo / "suggested_tasks.txt").write_text("".join(f"Idea {i}\n" for i in range(5)), encoding="utf-8")
    killed = run_ingest(cfg, env={"DISPATCH_FAILPOINT": failpoint})
    assert killed.returncode == 77
    (repo / "suggested_tasks.txt").write_text("Idea 5\n", encoding="utf-8")  # written after the crash
    assert run_ingest(cfg).returncode == 0
    store = json_store.JsonTaskStore(repo / "task_queue.json", "proj", "me")
    assert sorted(t.title for t in store.list(None)) == [f"Idea {i}" for i in range(6)]
    assert not (repo / "suggested_tasks.txt.ingesting").exists()


def test_a_writer_appending_without_a_lock_loses_nothing(repo, make_config):
    cfg = make_config(task_backend="json", task_prefix="proj")
    path = repo / "suggested_tasks.txt"
    done = threading.Event()

    def writer():
        for i in range(200):
            with open(path, "a", encoding="utf-8") as fh:  # like `echo ... >> suggested_tasks.txt`
                fh.write(f"Appended idea {i}\n")
            time.sleep(0.002)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 120
    while not done.is_set():
        assert time.monotonic() < deadline, "the writer did not finish its 200 lines within 120 s"
        assert run_ingest(cfg).returncode == 0
    thread.join()
    assert run_ingest(cfg).returncode == 0
    store = json_store.JsonTaskStore(repo / "task_queue.json", "proj", "me")
    titles = sorted(t.title for t in store.list(None))
    assert titles == sorted(f"Appended idea {i}" for i in range(200))


def test_from_an_unknown_task_is_kept_without_the_link(repo, config, store):
    (repo / "suggested_tasks.txt").write_text("[from:proj-gone] Orphan idea\n", encoding="utf-8")
    task = store.get(suggestions.ingest(config, store).created[0])
    assert task.dependencies == [] and "proj-gone" in task.description


def test_a_title_over_the_stores_limit_in_bytes_is_cut_to_it_and_kept_whole(repo, config, store):
    # 200 CJK characters are 600 bytes of UTF-8: bd counts bytes, and refuses a title over 500.
    long_title = "漢" * 200
    (repo / "suggested_tasks.txt").write_text(f"{long_title}\nThe next idea\n", encoding="utf-8")
    result = suggestions.ingest(config, store)
    assert len(result.created) == 2 and result.skipped == []
    task = store.get(result.created[0])
    assert len(task.title.encode("utf-8")) <= 500 and task.title.startswith("漢" * 100)
    assert long_title in task.description


def test_a_file_path_too_long_for_a_label_is_refused_and_the_next_line_ingested(repo, config, store):
    # bd refuses a label over 255 characters, and a task's file is the label `file:<path>`.
    long_path = "src/" + "deep/" * 60 + "module.py"
    (repo / "suggested_tasks.txt").write_text(f"Fix it -- files: {long_path}\nThe next idea\n", encoding="utf-8")
    result = suggestions.ingest(config, store)
    assert [store.get(i).title for i in result.created] == ["The next idea"]
    [skipped] = result.skipped
    assert "is longer than 250 characters" in skipped["reason"]
    # A label that long from elsewhere (a conflicted file's path, from git) is left out, not refused.
    task = store.create("Resolve it", labels=["merge-conflict", "file:" + long_path, "file:data/a,b.csv",
                                              "file:src/short.py"])
    assert sorted(store.get(task.id).labels) == ["file:src/short.py", "merge-conflict"]
