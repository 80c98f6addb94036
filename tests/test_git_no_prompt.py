"""The dispatcher's git commands never wait for a person, and keep the user's commit.gpgSign: a
commit that cannot be signed (gpg asks the terminal for a passphrase, or never answers) fails
with one line that says so; one that can is signed, the dispatcher's merges too."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from support.dispatching import DISPATCH, add_task, main_file
from support.repos import commit_file, git
from crew import errors
from crew import git as gitcmd

# Each fake gpg is configured as gpg.program in the test repository only.
HANGS = """
import os, pathlib, sys, time
pathlib.Path(sys.argv[0]).with_suffix(".pid").write_text(str(os.getpid()), encoding="utf-8")
time.sleep(600)  # a pinentry nobody answers
"""
ASKS_THE_TERMINAL = """
import os, sys
try:
    tty = os.open("/dev/tty", os.O_RDWR)
except OSError as exc:
    sys.exit(f"gpg: signing failed: cannot open /dev/tty: {exc.strerror}")
os.write(tty, b"Enter passphrase: ")
os.read(tty, 100)  # waits for a person to type
sys.exit(2)
"""
SIGNS = """
import sys
sys.stdin.read()
sys.stderr.write("[GNUPG:] BEGIN_SIGNING\\n[GNUPG:] SIG_CREATED D 1 8 00 1 FAKE\\n")
sys.stdout.write("-----BEGIN PGP SIGNATURE-----\\n\\nZmFrZQ==\\n-----END PGP SIGNATURE-----\\n")
"""

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the fake gpg programs are scripts run by their #! line")


def use_fake_gpg(repo: Path, tmp_path: Path, body: str) -> Path:
    program = tmp_path / "fake-gpg.py"
    program.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
    program.chmod(0o755)
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "gpg.program", str(program))
    return program


@pytest.mark.timeout(60)
def test_a_commit_whose_signing_never_answers_fails_in_bounded_time_with_one_line(repo, tmp_path, monkeypatch):
    program = use_fake_gpg(repo, tmp_path, HANGS)
    monkeypatch.setattr(gitcmd, "SIGN_TIMEOUT_SECS", 3, raising=False)
    head = git(repo, "rev-parse", "HEAD")
    tree = git(repo, "rev-parse", "HEAD^{tree}")
    (repo / "a.txt").write_text("a\n", encoding="utf-8")
    git(repo, "add", "a.txt")
    # A commit that runs hooks is bounded by its caller's timeout; a plumbing commit (the
    # dispatcher's merges), which runs none, by the signing bound alone.
    for make in (lambda: gitcmd.commit(repo, "a commit to sign", timeout=3),
                 lambda: gitcmd.commit_tree(repo, tree, [head], "a merge to sign")):
        program.with_suffix(".pid").unlink(missing_ok=True)
        with pytest.raises(errors.UserError) as failed:
            make()
        message = str(failed.value)
        assert "\n" not in message and message.startswith("git did not finish a commit within 3 s"), message
        assert "commit.gpgSign is set" in message
        gpg = psutil.Process(int(program.with_suffix(".pid").read_text(encoding="utf-8")))
        assert not gpg.is_running() or gpg.status() == psutil.STATUS_ZOMBIE  # its whole tree was ended
    # The user's setting was kept, not overridden: nothing was committed unsigned.
    assert git(repo, "rev-parse", "HEAD") == head


def test_a_dispatcher_in_a_terminal_never_lets_gpg_ask_it_for_a_passphrase(json_agent_setup, repo, tmp_path):
    import fcntl
    import pty
    import termios
    use_fake_gpg(repo, tmp_path, ASKS_THE_TERMINAL)
    cfg, config, store = json_agent_setup(max_workers=1)
    add_task(store, "Leaves its work uncommitted", "uncommitted notes.txt a line")
    # The dispatcher runs in a terminal, as a user starts it: the pty is its controlling terminal.
    terminal, its_side = pty.openpty()

    def take_the_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, str(DISPATCH), "--config", str(cfg)], stdin=its_side,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=take_the_terminal)
    os.close(its_side)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the dispatcher waited for a passphrase at its terminal:\n{out[-2000:]}\n{err[-2000:]}")
    finally:
        os.close(terminal)
    assert proc.returncode == 1, out + err
    assert err.count("\n") == 1 and err.startswith("error: git could not sign a commit"), err
    assert "commit.gpgSign is set" in err and "Traceback" not in err
    assert main_file(repo, "notes.txt") is None  # nothing went on unsigned


def test_the_dispatchers_merges_are_signed_when_the_user_signs_commits(json_agent_setup, repo, tmp_path):
    base = git(repo, "rev-parse", "HEAD")
    use_fake_gpg(repo, tmp_path, SIGNS)
    cfg, config, store = json_agent_setup(max_workers=1)
    commit_file(repo, "other.txt", "the user's commit\n")  # so the merge is a true merge
    add_task(store, "Commits", "append a.txt a line")
    add_task(store, "Leaves its work uncommitted", "uncommitted b.txt a line")
    result = subprocess.run([sys.executable, str(DISPATCH), "--config", str(cfg)], capture_output=True, text=True,
                            timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert main_file(repo, "a.txt") == "a line\n" and main_file(repo, "b.txt") == "a line\n"
    made = git(repo, "rev-list", f"{base}..main").split()
    merges = git(repo, "rev-list", "--merges", f"{base}..main").split()
    assert len(merges) == 2
    unsigned = [c for c in made if "\ngpgsig " not in git(repo, "cat-file", "commit", c)]
    assert unsigned == []
