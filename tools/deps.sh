#!/bin/sh
# Install from Debian's packages whatever pgstay's build, tests, demo and bench need; quick when all is present.
# clang and libclang-rt-14-dev: make fuzz (libFuzzer and the sanitizer runtimes ship in the latter;
# Debian's separate libfuzzer-14-dev is the standalone library, not needed with -fsanitize=fuzzer).
# libcurl4-openssl-dev, libjson-c-dev: topology_source = patroni (src/topology/patroni.c); patroni,
# etcd-server, etcd-client: tools/patroni-lab, for tests/e2e/test_patroni.py and make demo-patroni.
# strace, linux-perf, valgrind: make bench's syscall counts, bench/profile.py and bench/callgrind.py.
set -e
PKGS="build-essential pkg-config libevent-dev libssl-dev libpq-dev postgresql postgresql-15 postgresql-client-15 \
libcmocka-dev libidn-dev libsystemd-dev libpg-query-dev libprotobuf-c-dev openssl python3-pytest python3-psycopg python3-asyncpg pgbouncer iptables iproute2 procps util-linux \
default-jdk-headless libpostgresql-jdbc-java prometheus-pgbouncer-exporter python3-prometheus-client prometheus \
clang libclang-rt-14-dev \
libcurl4-openssl-dev libjson-c-dev patroni etcd-server etcd-client \
strace linux-perf valgrind"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
# Debian starts a default cluster, pgbouncer, its exporter and Prometheus on install; the tests
# run their own.
for svc in postgresql pgbouncer prometheus-pgbouncer-exporter prometheus patroni etcd; do
    $SUDO systemctl stop "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
exit 0
