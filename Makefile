# pgstay build: the proxy, the lab, the bench and the tests, with pkg-config.
#
#   make          build/pgstay, build/pgstay-lab, build/pgstay-bench
#   make asan     the same under AddressSanitizer + UBSan, in build-asan/
#   make check    layer check, install deps, build, run unit and end-to-end tests
#   make demo     install deps, build, run the failover experiment
#   make bench    throughput and memory side by side with PgBouncer

BUILD    ?= build
CC       ?= cc
PYTHON   ?= /usr/bin/python3
OPT      ?= -O2
SANITIZE ?=

PKG_PROXY := libevent openssl libidn
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

BINS := $(BUILD)/pgstay $(BUILD)/pgstay-lab $(BUILD)/pgstay-bench

.PHONY: all asan deps check check-layers check-unit check-e2e asan-check demo demo-quick bench format clean
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

$(BUILD)/tests/%: tests/unit/%.c $(OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(PROXY_CFLAGS) -o $@ $< $(OBJ) $(LDFLAGS_ALL) $(PROXY_LIBS) $(SQL_LIBS) -lcmocka

asan:
	$(MAKE) BUILD=build-asan OPT=-O1 SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all unit-bins

.PHONY: unit-bins
unit-bins: $(UNIT_BIN)

deps:
	@sh tools/deps.sh

check-unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

check-e2e: all
	PGSTAY_BUILD=$(BUILD) $(PYTHON) -m pytest -q tests/e2e $(PYTEST_ARGS)

# No #include may run against the layer order written in tools/layers.py (issue 16).
check-layers:
	$(PYTHON) tools/layers.py

check: check-layers deps
	$(MAKE) all
	$(MAKE) check-unit
	$(MAKE) check-e2e

# The whole suite again with sanitizers (CI runs this after `make check`).
# verify_asan_link_order=0: pgstay-bench runs the lab under stdbuf, which preloads a library.
asan-check: deps
	$(MAKE) asan
	ASAN_OPTIONS=verify_asan_link_order=0:quarantine_size_mb=4:detect_leaks=1 \
	$(MAKE) BUILD=build-asan OPT=-O1 SANITIZE="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" check-unit check-e2e

demo: deps
	$(MAKE) all
	$(PYTHON) tools/demo.py $(DEMO_ARGS)

demo-quick: deps
	$(MAKE) all
	$(PYTHON) tools/demo.py --quick

bench: deps
	$(MAKE) all
	$(PYTHON) bench/run.py

format:
	clang-format -i $(SRC) $(MAIN_SRC) $(wildcard src/*/*.h) $(LAB_SRC) $(BENCH_SRC) $(UNIT_SRC)

clean:
	rm -rf build build-asan
