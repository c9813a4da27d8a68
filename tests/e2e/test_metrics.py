"""metrics_listen: Prometheus's text format over HTTP, scraped for real (urllib, and Debian's
Prometheus server) during a workload and through a lab failover."""
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Pgstay, free_port
from lab import Lab, free_port_base


def scrape(p):
    """{(name, sorted label items): value} of one scrape, checked by Prometheus's own parser."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % p.metrics_port, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, "duplicate series %r" % (key,)
            out[key] = s.value
    return out


def val(m, name, **labels):
    return m.get((name, tuple(sorted(labels.items()))))


POOL = dict(database="postgres", user="postgres", role="writer")


def check_histograms(m):
    """Buckets are cumulative and +Inf equals _count, for every histogram series."""
    series = {}
    for (name, labels), v in m.items():
        if name.endswith("_bucket"):
            rest = tuple(kv for kv in labels if kv[0] != "le")
            le = dict(labels)["le"]
            series.setdefault((name[:-7], rest), []).append((float(le), v))
    assert series
    for (base, rest), buckets in series.items():
        buckets.sort()
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), (base, rest, buckets)
        assert buckets[-1][0] == float("inf")
        assert m[(base + "_count", rest)] == counts[-1]


def metrics_proxy(make_proxy, lab, **kw):
    port = free_port()
    p = make_proxy(lab, metrics_listen="127.0.0.1:%d" % port, **kw)
    p.metrics_port = port
    return p


def test_metrics_during_workload(cluster1, make_proxy):
    p = metrics_proxy(make_proxy, cluster1, pool_mode="transaction", pool_size=3)
    before = scrape(p)
    assert val(before, "pgstay_info", version="0.1.0", pool_mode="transaction") == 1
    assert val(before, "pgstay_node_role", node="n1", role="primary") == 1
    assert val(before, "pgstay_node_role", node="n1", role="standby") == 0
    assert val(before, "pgstay_node_writer", node="n1") == 1
    assert val(before, "pgstay_node_state", node="n1", state="up") == 1
    assert val(before, "pgstay_node_timeline", node="n1") == 1
    assert val(before, "pgstay_failovers_total") == 0
    x0 = val(before, "pgstay_transactions_total", **POOL) or 0
    q0 = val(before, "pgstay_queries_total", **POOL) or 0
    scraped = []

    def scraper():
        # scrapes while the workload runs: the endpoint shares the proxy's loop
        while len(scraped) < 20:
            scraped.append(scrape(p))
            time.sleep(0.02)

    t = threading.Thread(target=scraper)
    t.start()
    with p.connect(prepare_threshold=None) as c:
        for _ in range(200):
            c.execute("select 1")
        with c.transaction():
            c.execute("select 1")
            c.execute("select pg_sleep(0.02)")
        held = p.connect()
        held.execute("begin")
        held.execute("select 1")
        mid = scrape(p)
        # an open transaction holds a server; its client is active
        assert val(mid, "pgstay_server_connections", state="active", **POOL) >= 1
        assert val(mid, "pgstay_client_connections", state="active", **POOL) >= 2
        held.execute("commit")
        held.close()
    t.join(20)
    assert len(scraped) == 20
    after = scrape(p)
    assert val(after, "pgstay_transactions_total", **POOL) - x0 == 200 + 1 + 1
    assert val(after, "pgstay_queries_total", **POOL) - q0 == 200 + 4 + 3
    assert val(after, "pgstay_client_received_bytes_total", **POOL) >= 200 * 14  # Q "select 1"
    assert val(after, "pgstay_client_sent_bytes_total", **POOL) > 200 * 20
    assert val(after, "pgstay_transaction_seconds_total", **POOL) >= 0.02
    assert val(after, "pgstay_query_duration_seconds_count", **POOL) >= 200
    assert val(after, "pgstay_query_duration_seconds_sum", **POOL) >= 0.02
    assert val(after, "pgstay_client_wait_seconds_count", **POOL) >= 1
    assert val(after, "pgstay_server_connections", state="idle", **POOL) >= 1
    check_histograms(after)
    # counters only go up from one scrape to the next
    for a, b in zip(scraped, scraped[1:]):
        for key, v in a.items():
            if key[0].endswith("_total") and key in b:
                assert b[key] >= v, key
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen("http://127.0.0.1:%d/other" % p.metrics_port, timeout=5)
    assert e.value.code == 404


def test_metrics_bad_listen(cluster1, make_proxy):
    p = make_proxy(cluster1, start=False, metrics_listen="no-port")
    with pytest.raises(RuntimeError, match="metrics_listen"):
        p.start()


@pytest.fixture
def cluster2():
    d = tempfile.mkdtemp(prefix="pgstay-metrics-")
    os.chmod(d, 0o755)
    lab = Lab(os.path.join(d, "lab"), nodes=2, port=free_port_base(), sync=False, auth="scram")
    lab.init()
    yield lab
    lab.destroy()
    shutil.rmtree(d, ignore_errors=True)


def test_metrics_after_failover(cluster2, make_proxy):
    p = metrics_proxy(make_proxy, cluster2, failover_timeout="20s", health_check_timeout="500ms")
    m = scrape(p)
    assert val(m, "pgstay_node_writer", node="n1") == 1
    assert val(m, "pgstay_node_role", node="n2", role="standby") == 1
    idle = p.connect()
    idle.execute("select 1")
    errors = []
    busy = p.connect()

    def in_flight():
        try:
            busy.execute("select pg_sleep(10)")
        except psycopg.Error as e:
            errors.append(e.sqlstate)

    t = threading.Thread(target=in_flight)
    t.start()
    time.sleep(0.5)
    cluster2.failover(delay_ms=500)
    t.join(15)
    assert errors == ["08006"], errors
    # the idle client's next statement runs on the new writer, no error
    assert idle.execute("select pg_is_in_recovery()").fetchone() == (False,)
    deadline = time.time() + 10
    while time.time() < deadline:
        m = scrape(p)
        if val(m, "pgstay_node_writer", node="n2") == 1:
            break
        time.sleep(0.1)
    assert val(m, "pgstay_failovers_total") == 1
    assert val(m, "pgstay_failover_in_progress") == 0
    assert val(m, "pgstay_failover_hold_seconds_count") == 1
    assert val(m, "pgstay_failover_hold_seconds_sum") >= 0.4
    assert val(m, "pgstay_failover_hold_seconds_bucket", le="0.1") == 0
    assert val(m, "pgstay_failover_hold_seconds_bucket", le="+Inf") == 1
    assert val(m, "pgstay_node_writer", node="n1") == 0
    assert val(m, "pgstay_node_writer", node="n2") == 1
    assert val(m, "pgstay_node_role", node="n2", role="primary") == 1
    assert val(m, "pgstay_node_role", node="n1", role="primary") == 0
    assert val(m, "pgstay_node_timeline", node="n2") == 2
    assert val(m, "pgstay_requests_failed_in_flight_total", sqlstate="08006") == 1
    assert val(m, "pgstay_clients_held") == 0
    check_histograms(m)
    # SHOW FAILOVERS has the same event (its failed_in_flight counts only what failed once the
    # event had begun: a crash is often seen first by the connection that fails)
    fo = p.admin_rows("SHOW FAILOVERS")
    assert len(fo) == 1 and fo[0]["old_writer"] == "n1" and fo[0]["new_writer"] == "n2"
    idle.close()
    busy.close()


PROMETHEUS = "/usr/bin/prometheus"


def prom_query(port, q):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": q}))
    with urllib.request.urlopen(url, timeout=5) as r:
        res = json.load(r)
    assert res["status"] == "success", res
    return [float(x["value"][1]) for x in res["data"]["result"]]


@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="prometheus missing")
def test_prometheus_server_sees_failover(cluster2, make_proxy, tmp_path):
    """Debian's Prometheus scraping pgstay every second through a lab failover."""
    p = metrics_proxy(make_proxy, cluster2, failover_timeout="20s", health_check_timeout="500ms")
    prom_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: pgstay\n    static_configs:\n"
        "      - targets: ['127.0.0.1:%d']\n" % p.metrics_port)
    log = open(str(tmp_path / "prometheus.log"), "wb")
    prom = subprocess.Popen([PROMETHEUS, "--config.file=%s" % (tmp_path / "prometheus.yml"),
                             "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                             "--web.listen-address=127.0.0.1:%d" % prom_port],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while not prom_query_ok(prom_port, "pgstay_failovers_total"):
            assert time.time() < deadline and prom.poll() is None, \
                open(str(tmp_path / "prometheus.log")).read()[-3000:]
            time.sleep(0.3)
        time.sleep(2)  # a few samples from before
        with p.connect() as c:
            c.execute("select 1")
            cluster2.failover(delay_ms=500)
            assert c.execute("select pg_is_in_recovery()").fetchone() == (False,)
        deadline = time.time() + 20
        while prom_query(prom_port, "pgstay_failovers_total") != [1.0]:
            assert time.time() < deadline
            time.sleep(0.3)
        time.sleep(2.5)
        inc = prom_query(prom_port, "increase(pgstay_failovers_total[1m])")
        assert len(inc) == 1 and 1.0 <= inc[0] < 1.5, inc
        assert prom_query(prom_port, "pgstay_failover_hold_seconds_count") == [1.0]
        assert prom_query(prom_port, "pgstay_failover_hold_seconds_sum")[0] >= 0.4
        q = prom_query(prom_port, "histogram_quantile(0.5, pgstay_failover_hold_seconds_bucket)")
        assert len(q) == 1 and 0.25 <= q[0] <= 5, q
        assert prom_query(prom_port, 'pgstay_node_writer{node="n2"}') == [1.0]
        assert prom_query(prom_port, 'up{job="pgstay"}') == [1.0]
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()


def prom_query_ok(port, q):
    try:
        return bool(prom_query(port, q))
    except (OSError, ValueError):
        return False


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_metrics_under_pgbench(cluster1, make_proxy, mode):
    """The counters move as pgbench says they should, and agree with SHOW STATS."""
    out = subprocess.run(["pgbench", "-i", "-s", "1", "-q", cluster1.dsn(1)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    p = metrics_proxy(make_proxy, cluster1, pool_mode="transaction", pool_size=4)
    before = scrape(p)
    x0 = val(before, "pgstay_transactions_total", **POOL) or 0
    q0 = val(before, "pgstay_queries_total", **POOL) or 0
    out = subprocess.run(["pgbench", "-n", "-S", "-M", mode, "-c", "8", "-j", "2", "-t", "100",
                          p.dsn()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    after = scrape(p)
    dx = val(after, "pgstay_transactions_total", **POOL) - x0
    dq = val(after, "pgstay_queries_total", **POOL) - q0
    # 800 transactions of one statement each, and what pgbench asks first (its scale; with
    # -M prepared, one Parse and Sync per client)
    assert 800 <= dx <= 800 + 16, (dx, out.stdout)
    assert dx <= dq <= dx + 16, (dq, dx)
    assert val(after, "pgstay_query_duration_seconds_count", **POOL) >= 800
    stats = [r for r in p.admin_rows("SHOW STATS") if r["database"] == "postgres"][0]
    assert int(stats["total_xact_count"]) == val(after, "pgstay_transactions_total", **POOL)
    assert int(stats["total_query_count"]) == val(after, "pgstay_queries_total", **POOL)
    assert int(stats["total_received"]) == \
        val(after, "pgstay_client_received_bytes_total", **POOL)


def psql_rows(p, sql):
    """An admin command through psql itself (-A -F '|'): rows as dicts by column name."""
    out = subprocess.run(["psql", "-X", "-A", "-F", "|", "-P", "footer=off", "-h", "127.0.0.1",
                          "-p", str(p.port), "-U", "postgres", "-d", "pgstay", "-c", sql],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    cols = lines[0].split("|")
    return [dict(zip(cols, ln.split("|"))) for ln in lines[1:]], out.stdout


def test_psql_shows_the_failover_and_metrics_agree(cluster2, make_proxy):
    """After a lab failover with a request held through it, psql's SHOW FAILOVERS has the event
    with its phases in order, SHOW NODES the new roles, and /metrics the same event."""
    p = metrics_proxy(make_proxy, cluster2, pool_mode="transaction", failover_timeout="20s",
                      health_check_timeout="500ms")
    c = p.connect()
    assert c.execute("select pg_is_in_recovery()").fetchone() == (False,)
    fo = threading.Thread(target=cluster2.failover, kwargs={"delay_ms": 1000})
    fo.start()
    deadline = time.time() + 15
    while not p.admin("SHOW FAILOVERS"):  # the writer is lost: the next request is held
        assert time.time() < deadline, p.log()[-3000:]
        time.sleep(0.02)
    t0 = time.time()
    assert c.execute("select pg_is_in_recovery()").fetchone() == (False,)
    assert time.time() - t0 > 0.3  # it waited for the promotion
    fo.join(30)
    rows, text = psql_rows(p, "SHOW FAILOVERS")
    print(text)
    assert len(rows) == 1, text
    ev = rows[0]
    assert ev["old_writer"] == "n1" and ev["new_writer"] == "n2", ev
    phases = [ev[k] for k in ("writer_lost", "hold_started", "new_writer_seen", "first_served",
                              "hold_ended")]
    assert all(phases), ev
    # (the hold may start a moment before the writer is declared lost: while it is suspect)
    assert max(ev["writer_lost"], ev["hold_started"]) <= ev["new_writer_seen"], ev
    assert ev["new_writer_seen"] <= ev["first_served"] and ev["new_writer_seen"] <= \
        ev["hold_ended"], ev
    assert int(ev["hold_ms"]) >= 500 and int(ev["clients_held"]) >= 1, ev
    assert ev["timed_out"] == "0", ev
    nodes, text = psql_rows(p, "SHOW NODES")
    print(text)
    nodes = {r["name"]: r for r in nodes}
    assert nodes["n2"]["role"] == "primary" and nodes["n2"]["writer"] == "yes", nodes
    assert nodes["n2"]["timeline"] == "2", nodes
    assert nodes["n1"]["writer"] == "no" and nodes["n1"]["role"] != "primary", nodes
    m = scrape(p)
    assert val(m, "pgstay_failovers_total") == 1
    assert val(m, "pgstay_failover_hold_seconds_count") == 1
    assert val(m, "pgstay_failover_hold_seconds_sum") * 1000 >= int(ev["hold_ms"]) - 1
    assert val(m, "pgstay_clients_held_total") >= 1
    assert val(m, "pgstay_node_writer", node="n2") == 1
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % p.metrics_port) as r:
        print("\n".join(ln for ln in r.read().decode().splitlines()
                        if ln.startswith(("pgstay_failover", "pgstay_clients_held",
                                          "pgstay_node_writer", "pgstay_node_role{node=\"n2\""))))
    c.close()
