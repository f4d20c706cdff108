# luasip: Lua 5.4 bindings to libre (Debian 12: libre-dev 1.1.0)
#
# Options (set them on the command line: make PREFIX=/usr CFLAGS=-O0):
#   CC, CFLAGS, LDFLAGS  compiler, tunable flags (required ones are added)
#   LIBFLAG              extra flags for linking core.so (LuaRocks passes it)
#   LUA_INCDIR           directory holding lua.h
#   PREFIX               install prefix (/usr/local)
#   LUA_LIBDIR           where luasip/core.so is installed (LuaRocks: LIBDIR)
#   LUA_SHAREDIR         where luasip/*.lua are installed (LuaRocks: LUADIR)
#   LIBRE_LIBDIR         directory with Debian's PIC libre.a (LIBREM_LIBDIR:
#                        librem.a); PKG_CFLAGS: -I flags for re/, rem/, srtp2
#   BUILD                build directory (build; test-asan uses build-asan)
#   BUSTED_ARGS          extra busted arguments: make test BUSTED_ARGS=-v
#
# Note on LUA_LIBDIR: here it names the C module directory, not the place
# of liblua; a Lua C module on Linux never links liblua.
#
# Why the static archives: core.so links Debian's PIC libre.a and librem.a
# (checked: no R_X86_64_32 relocations) so that csrc/tmr.c replaces libre's
# O(n) timer list (see shared/NOTES-libre.md). The linker takes an archive
# member only for undefined symbols, and our objects come first, so libre's
# tmr.o is never pulled in as long as csrc/tmr.c defines every tmr_*
# symbol that libre.a and librem.a use (tmr_init, tmr_start, tmr_cancel,
# tmr_get_expire, tmr_jiffies, tmr_poll, tmr_next_timeout); calling
# tmr_debug or tmr_status would pull tmr.o and fail with duplicates.
# csrc/auth.c replaces libre's sip/auth.o the same way (sip_auth_alloc,
# sip_auth_authenticate, sip_auth_encode, sip_auth_reset) to add SHA-256
# digest; csrc/rand.c replaces sys/rand.o (rand_*: RAND_bytes drawn
# 4 KB at a time), csrc/regex.c fmt/regex.o (re_regex compiled once
# per expression) and csrc/param.c msg/param.o (msg_param_decode and
# msg_param_exists without printing an expression); check with -Wl,-Map
# that no such member is pulled in.
# -Wl,--wrap=sip_dialog_update: csrc/proxy.c stops sipsess from following
# a 3xx to its first Contact by itself (ep:call's follow_redirects does).
# -Wl,--wrap=sip_treply,sip_treplyf: csrc/done.c ends the transaction of
# a final answer libre sends without a transaction pointer (sipsess's 200
# to a BYE) at once and keeps only the response bytes for retransmissions.
# -Wl,--wrap=uri_decode,sip_addr_decode,sip_via_decode: csrc/fastparse.c
# decodes URIs, SIP addresses and Vias of the plain shape in one pass,
# libre's function the rest.
# -Wl,--wrap=sip_msg_decode,udp_listen,tcp_listen,tcp_accept: csrc/badstart.c
# answers requests with a bad start line or version (400/505), which
# libre's parser drops; libre hands out neither its SIP sockets nor its
# connections.
# -Wl,--wrap=epoll_wait: csrc/loop.c caps the events one poll of libre's
# loop handles, so due timers (RTP sends) are not held up behind
# thousands of ready sockets.
# librem is static too: librem.so would drag in a second, dynamic libre.
# --exclude-libs,ALL keeps libre's symbols out of core.so's dynamic table,
# so another libre in the process cannot interpose or clash.
# luasip-scm-1.rockspec builds through this Makefile (build.type "make").

