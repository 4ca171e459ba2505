#!/usr/bin/env bash
# unit.sh [PACKAGES...]: the unit tier (`make unit`): go test -short over
# PACKAGES (default ./...), with proof that it boots no VM.
#
# Every VMM binary is found on PATH by name (the driver table's Binary,
# qemu.DefaultPath): a trap directory first on PATH plays each
# qemu-system-* binary. Started, it records who started it and kills that
# process (the test binary, which then fails, so that no test result that
# started QEMU is ever cached as a pass), and the run fails. Only the
# queries that boot nothing (--version, -machine help, ..., as `cocoon
# check` asks) reach the real binary.
#
# The run fails too if a process it started is still alive after it
# (every process of the run carries COCOON_UNIT_RUN in its environment,
# daemons included), which also catches a VMM started by absolute path.
#
# The trap lives in bin/unit-trap and is rewritten only when it changes,
# so that go test's cache (keyed on PATH and the files tests stat) keeps
# working between runs.
set -uo pipefail
GO=${GO:-go}
[ $# -gt 0 ] || set -- ./...
root=$(cd "$(dirname "$0")/.." && pwd)
trapdir=$root/bin/unit-trap
mkdir -p "$trapdir"
rm -f "$trapdir/started"

names=$( (echo qemu-system-x86_64 qemu-system-aarch64; compgen -c qemu-system- 2>/dev/null) | tr ' ' '\n' | sort -u)
for q in $names; do
	real=$(command -v "$q" || echo /nonexistent/"$q")
	cat >"$trapdir/.$q" <<EOF
#!/bin/sh
case "\$*" in
--version | -version | "-machine help" | "-accel help" | "-cpu help" | "-device help") exec "$real" "\$@" ;;
esac
echo "$q \$(echo "\$*" | cut -c1-160)...  (started by \$PPID: \$(tr '\\0' ' ' </proc/\$PPID/cmdline | cut -c1-160))" >>"$trapdir/started"
echo "$q: the unit tier (go test -short) must not boot a VM" >&2
kill -QUIT \$PPID
exit 97
EOF
	chmod +x "$trapdir/.$q"
	if cmp -s "$trapdir/.$q" "$trapdir/$q"; then
		rm "$trapdir/.$q"
	else
		mv "$trapdir/.$q" "$trapdir/$q"
	fi
done

PATH=$trapdir:$PATH COCOON_UNIT_RUN=$trapdir "$GO" test -short "$@"
rc=$?

if [ -s "$trapdir/started" ]; then
	echo "FAIL: go test -short started a VMM:" >&2
	cat "$trapdir/started" >&2
	rc=1
fi
# Processes of the run still alive (a moment for the last to be reaped).
left=
for _ in $(seq 50); do
	left=$(grep -lsz "^COCOON_UNIT_RUN=$trapdir\$" /proc/[0-9]*/environ | cut -d/ -f3 || true)
	[ -z "$left" ] && break
	sleep 0.1
done
if [ -n "$left" ]; then
	echo "FAIL: processes of go test -short left running:" >&2
	for pid in $left; do
		echo "  $pid: $(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null)" >&2
	done
	rc=1
fi
exit $rc
