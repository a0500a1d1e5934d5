#!/bin/sh
# The kernel matrix: the integration tests inside qemu guests booted on
# Debian's kernels, once per hook mode each kernel allows, each run
# asserting the mode every stage actually ran in. Then a negative control:
# a deliberately detached stage must make a guest run fail.
# Usage: scripts/vmtest.sh            (6.1, 6.12 and the newest backports kernel)
#        VMTEST_KERNELS=6.1 scripts/vmtest.sh   (one kernel)
set -eu
cd "$(dirname "$0")/.."
./scripts/install-deps.sh vm
kernels=$(./scripts/vmkernels.sh)
export CGO_ENABLED=0 LISTENWATCH_TEST_TIME_SLACK=20 LISTENWATCH_TEST_FLOOD=5
log=.cache/vmtest/logs
mkdir -p "$log"
failed=0
summary=""

# failed_tests LOG: the output of every top-level test that failed (go
# test -v streams a test's log lines between its "=== RUN" and its
# result), and a panic or build failure with what follows it.
failed_tests() {
	awk '
	/^=== RUN   [^\/]+$/ { buf = ""; n = 0 }
	{ if (n < 400) { buf = buf $0 "\n"; n++ } }
	/^--- FAIL: / { printf "%s", buf; buf = ""; n = 0 }
	/^--- (PASS|SKIP): / { buf = ""; n = 0 }
	/^bpf program runs skipped/ { print }
	/^(panic:|# |FAIL\t)/ { tail = 1 }
	tail { print }
	' "$1"
}

# run NAME KDIR MODE EXPECT [DISABLE] [RUN-REGEXP] [CPUS]
run() {
	name=$1 kdir=$2 mode=$3 expect=$4 disable=${5:-} only=${6:-.} cpus=${7:-1}
	smp=""
	[ "$cpus" = 1 ] || smp="-smp$cpus"
	out="$log/$name-$mode${disable:+-no-$disable}$smp.log"
	echo "== kernel $name ($(basename "$kdir")), hook mode $mode${disable:+, stage $disable disabled}${smp:+, $cpus vCPUs}" >&2
	status=0
	arch=amd64
	case $name in arm64-*) arch=arm64 ;; esac
	GOARCH=$arch VMTEST_ARCH=$arch VMTEST_KERNEL=$kdir LISTENWATCH_TEST_HOOK_MODE=$mode LISTENWATCH_TEST_EXPECT=$expect \
		LISTENWATCH_TEST_DISABLE_STAGE=$disable VMTEST_SMP=$cpus \
		go test -exec "$PWD/scripts/vmexec" -count=1 -p 1 -v -timeout 30m -run "$only" ./integration/ > "$out" 2>&1 || status=$?
	rel=$(sed -n 's/^guest kernel: //p' "$out" | head -1)
	modes=$(sed -n 's/.*kernel modes: //p' "$out" | head -1)
	pass=$(grep -c '^--- PASS' "$out" || true)
	skip=$(grep -c '^--- SKIP' "$out" || true)
	fail=$(grep -c '^--- FAIL' "$out" || true)
	line="$(printf '%-28s %-10s %s | pass %s skip %s fail %s | exit %s' "${rel:-?}" "$mode${disable:+ -$disable}$smp" "$modes" "$pass" "$skip" "$fail" "$status")"
	echo "$line" >&2
	summary="$summary$line
"
	if [ "$status" != 0 ] && [ -z "${expect_failure:-}" ]; then
		# CI keeps only what is printed: say which test failed and why
		# (its t.Error lines), not only that the run did.
		echo "-- failed tests in $out:" >&2
		failed_tests "$out" | tail -n 120 >&2

	fi
	return "$status"
}

set -- $kernels
while [ $# -ge 3 ]; do
	name=$1 kdir=$3
	shift 3
	case $name in
	6.1)
		# fexit on tcp_v{4,6}_syn_recv_sock does not attach on 6.1: kprobe.
		# kfree_skb has no rx_sk before 6.11: ACK-time overflows are
		# counted by the handshake programs instead.
		run "$name" "$kdir" auto "drops=none,syn=fentry,handshake=kprobe,accept=fentry,accept_errors=fentry" || failed=1
		run "$name" "$kdir" kprobe "drops=none,syn=kprobe,handshake=kprobe,accept=kprobe,accept_errors=kprobe" || failed=1
		# The guests have one CPU; what needs several runs here with four:
		# two copies of one final ACK overflowing at once on two CPUs (the
		# ACK-overflow claims of the handshake programs), and packets
		# handled from idle on three CPUs at once (kprobe entry and return
		# probes meeting by CPU). kprobe mode: auto here hooks the
		# handshake with the same kprobes.
		run "$name" "$kdir" kprobe "drops=none,syn=kprobe,handshake=kprobe" "" "TestHookModes|TestDuplicateFinalACKs|TestPacketsOnIdleCPUs" 4 || failed=1
		# consume_skb has no location before 6.3: no SYN stage in
		# tracepoint mode; tests needing it skip, saying so.
		run "$name" "$kdir" tracepoint "drops=none,syn=none,handshake=tracepoint,accept=tracepoint,accept_errors=tracepoint" syn || failed=1
		;;
	arm64-6.1)
		# arm64 before 6.5 has no direct-call ftrace: fentry programs load
		# but cannot attach, so auto falls back to kprobes everywhere.
		run "$name" "$kdir" auto "drops=none,syn=kprobe,handshake=kprobe,accept=kprobe,accept_errors=kprobe" || failed=1
		;;
	*)
		run "$name" "$kdir" auto "drops=tracepoint,syn=fentry,handshake=fentry,accept=fentry,accept_errors=fentry" || failed=1
		run "$name" "$kdir" tracepoint "drops=tracepoint,syn=tracepoint,handshake=tracepoint,accept=tracepoint,accept_errors=tracepoint" || failed=1
		;;
	esac
	if [ -z "${control_done:-}" ]; then
		# Negative control: the accept stage detached in auto mode must
		# fail the run (TestHookModes), through the wrapper.
		control_done=1
		expect_failure=1
		if run "$name" "$kdir" auto "accept=fentry" accept "TestHookModes|TestExactCounts"; then
			echo "vmtest: a detached stage did not fail the guest run: the wrapper swallows failures" >&2
			failed=1
		else
			summary="${summary}negative control: detached accept stage failed the guest run, as it must
"
		fi
		expect_failure=
	fi
done

printf '\nkernel matrix (logs in %s):\n%s' "$log" "$summary"
exit "$failed"
