"""A stand-in for the beads `bd` CLI, following docs/bd-contract.md (the tests and the benches run it).

It keeps its data in .beads/stand_in.json, or in the file FAKE_BD_DB names: clones given the same
FAKE_BD_DB share one database, as hosts share one Dolt sql-server (bd in server mode). It prints
the contract's JSON shapes, errors and exit codes. Like Dolt, it admits one writer at a time: a
writer that cannot get the database within FAKE_BD_LOCK_WAIT seconds (default 1) fails with
"database is locked", which callers must retry.

A claim takes a lease, as in bd 1.3.0: FAKE_BD_LEASE_SECS long (default 300, the real bd's fixed
5 minutes; tests shorten it), renewed by `heartbeat`, taken back by `reclaim` once expired.
`update` takes metadata (--set-metadata, --unset-metadata) and guards (--if-assignee,
--if-status: a mismatch writes nothing and exits 13); `list --label` filters; `merge-slot
create|check|acquire|release` keeps bd's one slot bead (a holder in its metadata, no lease).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import string
import subprocess
import sys
from pathlib import Path

import filelock

BLOCKING = ("blocks", "conditional-blocks", "waits-for")
ISSUE_ORDER = ("id", "title", "description", "notes", "status", "priority", "issue_type", "assignee",
               "owner", "created_at", "created_by", "updated_at", "started_at", "closed_at", "close_reason",
               "lease_expires_at", "heartbeat_at")
# Where errors go, as the real bd 1.3.0 prints them with --json: `show`, `dep`, `comment` and
# `label` print {"error", "schema_version"} on stdout; `update` prints a line of text, then
# compact JSON with the reason under "failed", both on stderr; `close` of a blocked issue and
# `create` print plain text on stderr, but `create` prints a value it refuses (a title over 500
# bytes) as JSON on stdout. `heartbeat`, `reclaim` and `merge-slot` print theirs on stdout too, and
# so does `update` for flags it refuses before it reads the issue.
STDOUT_ERRORS = ("show", "reopen", "dep", "comment", "label", "heartbeat", "reclaim", "merge-slot", "update")
# `update --if-assignee/--if-status` whose precondition no longer held: nothing written.
GUARD_MISMATCH_EXIT = 13
METADATA_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_./]*")
SLOT_TITLE = "Merge Slot"
SLOT_DESCRIPTION = "Exclusive access slot for serialized conflict resolution in the merge queue."
SLOT_LABEL = "gt:slot"


class BdFailure(Exception):
    pass


class BatchFailure(BdFailure):
    """An update's per-id failure, printed the way `bd update` prints it."""

    def __init__(self, issue_id: str, verb: str, message: str, guard_mismatch: bool = False):
        super().__init__(message)
        self.issue_id, self.verb, self.guard_mismatch = issue_id, verb, guard_mismatch


class SlotRefusal(BdFailure):
    """`merge-slot acquire` refused: its answer is a JSON object on stdout, exit 1."""

    def __init__(self, answer: dict):
        super().__init__("merge slot held")
        self.answer = answer


class PlainFailure(BdFailure):
    """Printed as text on stderr even with --json."""


class ValidationFailure(BdFailure):
    """A value bd refuses; `create --json` prints it as JSON on stdout, as the real bd does."""


# The real bd counts a title's length in bytes of UTF-8 (Go's len), and refuses a longer one.
TITLE_LIMIT_BYTES = 500
LABEL_LIMIT = 255  # characters, unlike the title


def check_labels(labels: list[str]) -> None:
    for label in labels:
        if len(label) > LABEL_LIMIT:
            raise ValidationFailure(f"validation failed: field exceeds maximum length: label is {len(label)} "
                                    f"characters (max {LABEL_LIMIT})")


def check_title(title: str) -> None:
    if (size := len(title.encode("utf-8", "surrogateescape"))) > TITLE_LIMIT_BYTES:
        raise ValidationFailure(f"validation failed: validation failed for issue : title must be "
                                f"{TITLE_LIMIT_BYTES} characters or less (got {size})")


