"""The short failover soak (bench/soak.py with 5 events per pool mode): nothing acknowledged
lost, nothing written twice, no idle client dropped, no error outside what was in flight, and
pgstay's descriptors back near where they were. make check runs it in the plain and the ASan
build; the 100-event soak is `bench/soak.py`'s default (its figures: bench/results/soak.md)."""
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
import soak  # noqa: E402


@pytest.fixture(scope="module")
def soak_lab():
    d = tempfile.mkdtemp(prefix="pgstay-soak-", dir="/tmp")
    lab = soak.new_lab(d)
    yield lab, d
    for n in range(1, lab.nodes + 1):
        lab.run("thaw", "n%d" % n, check=False)
    lab.run("destroy", check=False)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_short_soak(soak_lab, mode):
    lab, d = soak_lab
    work = os.path.join(d, mode)
    os.makedirs(work)
    r = soak.soak(lab, work, mode, events=5, idle=20, writers=3)
    print(r)
    assert r["events"] == 5
    assert r["acked"] > 100
    assert r["lost"] == 0, r
    assert r["twice"] == 0, r
    assert r["idle_dropped"] == 0, r
    assert r["writers_broken"] == 0, r
    assert r["errors_outside"] == [], r
    assert r["stalled_after"] == [], r
    # descriptors: what the pools hold may differ by a few servers, not grow with the events
    assert r["fds_after"] <= r["fds_before"] + 10, r