# make's built-in default CC is "cc"; prefer gcc unless CC was given.
ifeq ($(origin CC),default)
CC		= gcc
endif
CFLAGS		?= -O2 -g -Wall -Wextra
LDFLAGS		?=
LIBFLAG		?=
LUA		?= lua5.4
LUAC		?= luac5.4
BUSTED		?= busted
PKG_CONFIG	?= pkg-config
LUA_INCDIR	?= /usr/include/lua5.4
PREFIX		?= /usr/local
# Debian's lua5.4 searches /usr/local/lib/lua/5.4 but not the multiarch
# /usr/local/lib/x86_64-linux-gnu/lua/5.4 that lua5.4.pc would give for
# /usr/local; with PREFIX=/usr take INSTALL_CMOD from lua5.4.pc.
ifeq ($(PREFIX),/usr)
LUA_LIBDIR	?= $(shell $(PKG_CONFIG) --variable=INSTALL_CMOD lua5.4)
endif
LUA_LIBDIR	?= $(PREFIX)/lib/lua/5.4
LUA_SHAREDIR	?= $(PREFIX)/share/lua/5.4
LIBRE_LIBDIR	?= $(shell $(PKG_CONFIG) --variable=libdir libre)
LIBREM_LIBDIR	?= $(shell $(PKG_CONFIG) --variable=libdir librem)
PKG_CFLAGS	?= $(shell $(PKG_CONFIG) --cflags libre librem libsrtp2)
LIBS		?= -lsrtp2 -lssl -lcrypto -lz -lpthread -ldl -lm
BUILD		?= build
BADSTART_WRAPS	= -Wl,--wrap=sip_msg_decode -Wl,--wrap=udp_listen \
		  -Wl,--wrap=tcp_listen -Wl,--wrap=tcp_accept
BUSTED_ARGS	?=

# Required flags, not meant to be overridden. The defines are how Debian
# built libre 1.1.0 (re_types.h needs the first two; libre.a calls
# zlib's crc32 and OpenSSL's SHA1, hence USE_ZLIB and USE_OPENSSL).
LSIP_DEFINES	= -DHAVE_INTTYPES_H -DHAVE_STDBOOL_H -DHAVE_INET6 \
		  -DUSE_OPENSSL -DUSE_ZLIB -DHAVE_PTHREAD
LSIP_CFLAGS	= -fPIC -fvisibility=hidden -std=gnu99 $(LSIP_DEFINES) \
		  $(PKG_CFLAGS) -I$(LUA_INCDIR)

