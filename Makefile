# pgstay build: the proxy, the lab, the bench and the tests, with pkg-config.
#
#   make          build/pgstay, build/pgstay-lab, build/pgstay-bench
#   make asan     the same under AddressSanitizer + UBSan, in build-asan/
#   make tsan     build under ThreadSanitizer in build-tsan/, run unit and e2e tests on 4 workers
#   make check    layer check, install deps, build, run unit and end-to-end tests
#   make demo     install deps, build, run the failover experiment
#   make demo-patroni  the same experiment against a Patroni cluster (tools/patroni-lab)
#   make bench    throughput and memory side by side with PgBouncer
#   make fuzz     each libFuzzer target for FUZZ_SECONDS (clang, ASan + UBSan), in build-fuzz/

BUILD    ?= build
CC       ?= cc
PYTHON   ?= /usr/bin/python3
OPT      ?= -O2
SANITIZE ?=

PKG_PROXY := libevent libevent_pthreads openssl libidn libsystemd libcurl json-c
PKG_TOOLS := libpq

CFLAGS_ALL := -std=gnu11 $(OPT) -g -Wall -Wextra -Werror -Wno-unused-parameter \
	-Wshadow -Wformat=2 -Wno-format-truncation -Wvla -D_GNU_SOURCE -Isrc $(SANITIZE) $(CFLAGS)
LDFLAGS_ALL := $(SANITIZE) $(LDFLAGS)

PROXY_CFLAGS = $(shell pkg-config --cflags $(PKG_PROXY) 2>/dev/null)
PROXY_LIBS   = $(shell pkg-config --libs $(PKG_PROXY) 2>/dev/null)
TOOLS_CFLAGS = $(shell pkg-config --cflags $(PKG_TOOLS) 2>/dev/null) -I$(shell pg_config --includedir 2>/dev/null)
TOOLS_LIBS   = $(shell pkg-config --libs $(PKG_TOOLS) 2>/dev/null) -lm
# libpg_query (PostgreSQL's parser, proto/sqlclass.c); it carries the protobuf-c runtime too.
SQL_LIBS     = -lpg_query

