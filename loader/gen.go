package loader

// The BPF object and its Go bindings are generated and committed, so that
// `go build` needs no clang. `make generate` reproduces them byte for byte
// (pinned clang-16 and llvm-strip-16 from Debian bookworm; CI checks) when
// run by scripts/bpf2go.sh, which compiles at one fixed path (why: there).
//go:generate ../scripts/bpf2go.sh -cc clang-16 -strip llvm-strip-16 -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target amd64,arm64 -type lw_event -type lw_listener_key -type lw_listener_stats -type lw_conn -type lw_conn_slot -type lw_counter -type lw_flag -type lw_drop -type lw_accept_err -type lw_seed -type lw_limits -type lw_kind bpf ../bpf/listenwatch.bpf.c -- -I../bpf
