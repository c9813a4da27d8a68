"""End-to-end: one short pgstay-bench failover run (crash) against direct and pgstay-session."""
import glob
import json
import os
import shutil
import subprocess
import tempfile

from conftest import assert_no_sanitizer_report, build_dir
from lab import free_port_base


def test_bench_failover_crash():
    d = tempfile.mkdtemp(prefix="pgstay-bench-e2e-")
    os.chmod(d, 0o755)  # the servers run as an unprivileged user
    lab = os.path.join(d, "lab")
    out = os.path.join(d, "report")
    argv = [os.path.join(build_dir(), "pgstay-bench"), "failover", "--lab", lab,
            "--port", str(free_port_base()), "--duration", "4", "--at", "1.5",
            "--delay", "300", "--event", "crash", "--target", "direct,pgstay-session",
            "--clients", "2", "--out", out]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=90)
        # the pgstay the bench started: no sanitizer report in its stdout / stderr (first: a
        # report is also why the run would fail)
        logs = glob.glob(os.path.join(out, "work", "*", "pgstay.log"))
        for path in logs:
            with open(path, errors="replace") as f:
                assert_no_sanitizer_report(f.read())
        assert p.returncode == 0, p.stdout + p.stderr
        assert logs
        for name in ("report.md", "report.json", "report.html"):
            assert os.path.getsize(os.path.join(out, name)) > 0, name
        assert "| pgstay-session |" in p.stdout
        with open(os.path.join(out, "report.json")) as f:
            rep = json.load(f)
        targets = {t["name"]: t for t in rep["targets"]}
        assert set(targets) == {"direct", "pgstay-session"}
        for t in targets.values():
            assert t["available"], t["why"]
            m = t["median"]
            assert m["attempts"] > 100 and m["acknowledged"] > 0, m
            run = t["runs"][0]
            assert run["new_primary"] == "n2" or run["new_primary"] == "n3", run
            assert run["phases_ms"]["promoted"] is not None
        m = targets["pgstay-session"]["median"]
        assert m["lost"] == 0, m
        assert m["broken_persistent"] == 0, (m, targets["pgstay-session"]["errors"])
        # the proxy's own record of the failover came along
        assert targets["pgstay-session"]["runs"][0]["pgstay_failovers"], targets["pgstay-session"]
        with open(os.path.join(out, "report.html")) as f:
            html = f.read()
        assert html.count("<svg") >= 2 and "promoted" in html
    finally:
        if os.path.exists(os.path.join(lab, "lab.conf")):
            subprocess.run([os.path.join(build_dir(), "pgstay-lab"), "--dir", lab, "destroy"],
                           capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)