SRC      := $(sort $(wildcard src/*/*.c))
MAIN_SRC := src/main.c
OBJ      := $(patsubst %.c,$(BUILD)/obj/%.o,$(SRC))
MAIN_OBJ := $(BUILD)/obj/src/main.o
LAB_SRC   := $(sort $(wildcard tools/lab/*.c))
BENCH_SRC := $(sort $(wildcard tools/bench/*.c))
LAB_OBJ   := $(patsubst %.c,$(BUILD)/obj/%.o,$(LAB_SRC))
BENCH_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(BENCH_SRC))
UNIT_SRC  := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
# The in-process worker and fake PostgreSQL server shared by unit tests and fuzz targets.
HARNESS_SRC := $(sort $(wildcard tests/harness/*.c))
HARNESS_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(HARNESS_SRC))
# Fuzz targets (doc/fuzzing.md): tests/fuzz/fuzz_*.c, with their shared client side (fuzz.c).
FUZZ_TARGETS := $(patsubst tests/fuzz/%.c,%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_COMMON  := $(BUILD)/obj/tests/fuzz/fuzz.o
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 300
# Event-loop threads of every pgstay the e2e suite starts (a test may choose its own): 4 in
# `make check` and `make tsan`; `make asan-check` runs the suite on 1, so CI runs it on both.
PGSTAY_WORKERS ?= 4
TSAN_SANITIZE := -fsanitize=thread -fno-omit-frame-pointer
# Any report fails the run: pgstay exits with 66 at the first one, which the e2e harness sees
# in its log at teardown (conftest.py); tools/tsan.supp only for uninstrumented libraries.
TSAN_OPTIONS_ALL := halt_on_error=1:abort_on_error=0:exitcode=66:second_deadlock_stack=1:history_size=4:suppressions=$(CURDIR)/tools/tsan.supp
FUZZ_SANITIZE := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined

BINS := $(BUILD)/pgstay $(BUILD)/pgstay-lab $(BUILD)/pgstay-bench

.PHONY: all asan tsan deps check check-layers check-docs man check-unit check-e2e asan-check demo demo-quick demo-patroni bench format clean \
	fuzz fuzz-bins check-fuzz-corpus
all: $(BINS)

$(BUILD)/obj/src/%.o: src/%.c $(wildcard src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(PROXY_CFLAGS) -c $< -o $@

$(BUILD)/obj/tools/%.o: tools/%.c $(wildcard tools/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(TOOLS_CFLAGS) -c $< -o $@

$(BUILD)/pgstay: $(OBJ) $(MAIN_OBJ)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PROXY_LIBS) $(SQL_LIBS)

$(BUILD)/pgstay-lab: $(LAB_OBJ)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(TOOLS_LIBS)

$(BUILD)/pgstay-bench: $(BENCH_OBJ)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(TOOLS_LIBS)

$(BUILD)/obj/tests/harness/%.o: tests/harness/%.c tests/harness/%.h $(wildcard src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(PROXY_CFLAGS) -c $< -o $@

$(BUILD)/tests/%: tests/unit/%.c $(OBJ) $(HARNESS_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(PROXY_CFLAGS) -o $@ $< $(OBJ) $(HARNESS_OBJ) $(LDFLAGS_ALL) $(PROXY_LIBS) $(SQL_LIBS) -lcmocka

$(BUILD)/obj/tests/fuzz/%.o: tests/fuzz/%.c tests/fuzz/fuzz.h tests/harness/pgfake.h $(wildcard src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(PROXY_CFLAGS) -c $< -o $@

# libFuzzer binaries (make them through `make fuzz`, which sets clang and the sanitizers).
$(BUILD)/fuzz/%: $(BUILD)/obj/tests/fuzz/%.o $(FUZZ_COMMON) $(OBJ) $(HARNESS_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -fsanitize=fuzzer -o $@ $^ $(PROXY_LIBS) $(SQL_LIBS)

# The same targets with a plain main that replays files: the checked-in corpus and crash
# regressions run in `make check` with the ordinary compiler (and under ASan in asan-check).
$(BUILD)/fuzz-replay/%: $(BUILD)/obj/tests/fuzz/%.o $(BUILD)/obj/tests/fuzz/replay.o $(FUZZ_COMMON) $(OBJ) $(HARNESS_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PROXY_LIBS) $(SQL_LIBS)

fuzz-bins: $(patsubst %,$(BUILD)/fuzz/%,$(FUZZ_TARGETS))

# Each target FUZZ_SECONDS, from the checked-in seeds plus what earlier runs found (kept in
# $(FUZZ_BUILD)/corpus/); a crash leaves $(FUZZ_BUILD)/crash-<target>-* and fails the run.
fuzz: deps
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang OPT=-O1 SANITIZE="$(FUZZ_SANITIZE)" \
	    CFLAGS="-Wno-unknown-warning-option $(CFLAGS)" fuzz-bins
	@set -e; for t in $(FUZZ_TARGETS); do \
	    echo "== $$t: $(FUZZ_SECONDS) s"; \
	    mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
	    $(FUZZ_BUILD)/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	        -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/crash-$$t- \
	        $$( [ -f tests/fuzz/$$t.dict ] && echo -dict=tests/fuzz/$$t.dict ) \
	        $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t $(FUZZ_ARGS) 2>$(FUZZ_BUILD)/$$t.log \
	        || { tail -60 $(FUZZ_BUILD)/$$t.log; exit 1; }; \
	    grep -E "^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)|cov: .*DONE|DONE" $(FUZZ_BUILD)/$$t.log | tail -4; \
	done

check-fuzz-corpus: $(patsubst %,$(BUILD)/fuzz-replay/%,$(FUZZ_TARGETS))
	@set -e; for t in $(FUZZ_TARGETS); do \
	    echo "== $$t: replaying tests/fuzz/corpus/$$t tests/fuzz/regress/$$t"; \
	    $(BUILD)/fuzz-replay/$$t tests/fuzz/corpus/$$t tests/fuzz/regress/$$t; \
	done

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all unit-bins

.PHONY: unit-bins
unit-bins: $(UNIT_BIN)

deps:
	@sh tools/deps.sh

check-unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done
	$(MAKE) check-fuzz-corpus

check-e2e: all
	PGSTAY_BUILD=$(BUILD) PGSTAY_WORKERS=$(PGSTAY_WORKERS) $(PYTHON) -m pytest -q tests/e2e $(PYTEST_ARGS)

# No #include may run against the layer order written in tools/layers.py (issue 16).
check-layers:
	$(PYTHON) tools/layers.py

# Every key of src/config/config.c documented in doc/config.md, and doc/pgstay.ini.5 generated
# from it (`make man` writes it again); doc/pgstay.1 names every option of pgstay's usage.
check-docs:
	$(PYTHON) tools/manpages.py --check

man:
	$(PYTHON) tools/manpages.py

check: check-layers check-docs deps
	$(MAKE) all
	$(MAKE) check-unit
	$(MAKE) check-e2e

# The whole suite again with sanitizers (CI runs this after `make check`).
# verify_asan_link_order=0: pgstay-bench runs the lab under stdbuf, which preloads a library.
asan-check: deps
	$(MAKE) asan
	ASAN_OPTIONS=verify_asan_link_order=0:quarantine_size_mb=4:detect_leaks=1 \
	$(MAKE) BUILD=build-asan OPT=-O1 SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    PGSTAY_WORKERS=1 check-unit check-e2e

# The whole suite under ThreadSanitizer on 4 event loops per pgstay (issue 14; CI runs it
# after asan-check). TSan's own slowness is allowed for where a test bounds a wait: tests
# scale those when PGSTAY_BUILD names a tsan build.
tsan: deps
	$(MAKE) BUILD=build-tsan OPT=-O1 SANITIZE="$(TSAN_SANITIZE)" all unit-bins
	TSAN_OPTIONS="$(TSAN_OPTIONS_ALL)" \
	$(MAKE) BUILD=build-tsan OPT=-O1 SANITIZE="$(TSAN_SANITIZE)" PGSTAY_WORKERS=4 check-unit check-e2e

demo: deps
	$(MAKE) all
	$(PYTHON) tools/demo.py $(DEMO_ARGS)

# The experiment with topology_source = patroni, against tools/patroni-lab (issue 15).
demo-patroni: deps
	$(MAKE) all
	$(PYTHON) tools/demo_patroni.py $(DEMO_ARGS)

demo-quick: deps
	$(MAKE) all
	$(PYTHON) tools/demo.py --quick

bench: deps
	$(MAKE) all
	$(PYTHON) bench/run.py

format:
	clang-format -i $(SRC) $(MAIN_SRC) $(wildcard src/*/*.h) $(LAB_SRC) $(BENCH_SRC) $(UNIT_SRC) \
	    $(wildcard tests/harness/*.[ch] tests/fuzz/*.[ch])

clean:
	rm -rf build build-asan build-tsan build-fuzz
