"""Retention: restic `forget` semantics over synthetic histories, and prune on a real repo."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from volbak.backend import ObjectInfo
from volbak.errors import UsageError
from volbak.local import LocalBackend
from volbak.ops.retention import UNLIMITED, Policy, clean_orphans, plan, prune
from volbak.repository import BackupInfo, Manifest, Repository, make_stamp


def mk(volume: str, when: str | dt.datetime) -> BackupInfo:
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    stamp = make_stamp(when)
    manifest = Manifest(
        volume={"name": volume}, created=when.isoformat(),
        object={"name": f"{volume}/{stamp}.tar.zst", "size": 4, "sha256": "0" * 64},
    )
    return BackupInfo(f"{volume}@{stamp}", volume, stamp, manifest)


def kept(decisions) -> list[str]:
    return [d.info.created.strftime("%Y-%m-%d %H:%M") for d in decisions if d.keep]


def kept_days(decisions) -> list[str]:
    return [d.info.created.strftime("%Y-%m-%d") for d in decisions if d.keep]


# restic's documentation example: one backup every Sunday for 12 weeks.
SUNDAYS = [
    "2019-09-01", "2019-09-08", "2019-09-15", "2019-09-22", "2019-09-29", "2019-10-06",
    "2019-10-13", "2019-10-20", "2019-10-27", "2019-11-03", "2019-11-10", "2019-11-17",
]


def sundays():
    return [mk("v", f"{d}T11:00:00") for d in SUNDAYS]


def daily_history(start: str, end: str, hour: int = 3):
    d = dt.date.fromisoformat(start)
    last = dt.date.fromisoformat(end)
    out = []
    while d <= last:
        out.append(mk("v", dt.datetime(d.year, d.month, d.day, hour, tzinfo=dt.UTC)))
        d += dt.timedelta(days=1)
    return out


def test_restic_doc_example_keep_daily_4():
    # "forget --keep-daily 4 will keep the last four snapshots, for the last four Sundays"
    d = plan(sundays(), Policy(daily=4))
    assert kept_days(d) == ["2019-11-17", "2019-11-10", "2019-11-03", "2019-10-27"]
    assert [x.reasons for x in d if x.keep] == [
        ["daily 2019-11-17"], ["daily 2019-11-10"], ["daily 2019-11-03"], ["daily 2019-10-27"]
    ]
    assert len([x for x in d if not x.keep]) == 8


def test_order_is_newest_first_regardless_of_input_order():
    hist = sundays()
    d1 = plan(hist, Policy(weekly=3))
    d2 = plan(list(reversed(hist)), Policy(weekly=3))
    assert [x.info.id for x in d1] == [x.info.id for x in d2]
    assert kept_days(d1) == ["2019-11-17", "2019-11-10", "2019-11-03"]


def test_keep_last():
    assert kept_days(plan(sundays(), Policy(last=3))) == ["2019-11-17", "2019-11-10", "2019-11-03"]
    # more counts than backups: everything is kept
    assert len(kept(plan(sundays(), Policy(last=20)))) == 12
    d = plan(sundays(), Policy(last=1))
    assert d[0].reasons == ["last"]


def test_oldest_is_kept_while_counts_remain():
    # restic >= 0.16: a bucket with counts left at the oldest snapshot keeps it too
    d = plan(sundays(), Policy(monthly=4))
    # Nov, Oct, Sep each give one, and the oldest (Sep 1) is kept as "oldest monthly"
    assert kept_days(d) == ["2019-11-17", "2019-10-27", "2019-09-29", "2019-09-01"]
    assert d[-1].reasons == ["oldest monthly 2019-09"]
    # with the counter exhausted the oldest goes
    assert kept_days(plan(sundays(), Policy(monthly=3))) == [
        "2019-11-17", "2019-10-27", "2019-09-29"
    ]


def test_hourly_keeps_the_latest_backup_of_each_hour():
    hist = [mk("v", f"2026-11-28T{t}:00+00:00") for t in
            ("07:00", "07:30", "08:10", "08:50", "09:05")]
    assert kept(plan(hist, Policy(hourly=2))) == ["2026-11-28 09:05", "2026-11-28 08:50"]
    d = plan(hist, Policy(hourly=5))
    assert kept(d) == [
        "2026-11-28 09:05", "2026-11-28 08:50", "2026-11-28 07:30", "2026-11-28 07:00"
    ]
    assert d[-1].reasons == ["oldest hourly 2026-11-28T07"]


def test_iso_weeks_span_new_year():
    # 2020-12-28 (Mon) and 2021-01-03 (Sun) are both ISO week 2020-W53; 2021-01-04 is 2021-W01
    hist = [mk("v", f"{d}T12:00:00") for d in ("2020-12-28", "2021-01-03", "2021-01-04")]
    d = plan(hist, Policy(weekly=2))
    assert kept_days(d) == ["2021-01-04", "2021-01-03"]
    assert [x.reasons for x in d if x.keep] == [["weekly 2021-W01"], ["weekly 2020-W53"]]
    d = plan(hist, Policy(yearly=1))
    assert kept_days(d) == ["2021-01-04"]


def test_buckets_are_utc():
    # 23:30+01:00 and 00:30+01:00 next day are 22:30Z and 23:30Z of the same UTC day
    hist = [mk("v", "2026-11-28T23:30:00+01:00"), mk("v", "2026-11-29T00:30:00+01:00")]
    d = plan(hist, Policy(daily=1))
    assert kept(d) == ["2026-11-28 23:30"]
    assert d[0].reasons == ["daily 2026-11-28"]


def test_combined_policy_over_three_years_of_dailies():
    # restic doc: "one backup every day ... --keep-daily 7 --keep-weekly 5
    # --keep-monthly 12 --keep-yearly 75": 7 dailies, the weeklies not already daily,
    # the last day of 12 months, the last day of each year, and (counts left) the oldest.
    hist = daily_history("2024-01-01", "2026-11-28")
    d = plan(hist, Policy(daily=7, weekly=5, monthly=12, yearly=75))
    assert kept_days(d) == [
        # 7 dailies (2026-11-28 is a Saturday, ISO week 48)
        "2026-11-28", "2026-11-27", "2026-11-26", "2026-11-25", "2026-11-24",
        "2026-11-23", "2026-11-22",
        # weekly: W48 and W47 are already kept; the last day of W46, W45, W44
        "2026-11-15", "2026-11-08", "2026-11-01",
        # monthly: Nov is kept; the last day of the 11 months before
        "2026-10-31", "2026-09-30", "2026-08-31", "2026-07-31", "2026-06-30",
        "2026-05-31", "2026-04-30", "2026-03-31", "2026-02-28", "2026-01-31",
        "2025-12-31",
        # yearly: 2026 and 2025 are kept already
        "2024-12-31",
        # yearly counts left: the oldest backup is kept as well
        "2024-01-01",
    ]
    newest = d[0]
    assert newest.reasons == [
        "daily 2026-11-28", "weekly 2026-W48", "monthly 2026-11", "yearly 2026"
    ]
    assert d[-1].reasons == ["oldest yearly 2024"]
    by_day = {x.info.created.strftime("%Y-%m-%d"): x for x in d}
    assert by_day["2026-11-22"].reasons == ["daily 2026-11-22", "weekly 2026-W47"]
    assert by_day["2025-12-31"].reasons == ["monthly 2025-12", "yearly 2025"]
    assert sum(1 for x in d if not x.keep) == len(hist) - 23


def test_unlimited():
    hist = [mk("v", f"2026-11-{day:02d}T{h:02d}:00:00") for day in (26, 27, 28) for h in (1, 13)]
    d = plan(hist, Policy(daily=UNLIMITED))
    assert kept(d) == [
        "2026-11-28 13:00", "2026-11-27 13:00", "2026-11-26 13:00", "2026-11-26 01:00"
    ]
    # -1 never runs out, so the oldest is kept as "oldest daily"
    assert d[-1].keep and d[-1].reasons == ["oldest daily 2026-11-26"]
    assert str(Policy(daily=UNLIMITED, last=2)) == "keep 2 last, all daily"


def test_grouped_per_volume():
    hist = [mk("a", "2026-11-27T01:00:00"), mk("b", "2026-11-01T01:00:00"),
            mk("a", "2026-11-28T01:00:00"), mk("b", "2026-10-01T01:00:00")]
    d = plan(hist, Policy(last=1))
    assert [(x.info.volume, x.keep) for x in d] == [
        ("a", True), ("a", False), ("b", True), ("b", False)
    ]
    assert [x.info.id for x in d if x.keep] == [hist[2].id, hist[1].id]


def test_newest_is_always_kept():
    for policy in (Policy(last=1), Policy(yearly=1), Policy(hourly=1), Policy(weekly=2)):
        d = plan(sundays(), policy)
        assert d[0].keep and d[0].info.created.strftime("%Y-%m-%d") == "2019-11-17"


def test_equal_times_ordered_by_stamp():
    a = mk("v", "2026-11-28T01:00:00")
    b = BackupInfo("v@20261128T010000Z-2", "v", "20261128T010000Z-2", a.manifest)
    d = plan([a, b], Policy(last=1))
    assert d[0].info is b and d[0].keep and not d[1].keep


def test_empty_and_invalid_policies_refused():
    with pytest.raises(UsageError, match="refusing to delete every backup"):
        plan(sundays(), Policy())
    with pytest.raises(UsageError):
        Policy(daily=-2)
    with pytest.raises(UsageError):
        Policy(daily="7")  # type: ignore[arg-type]
    assert plan([], Policy(last=1)) == []


# --- prune on a real local repository ---------------------------------------------


def make_repo(tmp_path, history: dict[str, list[str]]) -> Repository:
    repo = Repository(LocalBackend(tmp_path / "repo"))
    for volume, times in history.items():
        for t in times:
            info = mk(volume, t)
            repo.backend.put_bytes(info.manifest.object["name"], b"data")
            repo.write_manifest(volume, info.stamp, info.manifest)
    return repo


def test_prune_deletes_what_plan_rejects(tmp_path):
    repo = make_repo(tmp_path, {"v": [f"{d}T11:00:00" for d in SUNDAYS],
                                "w": ["2026-01-01T00:00:00", "2026-01-02T00:00:00"]})
    before = {i.id for i in repo.list()}
    d = prune(repo, Policy(daily=4), dry_run=True)
    assert {i.id for i in repo.list()} == before
    assert sum(not x.keep for x in d) == 8
    deleted = []
    d = prune(repo, Policy(daily=4), on_delete=deleted.append)
    assert len(deleted) == 8
    left = repo.list()
    assert {i.id for i in left} == {x.info.id for x in d if x.keep}
    assert [i.created.strftime("%Y-%m-%d") for i in repo.list("v")] == [
        "2019-11-17", "2019-11-10", "2019-11-03", "2019-10-27"
    ]
    # archives went with their manifests: no orphans
    assert list(repo.orphans()) == []


def test_prune_one_volume_only(tmp_path):
    repo = make_repo(tmp_path, {"v": ["2026-01-01T00:00:00", "2026-01-02T00:00:00"],
                                "w": ["2026-01-01T00:00:00", "2026-01-02T00:00:00"]})
    prune(repo, Policy(last=1), volume="v")
    assert len(repo.list("v")) == 1 and len(repo.list("w")) == 2


def test_interrupted_prune_leaves_no_listed_backup_without_data(tmp_path):
    repo = make_repo(tmp_path, {"v": [f"{d}T11:00:00" for d in SUNDAYS]})
    real_delete = repo.backend.delete
    calls = {"n": 0}

    def flaky_delete(name):
        calls["n"] += 1
        if calls["n"] == 4:  # dies between a manifest and its archive
            raise KeyboardInterrupt
        real_delete(name)

    repo.backend.delete = flaky_delete
    with pytest.raises(KeyboardInterrupt):
        prune(repo, Policy(last=2))
    repo.backend.delete = real_delete
    for info in repo.list():
        repo.backend.stat(info.manifest.object["name"])  # every listed backup is readable
    assert len(list(repo.orphans())) == 1
    prune(repo, Policy(last=2))
    assert len(repo.list()) == 2


def _stored(repo: Repository, name: str, data: bytes, when: dt.datetime) -> None:
    """An object as the backend would have stored it at ``when`` (its mtime)."""
    repo.backend.put_bytes(name, data)
    os.utime(repo.backend.root / name, (when.timestamp(), when.timestamp()))


def test_clean_orphans_respects_grace(tmp_path):
    repo = make_repo(tmp_path, {"v": ["2026-11-28T00:00:00"]})
    _stored(repo, "v/20261101T000000Z.tar.zst", b"old crash", dt.datetime(2026, 11, 1, 1, 0,
                                                                          tzinfo=dt.UTC))
    _stored(repo, "v/20261128T060000Z.tar.zst", b"in progress",
            dt.datetime(2026, 11, 28, 6, 20, tzinfo=dt.UTC))
    _stored(repo, "w/notastamp.tar.zst", b"?", dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    now = dt.datetime(2026, 11, 28, 7, 0, tzinfo=dt.UTC)
    found = clean_orphans(repo, dry_run=True, now=now)
    assert [(o.name, o.expired, o.deleted) for o in found] == [
        ("v/20261101T000000Z.tar.zst", True, False),
        ("v/20261128T060000Z.tar.zst", False, False),
        ("w/notastamp.tar.zst", False, False),
    ]
    found = clean_orphans(repo, now=now)
    assert [o.name for o in found if o.deleted] == ["v/20261101T000000Z.tar.zst"]
    names = {o.name for o in repo.backend.list()}
    assert "v/20261101T000000Z.tar.zst" not in names
    assert "v/20261128T060000Z.tar.zst" in names
    assert len(repo.list()) == 1
    found = clean_orphans(repo, grace=dt.timedelta(minutes=30), volume="v", now=now)
    assert [o.name for o in found] == ["v/20261128T060000Z.tar.zst"] and found[0].deleted


class _NoTimes(LocalBackend):
    """A plugin from before ObjectInfo.mtime: lists no object times."""

    def list(self, prefix=""):
        return (ObjectInfo(o.name, o.size) for o in super().list(prefix))


def test_clean_orphans_ages_by_stored_time_too(tmp_path):
    """An old stamp is not enough: a long backup (here or on another host) stores its
    archive long after its stamp, a moment before its manifest. And a backend that cannot
    say when it stored an object never has an orphan removed by age, only reported."""
    now = dt.datetime(2026, 11, 28, 7, 0, tzinfo=dt.UTC)
    repo = make_repo(tmp_path, {"v": ["2026-11-20T00:00:00"]})
    _stored(repo, "v/20261101T000000Z.tar.zst", b"long backup, just stored",
            now - dt.timedelta(minutes=1))
    _stored(repo, "v/20261102T000000Z.tar.zst", b"crash", now - dt.timedelta(days=20))
    found = clean_orphans(repo, now=now)
    assert [(o.name, o.expired, o.deleted) for o in found] == [
        ("v/20261101T000000Z.tar.zst", False, False),
        ("v/20261102T000000Z.tar.zst", True, True),
    ]
    assert found[0].mtime == pytest.approx((now - dt.timedelta(minutes=1)).timestamp())

    old = Repository(_NoTimes(tmp_path / "repo"))
    _stored(old, "v/20261103T000000Z.tar.zst", b"crash", now - dt.timedelta(days=20))
    found = clean_orphans(old, now=now)
    assert [(o.name, o.expired, o.deleted, o.mtime) for o in found] == [
        ("v/20261101T000000Z.tar.zst", False, False, None),
        ("v/20261103T000000Z.tar.zst", False, False, None),
    ]
    from volbak.ops.cleanup import collect

    g = collect(old, dry_run=True)
    assert g.orphans == [] and g.orphans_kept == []
    assert g.orphans_unaged == ["v/20261101T000000Z.tar.zst", "v/20261103T000000Z.tar.zst"]


def test_decision_summary_is_json():
    d = plan(sundays(), Policy(last=1))
    json.dumps([x.summary() for x in d])
