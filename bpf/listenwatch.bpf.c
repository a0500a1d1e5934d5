// SPDX-License-Identifier: GPL-2.0
/* listenwatch: the life of a connection on a listening socket.
 *
 * Three stages, each with a program per attach mode; the Go loader picks,
 * per stage, the best mode this kernel loads (fentry, else kprobe, else
 * tracepoint) and attaches only that one:
 *   syn       SYN reaches a listener      fexit|kprobe+kretprobe tcp_conn_request,
 *                                         tp_btf consume_skb (and what became of it)
 *   handshake child created by final ACK  fexit|kretprobe tcp_v{4,6}_syn_recv_sock,
 *                                         tp_btf inet_sock_set_state SYN_RECV->ESTABLISHED
 *   accept    accept() returns the child  fexit|kretprobe inet_csk_accept,
 *                                         tracepoint sys_exit_accept{,4}
 * The listener registry (CLOSE->LISTEN, LISTEN->CLOSE) always comes from
 * inet_sock_set_state, which every supported kernel has. Tracepoint-only
 * helpers in every mode: kfree_skb (overflows after the SYN, 6.11+),
 * tcp_retransmit_synack, sys_exit_accept{,4} (EMFILE/ENFILE).
 *
 * Timestamps are joined here, per child socket, so the ring buffer carries
 * one record per accepted connection. Counters live in the listeners map.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "listenwatch.h"

char LICENSE[] SEC("license") = "GPL";

/* A kernel address the verifier knows only as a number (read from memory,
 * or kept in a map) made a typed, read-only pointer: its fields are then
 * plain loads instead of a helper call each, and a helper call costs
 * 40-60 ns here (every return goes through the SRSO "safe RET" thunk).
 * Inlined by the verifier: free. 6.2+; weak, so that a kernel without it
 * still loads the programs, with cfg_rdonly_cast false. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
#define RDONLY(type, p) ((const type *)bpf_rdonly_cast((const void *)(p), bpf_core_type_id_kernel(type)))

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_MPTCP 262

/* Set by the loader through spec.Variables before load. */
volatile const __u64 cfg_rsp_lo = 0;        /* tcp_rcv_state_process start */
volatile const __u64 cfg_rsp_hi = 0;        /* and end (next symbol) */
volatile const __u64 cfg_rcv4_lo = 0;       /* tcp_v4_rcv start */
volatile const __u64 cfg_rcv4_hi = 0;       /* and end */
volatile const __u64 cfg_rcv6_lo = 0;       /* tcp_v6_rcv start (0: no IPv6 in this kernel) */
volatile const __u64 cfg_rcv6_hi = 0;       /* and end */
volatile const __u32 cfg_wakeup_records = 1; /* wake the reader after this many records from one CPU */
volatile const bool cfg_tp_handshake = false; /* handshake stage via inet_sock_set_state */
volatile const bool cfg_tp_accept = false;    /* accept stage via sys_exit_accept (else errors only) */
volatile const bool cfg_kfree_drops = false;  /* ACK-time overflows seen by lw_tp_kfree */
/* The accept stage is attached (any mode): only then does a child's
 * timeline wait in the join for accept(). */
volatile const bool cfg_join = true;
/* Set where the kernel has bpf_rdonly_cast for the program being loaded;
 * the loader retries without it when the verifier refuses. */
volatile const bool cfg_rdonly_cast = false;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__type(value, struct lw_event); /* the record type, for bpf2go */
} lw_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct lw_listener_key);
	__type(value, struct lw_listener_stats);
} lw_listeners SEC(".maps");

/* The handshake -> accept join, per child socket. Only completed
 * handshakes enter it, so a SYN flood cannot fill it. Two levels:
 * lw_conn_slots, an array indexed by the child's connection hash (a lookup
 * the verifier inlines, a slot locked with a compare-and-swap: no helper
 * call, no shared lock), and for a child whose slot is taken, lw_conns, an
 * LRU hash keyed by the child's address (~0.6 us per insert here). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LW_CONN_SLOTS);
	__type(key, __u32);
	__type(value, struct lw_conn_slot);
} lw_conn_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	/* Per-CPU LRU lists: an insert takes no lock shared by all CPUs. */
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct lw_conn);
} lw_conns SEC(".maps");

/* Keyed by the listening socket's address; sized by the loader (a few per
 * listener: SO_REUSEPORT groups). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct lw_sock);
} lw_socks SEC(".maps");

/* Final ACKs that overflowed with tcp_abort_on_overflow set, by request
 * sock (ack_overflow): the first copy of an ACK seen overflowing claims
 * the discard that follows the request's drop. Only overflows insert; LRU,
 * so entries for requests long gone make room. */
struct lw_req_key {
	__u64 req;
	__u32 isn; /* the server's ISN: another request at the same address differs */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct lw_req_key);
	__type(value, __u8);
} lw_abort_reqs SEC(".maps");

/* A final ACK that overflowed a listener's accept queue, whose discard
 * (tcp_v{4,6}_rcv adding it to sk_drops, then freeing it) is still to
 * come on this CPU: ack_overflow sets it, lw_tp_discard claims the
 * discard when the packet is freed there (kernels before 6.11, see
 * ack_overflow). Per CPU: the two happen in one softirq, in that order. */
struct lw_discard {
	__u64 skb;
	__u64 seq_ack; /* the packet's (skb_seq_ack): skb's memory is reused */
	__u64 sk;      /* the listening socket */
	struct lw_listener_key key;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lw_discard);
} lw_discard_cpu SEC(".maps");

/* Records this CPU sent since it last woke the reader (see submit). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} lw_unwoken SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LW_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lw_counters SEC(".maps");

/* Types appear in BTF only when a typed object uses them: anchors so
 * that bpf2go emits their constants. */
const enum lw_counter *unused_counter __attribute__((unused));
const enum lw_flag *unused_flag __attribute__((unused));
const enum lw_drop *unused_drop __attribute__((unused));
const enum lw_accept_err *unused_aerr __attribute__((unused));
const struct lw_seed *unused_seed __attribute__((unused)); /* written by the iterator, not a map */
const enum lw_limits *unused_limits __attribute__((unused));
const enum lw_kind *unused_kind __attribute__((unused));

/* The pipeline, in order: helpers first, then one header per stage. One
 * object, one generate line (loader/gen.go). */
#if defined(__TARGET_ARCH_arm64)
#include "lib/arch_arm64.h"
#elif defined(__TARGET_ARCH_x86)
#include "lib/arch_x86.h"
#else
#error "listenwatch: no register layout for this architecture (bpf/lib/arch_*.h)"
#endif
#include "lib/listener.h"
#include "lib/kprobe_args.h"
#include "stage/registry.bpf.h"
#include "stage/handshake.bpf.h"
#include "stage/syn.bpf.h"
#include "stage/drops.bpf.h"
#include "stage/accept.bpf.h"
#include "stage/seed.bpf.h"
