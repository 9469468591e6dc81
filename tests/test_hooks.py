"""Hooks run through docker exec: order, failures, output tails, labels vs explicit."""

from __future__ import annotations

import pytest

from volbak.errors import HookError
from volbak.ops.hooks import POST, PRE, hook_commands, hooks, run_hook

pytestmark = pytest.mark.docker

SERVICE = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


@pytest.fixture
def shared(resources):
    return resources.volume()


@pytest.fixture
def make(resources, busybox_image, shared):
    """A running container with the shared volume at /shared (for the order log)."""

    def make(pre=None, post=None, **kw):
        labels = {}
        if pre is not None:
            labels["volbak.pre-backup"] = pre
        if post is not None:
            labels["volbak.post-backup"] = post
        return resources.container(
            busybox_image, SERVICE, start=True, labels=labels,
            volumes={shared.name: {"bind": "/shared", "mode": "rw"}}, **kw)

    return make


def log_of(container) -> list[str]:
    _code, out = container.exec_run(["sh", "-c", "cat /shared/log 2>/dev/null"])
    return out.decode().split()


def test_run_hook_ok(make):
    c = make()
    r = run_hook(c, "echo hello; echo to-stderr >&2", PRE)
    assert r.exit_code == 0 and r.phase == PRE and r.container == c.name
    # stdout and stderr are separate streams: their interleaving is not defined
    assert sorted(r.output.splitlines()) == ["hello", "to-stderr"]
    assert r.summary()["command"] == "echo hello; echo to-stderr >&2"


def test_run_hook_failure_names_container_phase_code_and_tail(make):
    c = make()
    with pytest.raises(HookError) as ei:
        run_hook(c, "i=0; while [ $i -lt 100 ]; do echo line$i; i=$((i+1)); done; exit 3",
                 POST, tail_lines=5)
    e = ei.value
    assert e.exit_code == 10
    assert f"post-backup hook in container '{c.name}' exited with code 3" in e.message
    assert e.hook_exit_code == 3 and e.phase == POST and e.container == c.name
    assert e.output.splitlines() == [f"line{i}" for i in range(95, 100)]
    assert "line94" not in e.message and "line99" in e.message
    assert "sh -c" in e.hint


def test_large_output_is_bounded(make):
    c = make()
    r = run_hook(c, "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end", PRE)
    assert r.output.splitlines()[-1] == "end"
    assert len(r.output) < 70 * 1024


def test_not_running_and_timeout(resources, busybox_image, make):
    idle = resources.container(busybox_image, SERVICE)  # created, never started
    with pytest.raises(HookError, match="not running"):
        run_hook(idle, "true", PRE)
    c = make()
    with pytest.raises(HookError, match=r"did not finish within 0\.5 s"):
        run_hook(c, "echo started; sleep 5", PRE, timeout=0.5)


def test_labels_and_explicit_commands(make):
    c = make(pre="echo a", post="echo b")
    assert hook_commands(c) == ("echo a", "echo b")
    assert hook_commands(c, pre="echo x") == ("echo x", "echo b")
    assert hook_commands(make()) == (None, None)


def test_order_pre_forward_post_reverse(make):
    a = make(pre="echo a-pre >> /shared/log", post="echo a-post >> /shared/log")
    nohooks = make()
    b = make(pre="echo b-pre >> /shared/log", post="echo b-post >> /shared/log")
    with hooks([a, nohooks, b]) as results:
        assert log_of(a) == ["a-pre", "b-pre"]
        a.exec_run(["sh", "-c", "echo backup >> /shared/log"])
    assert log_of(a) == ["a-pre", "b-pre", "backup", "b-post", "a-post"]
    assert [(r.container, r.phase) for r in results] == [
        (a.name, PRE), (b.name, PRE), (b.name, POST), (a.name, POST)]


def test_failing_pre_hook_aborts_and_post_hooks_still_run(make):
    a = make(pre="echo a-pre >> /shared/log", post="echo a-post >> /shared/log")
    b = make(pre="echo b-pre >> /shared/log; echo 'db is locked' >&2; exit 4",
             post="echo b-post >> /shared/log")
    c = make(pre="echo c-pre >> /shared/log", post="echo c-post >> /shared/log")
    body_ran = False
    with pytest.raises(HookError) as ei, hooks([a, b, c]):
        body_ran = True
    assert not body_ran
    assert f"pre-backup hook in container '{b.name}' exited with code 4" in ei.value.message
    assert "db is locked" in ei.value.message
    # b's own post-hook runs (cleanup), then a's; c was never reached
    assert log_of(a) == ["a-pre", "b-pre", "b-post", "a-post"]


def test_body_failure_runs_post_hooks_and_propagates(make):
    a = make(pre="echo a-pre >> /shared/log", post="echo a-post >> /shared/log; exit 1")
    with pytest.raises(RuntimeError, match="backup failed") as ei, hooks([a]):
        raise RuntimeError("backup failed")
    assert log_of(a) == ["a-pre", "a-post"]
    # the post-hook's own failure is attached, not raised over the real error
    assert any("post-backup hook" in n for n in ei.value.__notes__)


def test_post_hook_failure_after_success_is_an_error(make):
    a = make(post="echo a-post >> /shared/log; exit 2")
    b = make(post="echo b-post >> /shared/log; exit 5")
    with pytest.raises(HookError) as ei, hooks([a, b]):
        pass
    # both ran (reverse order); the first failure is raised, the other is mentioned
    assert log_of(a) == ["b-post", "a-post"]
    assert "exited with code 5" in ei.value.message
    assert "1 more post-backup hook" in ei.value.message


def test_explicit_commands_apply_to_all_given_containers(make):
    a, b = make(pre="exit 9"), make()
    with hooks([a, b], pre="echo pre-$HOSTNAME >> /shared/log"):
        pass
    assert len(log_of(a)) == 2