def now() -> str:
    """Go's time.Now() in RFC 3339 with nanoseconds, as `bd create` prints it."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


TIMESTAMPS = ("created_at", "updated_at", "started_at", "closed_at", "lease_expires_at", "heartbeat_at")
LEASE = ("lease_expires_at", "heartbeat_at", "lease_holder")  # the real bd keeps these in a table of leases


def lease_secs() -> float:
    return float(os.environ.get("FAKE_BD_LEASE_SECS", "300"))


def grant_lease(issue: dict, holder: str) -> None:
    """A claim's lease, or its renewal: it expires lease_secs() from now."""
    moment = dt.datetime.now(dt.timezone.utc)
    issue.update(lease_holder=holder, heartbeat_at=moment.strftime("%Y-%m-%dT%H:%M:%S.%f000Z"),
                 lease_expires_at=(moment + dt.timedelta(seconds=lease_secs())).strftime("%Y-%m-%dT%H:%M:%S.%f000Z"))


def drop_lease(issue: dict) -> None:
    """Every path that ends or moves a claim ends its lease."""
    for key in LEASE:
        issue.pop(key, None)


def go_duration(text: str) -> float:
    """Seconds in a Go duration ("0s", "10m", "1h30m", "500ms"), as bd's flags take them."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(-?)((?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h))+|0)", text)
    if not match:
        raise BdFailure(f'invalid argument "{text}" for "--older-than" flag: time: invalid duration "{text}"')
    seconds = sum(float(number) * units[unit] for number, unit in
                  re.findall(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)", match.group(2)))
    return -seconds if match.group(1) else seconds


def parsed_time(stamp: str) -> dt.datetime:
    return dt.datetime.strptime(stamp[:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)


def stored(stamp: str) -> str:
    """A time as the database keeps it, to the second, rounded: the real bd 1.3.0 printed
    03:03:02.623704036Z from `create` and 03:03:03Z from `show` and `list` for the same issue."""
    when = dt.datetime.strptime(stamp[:26] + "Z", "%Y-%m-%dT%H:%M:%S.%fZ") if "." in stamp else \
        dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    return (when + dt.timedelta(microseconds=500_000)).strftime("%Y-%m-%dT%H:%M:%SZ")


def find_beads_dir(start: Path) -> Path | None:
    if os.environ.get("BEADS_DIR"):
        return Path(os.environ["BEADS_DIR"])
    for folder in [start, *start.parents]:
        if (folder / ".beads").is_dir():
            return folder / ".beads"
        dotgit = folder / ".git"
        if dotgit.is_file():
            # A linked worktree: fall back to the main checkout's database.
            gitdir = Path(dotgit.read_text(encoding="utf-8").split("gitdir:", 1)[1].strip())
            main = (folder / gitdir).resolve().parent.parent.parent
            return main / ".beads" if (main / ".beads").is_dir() else None
    return None


def database(beads: Path) -> Path:
    return Path(os.environ["FAKE_BD_DB"]) if os.environ.get("FAKE_BD_DB") else beads / "stand_in.json"


class Db:
    def __init__(self, path: Path):
        self.path = path
        self.lock = filelock.FileLock(str(path.with_suffix(".lock")))

    def __enter__(self):
        try:
            self.lock.acquire(timeout=float(os.environ.get("FAKE_BD_LOCK_WAIT", "1")))
        except filelock.Timeout:
            raise BdFailure("database is locked (one writer at a time): retry") from None
        self.data = json.loads(self.path.read_text(encoding="utf-8"))
        return self

    def save(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data), encoding="utf-8")
        os.replace(tmp, self.path)

    def __exit__(self, *exc):
        self.lock.release()

    def issue(self, issue_id: str) -> dict:
        for issue in self.data["issues"]:
            if issue["id"] == issue_id:
                return issue
        raise BdFailure(f"no issue found matching {issue_id!r}")

    def edges(self, issue_id: str) -> list[dict]:
        return [e for e in self.data["deps"] if e["issue_id"] == issue_id]

    def new_id(self) -> str:
        taken = {i["id"] for i in self.data["issues"]}
        length = 3
        while True:
            candidate = self.data["prefix"] + "-" + "".join(random.choices(string.ascii_lowercase + string.digits, k=length))
            if candidate not in taken:
                return candidate
            length += 1

    def is_ready(self, issue: dict) -> bool:
        if issue["status"] != "open":
            return False
        for edge in self.edges(issue["id"]):
            target = next((i for i in self.data["issues"] if i["id"] == edge["depends_on_id"]), None)
            if target is None:
                continue
            if edge["type"] in BLOCKING and target["status"] != "closed":
                return False
            if edge["type"] == "parent-child" and (target["status"] == "blocked" or not self.is_unblocked(target)):
                return False
        return True

    def is_unblocked(self, issue: dict) -> bool:
        return not self.open_blockers(issue)

    def open_blockers(self, issue: dict) -> list[str]:
        ids = {i["id"]: i for i in self.data["issues"]}
        return [e["depends_on_id"] for e in self.edges(issue["id"])
                if e["type"] in BLOCKING and e["depends_on_id"] in ids and ids[e["depends_on_id"]]["status"] != "closed"]


def plain(issue: dict, as_created: bool = False) -> dict:
    """bd's Issue: fields in struct order, empty ones left out, priority always there; times as
    the database keeps them, except in the answer to `create` (`as_created`)."""
    out = {k: issue[k] for k in ISSUE_ORDER if issue.get(k) not in (None, "", []) or k == "priority"}
    if not as_created:
        out.update({k: stored(out[k]) for k in TIMESTAMPS if k in out})
    if issue.get("metadata"):
        out["metadata"] = dict(issue["metadata"])
    if issue.get("labels"):
        out["labels"] = sorted(issue["labels"])
    return out


def with_counts(db: Db, issue: dict) -> dict:
    out = plain(issue)
    edges = db.edges(issue["id"])
    if edges:
        out["dependencies"] = edges
    out["dependency_count"] = sum(1 for e in edges if e["type"] in BLOCKING)
    out["dependent_count"] = sum(1 for e in db.data["deps"] if e["depends_on_id"] == issue["id"] and e["type"] in BLOCKING)
    out["comment_count"] = sum(1 for c in db.data["comments"] if c["issue_id"] == issue["id"])
    return out


def details(db: Db, issue: dict) -> dict:
    out = plain(issue)
    linked = []
    for edge in db.edges(issue["id"]):
        target = next((i for i in db.data["issues"] if i["id"] == edge["depends_on_id"]), None)
        if target:
            linked.append({**plain(target), "dependency_type": edge["type"]})
    if linked:
        out["dependencies"] = linked
    out["dependent_count"] = sum(1 for e in db.data["deps"] if e["depends_on_id"] == issue["id"])
    out["dependency_count"] = len(linked)
    out["comment_count"] = sum(1 for c in db.data["comments"] if c["issue_id"] == issue["id"])
    return out


def print_object(obj: dict) -> None:
    print(json.dumps({**obj, "schema_version": 1}, indent=2, sort_keys=True))


def print_array(items: list) -> None:
    print(json.dumps(items, indent=2))


def actor(args) -> str:
    return args.actor or os.environ.get("BEADS_ACTOR") or os.environ.get("USER") or "unknown"


def parse(argv: list[str]):
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true")
    common.add_argument("--actor")
    parser = argparse.ArgumentParser(prog="bd", parents=[common])
    parser.add_argument("-C", dest="chdir")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", parents=[common])
    p.add_argument("--prefix", required=True)
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("create", parents=[common])
    p.add_argument("title")
    p.add_argument("-d", "--description", default="")
    p.add_argument("-p", "--priority", type=int, default=2)
    p.add_argument("-t", "--type", default="task")
    p.add_argument("-l", "--labels", default="")
    p.add_argument("--deps", default="")
    p = sub.add_parser("ready", parents=[common])
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--claim", action="store_true")
    p = sub.add_parser("list", parents=[common])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--status", default="")
    p.add_argument("--all", action="store_true")  # closed ones too, as --status all
    p.add_argument("--label", action="append", default=[])
    p = sub.add_parser("show", parents=[common])
    p.add_argument("ids", nargs="+")
    p = sub.add_parser("update", parents=[common])
    p.add_argument("id")
    p.add_argument("--claim", action="store_true")
    p.add_argument("-s", "--status")
    p.add_argument("-a", "--assignee")
    p.add_argument("--append-notes")
    p.add_argument("--add-label", action="append", default=[])
    p.add_argument("--remove-label", action="append", default=[])
    p.add_argument("--set-metadata", action="append", default=[])
    p.add_argument("--unset-metadata", action="append", default=[])
    p.add_argument("--if-assignee")
    p.add_argument("--if-status")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("close", parents=[common])
    p.add_argument("id")
    p.add_argument("-r", "--reason", default="")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("reopen", parents=[common])
    p.add_argument("id")
    p = sub.add_parser("dep", parents=[common])
    p.add_argument("action", choices=["add"])
    p.add_argument("issue")
    p.add_argument("depends_on")
    p.add_argument("-t", "--type", default="blocks")
    p = sub.add_parser("comment", parents=[common])
    p.add_argument("id")
    p.add_argument("text")
    p = sub.add_parser("heartbeat", parents=[common])
    p.add_argument("id")
    p = sub.add_parser("reclaim", parents=[common])
    p.add_argument("--older-than", default="")
    p = sub.add_parser("unclaim", parents=[common])
    p.add_argument("id")
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("label", parents=[common])
    p.add_argument("action", choices=["add"])
    p.add_argument("id")
    p.add_argument("label")
    p = sub.add_parser("merge-slot", parents=[common])
    p.add_argument("action", choices=["create", "check", "acquire", "release"])
    return parser.parse_args(argv)


def ready_list(db: Db) -> list[dict]:
    ready = [i for i in db.data["issues"] if db.is_ready(i)]
    # Issues created in the same second come in no particular order from the real bd: here, by id
    # (random), so a caller that counts on creation order fails with the stand-in too.
    return sorted(ready, key=lambda i: (i["priority"], stored(i["created_at"]), i["id"]))


def command(args, db: Db) -> None:
    who = actor(args)
    if args.cmd == "create":
        check_title(args.title)
        check_labels([label for label in args.labels.split(",") if label])
        issue = {"id": db.new_id(), "title": args.title, "description": args.description, "status": "open",
                 "priority": args.priority, "issue_type": args.type, "created_at": now(), "created_by": who,
                 "updated_at": now(), "labels": [l for l in args.labels.split(",") if l]}
        for spec in filter(None, args.deps.split(",")):
            kind, _, target = spec.rpartition(":")
            db.issue(target)
            if kind in ("", "blocks"):  # reversed: the NEW issue blocks the target
                db.data["deps"].append(edge(target, issue["id"], "blocks", who))
            else:
                db.data["deps"].append(edge(issue["id"], target, "blocks" if kind == "blocked-by" else kind, who))
        db.data["issues"].append(issue)
        db.save()
        print_object(plain(issue, as_created=True))
    elif args.cmd == "ready":
        items = ready_list(db)
        if args.claim:
            items = items[:1]
            for issue in items:
                issue.update(status="in_progress", assignee=who, started_at=now(), updated_at=now())
                grant_lease(issue, who)
            db.save()
            print_array([plain(i) for i in items])
            return
        print_array([with_counts(db, i) for i in items[:args.limit or None]])
    elif args.cmd == "list":
        wanted = [s for s in args.status.split(",") if s]
        items = [i for i in db.data["issues"]
                 if (("all" in wanted or args.all) or (i["status"] in wanted if wanted else i["status"] != "closed"))
                 and all(label in (i.get("labels") or ()) for label in args.label)]
        # As the real bd 1.3.0 lists: by priority, newest first, then by id (stable sorts, last key first).
        items.sort(key=lambda i: i["id"])
        items.sort(key=lambda i: stored(i["created_at"]), reverse=True)
        items.sort(key=lambda i: i["priority"])
        print_array([with_counts(db, i) for i in items[:args.limit or None]])
    elif args.cmd == "show":
        found = [i for i in db.data["issues"] if i["id"] in args.ids]
        if not found:
            raise BdFailure("no issues found matching the provided IDs")
        print_array([details(db, i) for i in found])
    elif args.cmd == "update":
        if args.claim and (args.if_assignee is not None or args.if_status is not None):
            raise BdFailure("cannot combine --if-assignee/--if-status with --claim (--claim is already an "
                            "atomic compare-and-set)")
        fields = (args.status, args.assignee, args.append_notes, args.set_metadata or None, args.unset_metadata or None)
        if (args.if_assignee is not None or args.if_status is not None) and all(f is None for f in fields):
            raise BdFailure("--if-assignee/--if-status require at least one field update (e.g. -a, -s); label and "
                            "parent edits are not covered by the guard")
        metadata = {}
        for pair in args.set_metadata:
            key, equals, value = pair.partition("=")
            if not equals:
                raise BdFailure(f'invalid --set-metadata: expected key=value, got "{pair}"')
            metadata[key] = value
        try:
            issue = db.issue(args.id)
        except BdFailure as exc:
            raise BatchFailure(args.id, "resolving", f"resolving issue: {exc}") from None
        holder = issue.get("assignee")
        if args.if_assignee is not None and (holder or "") != args.if_assignee:
            raise BatchFailure(args.id, "updating", f'updating issue: assignee mismatch: {args.id} is held by '
                               f'"{holder or ""}", expected "{args.if_assignee}"', guard_mismatch=True)
        if args.if_status is not None and issue["status"] != args.if_status:
            raise BatchFailure(args.id, "updating", f'updating issue: status mismatch: {args.id} has status '
                               f'"{issue["status"]}", expected "{args.if_status}"', guard_mismatch=True)
        for key in [*metadata, *args.unset_metadata]:
            if not METADATA_KEY.fullmatch(key):
                raise BatchFailure(args.id, "updating", f'updating issue: validation failed: invalid metadata key '
                                   f'"{key}": must match ^[a-zA-Z_][a-zA-Z0-9_./]*$')
        if args.claim:
            if holder and holder != who:
                if issue["status"] == "in_progress":
                    raise BatchFailure(args.id, "updating", f"updating issue: issue already claimed by {holder}")
                raise BatchFailure(args.id, "updating", f'updating issue: issue already claimed: already assigned to '
                                   f'"{holder}" — coordinate with the holder; if their claim is abandoned (crashed '
                                   'agent), lease expiry will surface it for bd reclaim')
            if issue["status"] != "open" and not (issue["status"] == "in_progress" and holder == who):
                raise BatchFailure(args.id, "updating", f"updating issue: issue not claimable: status {issue['status']}")
            issue.update(status="in_progress", assignee=who, started_at=now())
            grant_lease(issue, who)
        elif (args.assignee is not None and args.assignee != holder and holder and holder != who
              and issue["status"] == "in_progress"):  # the holder set to itself is no reassignment
            raise BatchFailure(args.id, "updating", f"cannot reassign {args.id}: held by \"{holder}\" (in_progress); "
                               "coordinate with the holder — pass --force only if their claim is abandoned, "
                               "or use bd reclaim")
        if args.status == "closed" and (blockers := db.open_blockers(issue)) and not args.force:
            raise BatchFailure(args.id, "updating", f"updating issue: cannot close blocked issue: {args.id} is "
                               f"blocked by [{' '.join(blockers)}]")
        if args.status:
            if args.status == "closed" and issue["status"] != "closed":
                issue["closed_at"] = now()
            issue["status"] = args.status
            if args.status != "closed":
                issue.pop("closed_at", None)
        if args.assignee is not None:
            issue["assignee"] = args.assignee
        if (args.status or args.assignee is not None) and not args.claim and not (
                issue["status"] == "in_progress" and issue.get("assignee") == issue.get("lease_holder")):
            drop_lease(issue)
        if args.append_notes:
            issue["notes"] = (issue["notes"] + "\n" + args.append_notes) if issue.get("notes") else args.append_notes
        labels = [label for label in issue.get("labels") or [] if label not in args.remove_label]
        issue["labels"] = labels + [label for label in dict.fromkeys(args.add_label) if label not in labels]
        kept = {k: v for k, v in (issue.get("metadata") or {}).items() if k not in args.unset_metadata}
        issue["metadata"] = {**kept, **metadata}
        issue["updated_at"] = now()
        db.save()
        print_array([plain(issue)])
    elif args.cmd == "close":
        issue = db.issue(args.id)
        if issue.get("assignee") and issue["assignee"] != who and not args.force:
            raise PlainFailure(f"cannot close {args.id}: assignee is \"{issue['assignee']}\", actor is \"{who}\"; "
                               "reclaim or use --force to override")
        if (blockers := db.open_blockers(issue)) and not args.force:
            raise PlainFailure(f"cannot close blocked issue: {args.id} is blocked by [{' '.join(blockers)}] "
                               "(use --force to override)")
        issue.update(status="closed", closed_at=now(), close_reason=args.reason, updated_at=now())
        drop_lease(issue)
        db.save()
        print_array([plain(issue)])
    elif args.cmd == "heartbeat":
        title = heartbeat(db, args.id, who)
        if args.json:
            print_object({"id": args.id, "status": "heartbeat", "owner": who})
        else:
            print(f"✓ Heartbeat {args.id} — {title} (lease refreshed)")
    elif args.cmd == "reclaim":
        older_than = go_duration(args.older_than) if args.older_than else 2 * lease_secs()
        if older_than < 0:
            raise BdFailure("--older-than must not be negative")
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=older_than)
        reclaimed = []
        for issue in db.data["issues"]:
            if issue["status"] == "in_progress" and issue.get("lease_expires_at") \
                    and parsed_time(issue["lease_expires_at"]) < cutoff:
                reclaimed.append({"id": issue["id"], "previous_owner": issue.get("assignee") or ""})
                drop_lease(issue)
                issue.update(status="open", updated_at=now())
                issue.pop("assignee", None)
                issue.pop("started_at", None)
        db.save()
        if args.json:
            print_object({"count": len(reclaimed), "reclaimed": reclaimed or None, "scoped": False})
        elif reclaimed:
            print(f"✓ Reclaimed {len(reclaimed)} stale-lease issue(s):")
            for item in reclaimed:
                print(f"  {item['id']} (was held by {item['previous_owner'] or '(unassigned)'})")
        else:
            print("✓ No stale leases to reclaim")
    elif args.cmd == "unclaim":
        issue = db.issue(args.id)
        if issue.get("assignee") and issue["assignee"] != who and not args.force:
            raise BdFailure(f"cannot unclaim {args.id}: held by \"{issue['assignee']}\"; use --force")
        drop_lease(issue)
        issue.update(status="open", updated_at=now())
        issue.pop("assignee", None)
        issue.pop("started_at", None)
        db.save()
        print_array([plain(issue)])
    elif args.cmd == "reopen":
        issue = db.issue(args.id)
        issue.update(status="open", updated_at=now())
        issue.pop("closed_at", None)
        issue.pop("close_reason", None)
        db.save()
        print_array([plain(issue)])
    elif args.cmd == "dep":
        db.issue(args.issue)
        db.issue(args.depends_on)
        db.data["deps"].append(edge(args.issue, args.depends_on, args.type, who))
        db.save()
        print_object({"issue_id": args.issue, "depends_on_id": args.depends_on, "type": args.type, "status": "added"})
    elif args.cmd == "comment":
        db.issue(args.id)
        comment = {"id": str(len(db.data["comments"]) + 1), "issue_id": args.id, "author": who,
                   "text": args.text, "created_at": now()}
        db.data["comments"].append(comment)
        db.save()
        print_object(comment)
    elif args.cmd == "merge-slot":
        merge_slot(db, args.action, who)
    elif args.cmd == "label":
        issue = db.issue(args.id)
        issue.setdefault("labels", [])
        if args.label not in issue["labels"]:
            issue["labels"].append(args.label)
        db.save()
        print_array([{"issue_id": args.id, "label": args.label, "status": "added"}])


def merge_slot(db: Db, action: str, who: str) -> None:
    """bd's merge slot: one bead, its holder in its metadata, held while in_progress. It has no
    lease, and `release` frees it whoever holds it. A claim of the bead (`update --claim`) holds it
    too: `check` and `acquire` see it taken, with no holder."""
    slot_id = f"{db.data['prefix']}-merge-slot"
    slot = next((i for i in db.data["issues"] if i["id"] == slot_id), None)
    if action == "create":
        if slot is None:
            slot = {"id": slot_id, "title": SLOT_TITLE, "description": SLOT_DESCRIPTION, "status": "open",
                    "priority": 0, "issue_type": "task", "created_at": now(), "updated_at": now(),
                    "labels": [SLOT_LABEL]}
            db.data["issues"].append(slot)
            db.save()
        print_array_object({"id": slot_id, "status": slot["status"]})
        return
    if slot is None:
        if action == "check":
            print_array_object({"available": False, "error": "not found", "id": slot_id})
            return
        hint = " (run 'bd merge-slot create' first)" if action == "acquire" else ""
        raise BdFailure(f"merge slot not found: {slot_id}{hint}")
    holder = (slot.get("metadata") or {}).get("holder")
    if action == "check":
        print_array_object({"available": slot["status"] == "open", "holder": holder, "id": slot_id, "waiters": None})
    elif action == "acquire":
        if slot["status"] != "open":
            raise SlotRefusal({"acquired": False, "holder": holder or "", "id": slot_id})
        slot.update(status="in_progress", metadata={**(slot.get("metadata") or {}), "holder": who}, updated_at=now())
        db.save()
        print_array_object({"acquired": True, "holder": who, "id": slot_id})
    else:
        slot["status"] = "open"
        slot.get("metadata", {}).pop("holder", None)
        drop_lease(slot)  # the assignee of a claim stays, as on the real bd
        slot["updated_at"] = now()
        db.save()
        print_array_object({"id": slot_id, "released": True})


def print_array_object(obj: dict) -> None:
    """An object as `merge-slot` prints it: no schema_version."""
    print(json.dumps(obj, indent=2, sort_keys=True))


def heartbeat(db: Db, issue_id: str, who: str) -> str:
    """Renew the holder's lease; anyone else, or a claim that has ended, learns it is gone (the
    real bd's messages). Returns the issue's title."""
    issue = next((i for i in db.data["issues"] if i["id"] == issue_id), None)
    if issue is None:
        raise BdFailure(f'resolving {issue_id}: no issue found matching "{issue_id}"')
    if issue.get("lease_holder") == who:
        grant_lease(issue, who)
    elif issue.get("assignee") and issue["assignee"] != who:
        raise BdFailure(f"heartbeat {issue_id}: issue already claimed by {issue['assignee']}")
    elif issue.get("assignee") == who and issue["status"] == "in_progress":
        grant_lease(issue, who)  # held with no lease (a claim by a plain update): the heartbeat arms one
    else:
        raise BdFailure(f"heartbeat {issue_id}: issue not claimable: {issue_id} status {issue['status']}")
    db.save()
    return issue["title"]


def edge(issue_id: str, depends_on: str, kind: str, who: str) -> dict:
    return {"issue_id": issue_id, "depends_on_id": depends_on, "type": kind, "created_at": now(),
            "created_by": who, "metadata": "{}"}


def main(argv: list[str]) -> int:
    # Go's flag parser takes "--older-than -1s" as a value; argparse would take it for an option.
    argv = [f"--older-than={argv[i + 1]}" if a == "--older-than" and i + 1 < len(argv) else a
            for i, a in enumerate(argv) if i == 0 or argv[i - 1] != "--older-than"]
    args = parse(argv)
    cwd = Path(args.chdir).resolve() if args.chdir else Path.cwd()
    if args.cmd == "init":
        beads = cwd / ".beads"
        beads.mkdir(exist_ok=True)
        # A shared database (FAKE_BD_DB) another clone made is joined, never emptied.
        if not (db_path := database(beads)).exists() or not os.environ.get("FAKE_BD_DB"):
            db_path.write_text(json.dumps({"prefix": args.prefix, "issues": [], "deps": [], "comments": []}),
                               encoding="utf-8")
        # Like the real `bd init`: its data is ignored, and its own files are committed to git.
        (beads / ".gitignore").write_text("stand_in.*\n", encoding="utf-8")
        if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=cwd, capture_output=True).returncode == 0:
            subprocess.run(["git", "add", ".beads/.gitignore"], cwd=cwd, check=True)
            subprocess.run(["git", "commit", "-q", "-m", "bd init: initialize beads issue tracking"], cwd=cwd,
                           check=True)
        return 0
    beads = find_beads_dir(cwd)
    if beads is None or not database(beads).exists():
        print("Error: no beads database found", file=sys.stderr)
        return 1
    try:
        with Db(database(beads)) as db:
            command(args, db)
    except SlotRefusal as exc:
        print_array_object(exc.answer)
        return 1
    except BatchFailure as exc:
        print(f"Error {exc.verb} {exc.issue_id}: {str(exc).split(': ', 1)[-1]}", file=sys.stderr)
        if args.json:
            failed = {"id": exc.issue_id, "error": str(exc), **({"guard_mismatch": True} if exc.guard_mismatch else {})}
            print(json.dumps({"error": "1 of 1 issues failed to update", "failed": [failed], "schema_version": 1},
                             separators=(",", ":")), file=sys.stderr)
        return GUARD_MISMATCH_EXIT if exc.guard_mismatch else 1
    except BdFailure as exc:
        if args.json and not isinstance(exc, PlainFailure) and (args.cmd != "create" or isinstance(exc, ValidationFailure)):
            error = json.dumps({"error": str(exc), "schema_version": 1}, indent=2)
            print(error, file=sys.stdout if args.cmd in STDOUT_ERRORS or args.cmd == "create" else sys.stderr)
        else:
            print(f"Error: {exc}" if args.cmd in ("create", "heartbeat", "reclaim", "unclaim") else str(exc),
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