SRCS		:= $(wildcard csrc/*.c)
HDRS		:= $(wildcard csrc/*.h)
OBJS		= $(SRCS:csrc/%.c=$(BUILD)/obj/%.o)
CORE		= $(BUILD)/luasip/core.so
STATIC_LIBS	= $(LIBREM_LIBDIR)/librem.a $(LIBRE_LIBDIR)/libre.a
LUA_FILES	= $(shell find lua/luasip -name '*.lua' 2>/dev/null)
ASAN_FLAGS	= -fsanitize=address -fno-omit-frame-pointer
LIBASAN		= $(shell $(CC) -print-file-name=libasan.so)
ASAN_OPTIONS	?= detect_leaks=1

.PHONY: all test test-asan check demo install clean bench deps prompts difftest

all: $(CORE)

$(BUILD)/obj/%.o: csrc/%.c $(HDRS) Makefile
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LSIP_CFLAGS) -c -o $@ $<

$(CORE): $(OBJS) $(STATIC_LIBS)
	@mkdir -p $(@D)
	$(CC) -shared $(LIBFLAG) $(LDFLAGS) -o $@ $(OBJS) $(STATIC_LIBS) \
		$(LIBS) -Wl,--exclude-libs,ALL -Wl,--wrap=sip_dialog_update \
		-Wl,--wrap=sip_treply -Wl,--wrap=sip_treplyf \
		-Wl,--wrap=uri_decode -Wl,--wrap=sip_addr_decode \
		-Wl,--wrap=sip_via_decode -Wl,--wrap=epoll_wait \
		$(BADSTART_WRAPS)

$(STATIC_LIBS):
	@echo "$@ not found: run 'sh .ci/deps' (libre-dev, librem-dev)" >&2
	@exit 1

# .busted sets lpath, cpath (build/?.so), ROOT spec/ and excludes #slow.
# busted re-runs itself under --lua with its arguments joined by spaces,
# unquoted: BUSTED_ARGS values must not contain spaces.
test: all prompts difftest
	$(BUSTED) --lua=$(LUA) $(BUSTED_ARGS)

# Differential tests of the libre replacements (tools/difftest/): our
# csrc/X.c with its symbols renamed, against Debian's libre.so, on
# mutated real SIP values and random input; exit 1 on any difference.
DIFFTESTS	= regex fastparse msgdec
difftest: $(DIFFTESTS:%=$(BUILD)/difftest/%_diff)
	@set -e; for t in $^; do echo "$$t"; $$t; done

$(BUILD)/difftest/regex_diff: tools/difftest/regex_diff.c tools/difftest/difftest.h \
		csrc/regex.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LSIP_CFLAGS) -fvisibility=default \
		-Dre_regex=lsip_re_regex -c -o $@.o csrc/regex.c
	$(CC) $(CFLAGS) $(LSIP_CFLAGS) -o $@ $< $@.o -lre

$(BUILD)/difftest/msgdec_diff: tools/difftest/msgdec_diff.c tools/difftest/difftest.h \
		csrc/msgdec.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LSIP_CFLAGS) -fvisibility=default \
		-c -o $@.o csrc/msgdec.c
	$(CC) $(CFLAGS) $(LSIP_CFLAGS) -o $@ $< $@.o -lre

$(BUILD)/difftest/fastparse_diff: tools/difftest/fastparse_diff.c \
		tools/difftest/difftest.h csrc/fastparse.c $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LSIP_CFLAGS) -fvisibility=default \
		-D__real_uri_decode=uri_decode \
		-D__real_sip_addr_decode=sip_addr_decode \
		-D__wrap_uri_decode=lsip_uri_decode \
		-D__wrap_sip_addr_decode=lsip_sip_addr_decode \
		-D__real_sip_via_decode=sip_via_decode \
		-D__wrap_sip_via_decode=lsip_sip_via_decode \
		-c -o $@.o csrc/fastparse.c
	$(CC) $(CFLAGS) $(LSIP_CFLAGS) -o $@ $< $@.o -lre

# Sanitized build in build-asan/; the uninstrumented lua5.4 needs libasan
# preloaded, and child lua5.4 processes load build-asan/ too (spec h.ENV).
# The prompts are made first: espeak-ng and sox do not run with libasan
# preloaded. Specs tagged #noasan are skipped (see each for why).
test-asan: prompts
	$(MAKE) BUILD=build-asan CFLAGS="$(CFLAGS) $(ASAN_FLAGS)" \
		LDFLAGS="$(LDFLAGS) -fsanitize=address" all
	ASAN_OPTIONS=$(ASAN_OPTIONS) LD_PRELOAD=$(LIBASAN) \
		$(BUSTED) --lua=$(LUA) --cpath='build-asan/?.so' \
		--exclude-tags=slow,noasan $(BUSTED_ARGS)

# csrc/ccheck.py is baresip's style checker, when the project has it.
# luac5.4 gets one file at a time: Debian's 5.4.4 `luac -p a.lua b.lua`
# aborts with a double free.
check:
	@set -e; if [ -f csrc/ccheck.py ]; then \
		echo "python3 csrc/ccheck.py $(SRCS) $(HDRS)"; \
		python3 csrc/ccheck.py $(SRCS) $(HDRS); fi
	$(CC) $(CFLAGS) $(LSIP_CFLAGS) -fsyntax-only $(SRCS)
	find lua spec examples bench -name '*.lua' 2>/dev/null \
		| xargs -r -n 1 $(LUAC) -p

demo: all prompts
	LUA_PATH_5_4='lua/?.lua;lua/?/init.lua;;' \
	LUA_CPATH_5_4='$(BUILD)/?.so;;' $(LUA) examples/demo.lua

# The IVR's spoken prompts (examples/ivr.lua), synthesized with espeak-ng
# and resampled to 8 kHz with sox: generated, never kept in the repository.
prompts: $(BUILD)/prompts/menu.wav

$(BUILD)/prompts/menu.wav: tools/prompts.sh
	sh tools/prompts.sh $(BUILD)/prompts

install: all
	install -d $(DESTDIR)$(LUA_LIBDIR)/luasip
	install -m 755 $(CORE) $(DESTDIR)$(LUA_LIBDIR)/luasip/core.so
	@set -e; for f in $(LUA_FILES); do \
		d=$(DESTDIR)$(LUA_SHAREDIR)/$${f#lua/}; \
		echo "install -m 644 $$f $$d"; \
		install -d "$${d%/*}"; install -m 644 "$$f" "$$d"; done

clean:
	rm -rf build build-asan

bench: all
	bash bench/run.sh

deps:
	sh .ci/deps
