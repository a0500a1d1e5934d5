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

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define IPPROTO_TCP 6
#define IPPROTO_MPTCP 262

/* Set by the loader through spec.Variables before load. */
volatile const __u64 cfg_rsp_lo = 0;        /* tcp_rcv_state_process start */
volatile const __u64 cfg_rsp_hi = 0;        /* and end (next symbol) */
volatile const __u64 cfg_wakeup_bytes = 0;  /* wake the reader past this backlog */
volatile const bool cfg_tp_handshake = false; /* handshake stage via inet_sock_set_state */
volatile const bool cfg_tp_accept = false;    /* accept stage via sys_exit_accept (else errors only) */
volatile const bool cfg_kfree_drops = false;  /* ACK-time overflows seen by lw_tp_kfree */

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

/* Keyed by the child's struct sock address: bounded, and only completed
 * handshakes enter it, so a SYN flood cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	/* Per-CPU LRU lists: an insert takes no lock shared by all CPUs. */
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct lw_conn);
} lw_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LW_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} lw_counters SEC(".maps");

/* kprobe mode only: arguments saved at entry for the return probe. */
struct kp_args {
	__u64 sk;
	__u64 req;
	__u64 own_req;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct kp_args);
} lw_kp_args SEC(".maps");

/* Enums appear in BTF only when a typed object uses them: anchors so
 * that bpf2go emits their constants. */
const enum lw_counter *unused_counter __attribute__((unused));
const enum lw_flag *unused_flag __attribute__((unused));
const enum lw_drop *unused_drop __attribute__((unused));
const enum lw_accept_err *unused_aerr __attribute__((unused));

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&lw_counters, &idx);
	if (v)
		*v += 1; /* per-CPU: no atomic needed */
}

static __always_inline void key_from_sk(struct lw_listener_key *k, const struct sock *sk)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	k->port = BPF_CORE_READ(sk, __sk_common.skc_num);
	k->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (k->family == AF_INET) {
		__u32 a = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__builtin_memcpy(k->addr, &a, 4);
	} else {
		BPF_CORE_READ_INTO(&k->addr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
	}
}

/* The same, for a socket pointer the verifier knows the type of (tp_btf,
 * fentry arguments): plain loads instead of a helper call per field, the
 * difference between ~50 and ~200 ns on the busiest program. */
static __always_inline void key_from_btf_sk(struct lw_listener_key *k, const struct sock *sk)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->netns = sk->__sk_common.skc_net.net->ns.inum;
	k->port = sk->__sk_common.skc_num;
	k->family = sk->__sk_common.skc_family;
	if (k->family == AF_INET) {
		__u32 a = sk->__sk_common.skc_rcv_saddr;
		__builtin_memcpy(k->addr, &a, 4);
	} else {
		const __u32 *a = sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32;
		__u32 w[4] = { a[0], a[1], a[2], a[3] };
		__builtin_memcpy(k->addr, w, 16);
	}
}

/* An open listener's entry. A closed listener keeps its entry (its final
 * counters stay readable until it listens again or is evicted) but takes no
 * traffic: network namespace inodes are reused, so a dead namespace's
 * 127.0.0.1:P would otherwise capture the SYNs of a new namespace's [::]:P. */
static __always_inline struct lw_listener_stats *open_listener(const struct lw_listener_key *k)
{
	struct lw_listener_stats *st = bpf_map_lookup_elem(&lw_listeners, k);
	return st && st->sockets > 0 ? st : NULL;
}

/* The listener a packet or child to (netns, family, addr, port) belongs to:
 * the specific address first, then the wildcard, then, for IPv4, a
 * dual-stack IPv6 wildcard; the kernel's own preference order. */
static __always_inline struct lw_listener_stats *
find_listener(struct lw_listener_key *k)
{
	struct lw_listener_stats *st = open_listener(k);
	if (st)
		return st;
	__u8 saved[16];
	__builtin_memcpy(saved, k->addr, 16);
	__builtin_memset(k->addr, 0, 16);
	st = open_listener(k);
	if (st)
		return st;
	if (k->family == AF_INET) {
		k->family = AF_INET6;
		st = open_listener(k);
		if (st)
			return st;
		k->family = AF_INET;
	}
	/* Not found: keep the key as the packet or socket said. */
	__builtin_memcpy(k->addr, saved, 16);
	return NULL;
}

static __always_inline void set_owner(struct lw_listener_stats *st)
{
	st->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(st->comm, sizeof(st->comm));
}

static __always_inline void submit(struct lw_event *e)
{
	/* A wake-up per record costs 6-8x the program's own time; the reader
	 * polls, and is woken only once a backlog builds up. */
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&lw_events, BPF_RB_AVAIL_DATA) >= cfg_wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

/* ---- listener registry --------------------------------------------------- */

static __always_inline void listener_up(const struct sock *sk)
{
	struct lw_listener_key k;
	key_from_btf_sk(&k, sk);
	struct lw_listener_stats *st = bpf_map_lookup_elem(&lw_listeners, &k);
	if (!st || st->sockets <= 0) {
		/* A new life for this identity: the entry of a closed listener
		 * (or of a dead namespace whose inode was reused) starts over,
		 * which Prometheus reads as a counter reset. */
		struct lw_listener_stats fresh = {};
		bpf_map_update_elem(&lw_listeners, &k, &fresh, BPF_ANY);
		st = bpf_map_lookup_elem(&lw_listeners, &k);
		if (!st)
			return;
	}
	__sync_fetch_and_add(&st->sockets, 1);
	st->backlog = sk->sk_max_ack_backlog;
	st->sk = (__u64)sk;
	st->last_drops = sk->sk_drops.counter;
	/* listen(2) runs this in process context: its second argument is the
	 * backlog the application asked for, before the somaxconn cap. */
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (regs && regs->orig_ax == 50 /* __NR_listen, x86-64 */)
		st->req_backlog = regs->si;
	set_owner(st);
}

static __always_inline void listener_down(const struct sock *sk)
{
	struct lw_listener_key k;
	key_from_btf_sk(&k, sk);
	struct lw_listener_stats *st = bpf_map_lookup_elem(&lw_listeners, &k);
	if (st && st->sockets > 0)
		__sync_fetch_and_add(&st->sockets, -1);
	if (st && st->sk == (__u64)sk)
		st->sk = 0; /* never read a freed socket's queues */
}

/* ---- handshake ----------------------------------------------------------- */

/* listener: the listening socket when the hook has it, else 0 (the
 * registry's is used); queued: whether the child is already counted in
 * the accept queue. */
static __always_inline void handshake_done(__u64 child, struct lw_listener_key *k,
					   __u64 t_synack, __u64 t_est, __u32 flags,
					   const struct sock *listener, bool queued)
{
	__u32 ackq = 0;
	struct lw_listener_stats *st = find_listener(k);
	if (!st) {
		count(LW_C_UNATTRIBUTED_HANDSHAKE);
		flags |= LW_F_NO_LISTENER;
	} else {
		__sync_fetch_and_add(&st->handshakes, 1);
		if (!listener)
			listener = (const struct sock *)st->sk;
		if (listener)
			ackq = BPF_CORE_READ(listener, sk_ack_backlog) + (queued ? 0 : 1);
	}
	struct lw_conn c = {
		.t_synack = t_synack,
		.t_est = t_est,
		.flags = flags | LW_F_HANDSHAKE,
		.ackq = ackq,
	};
	c.listener = *k;
	bpf_map_update_elem(&lw_conns, &child, &c, BPF_ANY);
}

/* Tracepoint mode: the child just went SYN_RECV -> ESTABLISHED. No hook
 * exposes the request sock here, so the SYN-ACK time is derived from the
 * RTT the kernel measured against req->snt_synack: within ~2us unless the
 * SYN-ACK was retransmitted (then total_rto_time, in ms, 6.7+). */
static __always_inline void child_established(const struct sock *sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u64 now = bpf_ktime_get_ns();
	__u64 t_synack = 0;
	__u32 flags = 0;
	/* The verifier types sk as struct sock: tcp_sock fields are read
	 * through the helper. */
	__u32 retrans = BPF_CORE_READ(tp, total_retrans);
	__u32 srtt = BPF_CORE_READ(tp, srtt_us);
	if (retrans == 0 && srtt) {
		__u64 rtt = (__u64)(srtt >> 3) * 1000;
		if (rtt < now) {
			t_synack = now - rtt;
			flags = LW_F_SYN_SRTT;
		}
	} else if (retrans && bpf_core_field_exists(tp->total_rto_time)) {
		__u64 rto = (__u64)BPF_CORE_READ(tp, total_rto_time) * 1000000;
		if (rto && rto < now) {
			t_synack = now - rto;
			flags = LW_F_SYN_RTO;
		}
	}
	struct lw_listener_key k;
	key_from_btf_sk(&k, sk);
	handshake_done((__u64)sk, &k, t_synack, now, flags, NULL, true);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(lw_tp_state, const struct sock *sk, const int oldstate, const int newstate)
{
	/* Most transitions are of no interest: decide on the arguments alone
	 * before touching the socket. A child is cloned from its listener and
	 * reports LISTEN -> SYN_RECV: only LISTEN -> CLOSE is a listener going
	 * away. */
	int what;
	if (newstate == TCP_LISTEN)
		what = 1;
	else if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE)
		what = 2;
	else if (cfg_tp_handshake && oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED)
		what = 3;
	else
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (what == 1)
		listener_up(sk);
	else if (what == 2)
		listener_down(sk);
	else
		child_established(sk);
	return 0;
}

/* Kernels without the kfree_skb rx_sk argument (before 6.11): a NULL child
 * with a full accept queue is the final-ACK (or cookie-ACK) overflow. The
 * caller then adds the packet to sk_drops once more, after this returns. */
static __always_inline void ack_overflow(const struct sock *listener)
{
	__u32 ackq = BPF_CORE_READ(listener, sk_ack_backlog);
	__u32 max = BPF_CORE_READ(listener, sk_max_ack_backlog);
	if (ackq <= max)
		return; /* allocation failure: counted as other at the next SYN */
	struct lw_listener_key k;
	key_from_sk(&k, listener);
	struct lw_listener_stats *st = find_listener(&k);
	if (!st)
		return;
	__sync_fetch_and_add(&st->drops[LW_DROP_ACCEPTQ_ACK], 1);
	st->last_drops = BPF_CORE_READ(listener, sk_drops.counter) + 1;
}

/* fentry/kprobe mode: syn_recv_sock returns the child (NULL when the accept
 * queue is full or allocation failed); the request sock has the exact
 * SYN-ACK time, zero for a cookie. */
static __always_inline void syn_recv_done(const struct sock *listener,
					  const struct request_sock *req,
					  const bool *own_req, const struct sock *child)
{
	if (!child) {
		if (!cfg_kfree_drops)
			ack_overflow(listener);
		return;
	}
	bool own = 0;
	bpf_probe_read_kernel(&own, sizeof(own), own_req);
	if (!own) /* lost a race with another CPU: this child is destroyed */
		return;
	__u64 snt = BPF_CORE_READ((struct tcp_request_sock *)req, snt_synack);
	__u64 t_synack = snt * 1000; /* tcp_clock_us(): the same clock, in us */
	__u32 flags = snt ? LW_F_SYN_EXACT : LW_F_COOKIE;
	struct lw_listener_key k;
	key_from_sk(&k, listener);
	handshake_done((__u64)child, &k, t_synack, bpf_ktime_get_ns(), flags, listener, false);
}

static __always_inline bool v4_mapped(const struct sk_buff *skb)
{
	/* tcp_v6_syn_recv_sock handles an IPv4 packet on a dual-stack listener
	 * by calling tcp_v4_syn_recv_sock, which is hooked too. */
	return BPF_CORE_READ(skb, protocol) == bpf_htons(ETH_P_IP);
}

/* The return value is read with bpf_get_func_ret: 6.1's verifier refuses a
 * direct read of the seventh context slot of this six-argument function. */
SEC("fexit/tcp_v4_syn_recv_sock")
int lw_fexit_syn_recv4(__u64 *ctx)
{
	__u64 child = 0;
	bpf_get_func_ret(ctx, &child);
	syn_recv_done((void *)ctx[0], (void *)ctx[2], (void *)ctx[5], (void *)child);
	return 0;
}

SEC("fexit/tcp_v6_syn_recv_sock")
int lw_fexit_syn_recv6(__u64 *ctx)
{
	__u64 child = 0;
	if (v4_mapped((void *)ctx[1]))
		return 0;
	bpf_get_func_ret(ctx, &child);
	syn_recv_done((void *)ctx[0], (void *)ctx[2], (void *)ctx[5], (void *)child);
	return 0;
}

/* Entry and return probe meet by thread. Bit 63 (never set in a pid_tgid)
 * keeps accept apart from a syn_recv_sock run by a softirq on the same
 * thread while it sleeps in accept. */
#define KP_ACCEPT (1ULL << 63)

static __always_inline void kp_save(__u64 which, __u64 sk, __u64 req, __u64 own_req)
{
	__u64 id = bpf_get_current_pid_tgid() | which;
	struct kp_args a = { .sk = sk, .req = req, .own_req = own_req };
	bpf_map_update_elem(&lw_kp_args, &id, &a, BPF_ANY);
}

static __always_inline int kp_take(__u64 which, struct kp_args *out)
{
	__u64 id = bpf_get_current_pid_tgid() | which;
	struct kp_args *a = bpf_map_lookup_elem(&lw_kp_args, &id);
	if (!a)
		return -1;
	*out = *a;
	bpf_map_delete_elem(&lw_kp_args, &id);
	return 0;
}

/* own_req is the sixth argument, which BPF_KPROBE of this libbpf cannot
 * name: read it from its x86-64 register. */
#define KP_PARM6(ctx) ((ctx)->r9)

SEC("kprobe/tcp_v4_syn_recv_sock")
int lw_kp_syn_recv4(struct pt_regs *ctx)
{
	kp_save(0, PT_REGS_PARM1(ctx), PT_REGS_PARM3(ctx), KP_PARM6(ctx));
	return 0;
}

SEC("kprobe/tcp_v6_syn_recv_sock")
int lw_kp_syn_recv6(struct pt_regs *ctx)
{
	if (!v4_mapped((const struct sk_buff *)PT_REGS_PARM2(ctx)))
		kp_save(0, PT_REGS_PARM1(ctx), PT_REGS_PARM3(ctx), KP_PARM6(ctx));
	return 0;
}

/* One return probe serves both: the v4-mapped case saved nothing at the v6
 * entry, and the inner v4 return consumed its own entry. */
SEC("kretprobe/tcp_v4_syn_recv_sock")
int BPF_KRETPROBE(lw_krp_syn_recv4, struct sock *child)
{
	struct kp_args a;
	if (kp_take(0, &a) == 0)
		syn_recv_done((void *)a.sk, (void *)a.req, (void *)a.own_req, child);
	return 0;
}

SEC("kretprobe/tcp_v6_syn_recv_sock")
int BPF_KRETPROBE(lw_krp_syn_recv6, struct sock *child)
{
	struct kp_args a;
	if (kp_take(0, &a) == 0)
		syn_recv_done((void *)a.sk, (void *)a.req, (void *)a.own_req, child);
	return 0;
}

/* ---- syn ----------------------------------------------------------------- */

/* What became of the SYN just handled by a listener. A SYN that is refused
 * has no drop event (it is consumed); what shows is the listener's drop
 * count, bumped by tcp_listendrop(). Drop events on the listener refresh
 * last_drops, so the change since then is this SYN's. With the accept queue
 * full it was a listen overflow; else with the SYN queue full, a SYN-queue
 * drop. A SYN that left the SYN queue full without growing it was answered
 * with a cookie (inferred: exact unless requests expired in between). */
static __always_inline void syn_outcome(struct lw_listener_stats *st, const struct sock *sk)
{
	if (!sk)
		return;
	__u32 drops = BPF_CORE_READ(sk, sk_drops.counter);
	__u32 qlen = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_accept_queue.qlen.counter);
	__u32 ackq = BPF_CORE_READ(sk, sk_ack_backlog);
	__u32 max = BPF_CORE_READ(sk, sk_max_ack_backlog);
	__u32 d = drops - st->last_drops;
	st->last_drops = drops;
	if (d) {
		__u32 why = LW_DROP_OTHER;
		if (ackq > max)
			why = LW_DROP_ACCEPTQ_SYN;
		else if (qlen > max)
			why = LW_DROP_SYNQ_FULL;
		/* d > 1: another CPU refused a SYN of this listener between our
		 * reads; at the same instant, for the same reason. */
		__sync_fetch_and_add(&st->drops[why], d < 1024 ? d : 1);
	} else if (qlen > max && qlen <= st->last_qlen) {
		__sync_fetch_and_add(&st->cookies_sent, 1);
	}
	st->last_qlen = qlen;
	st->last_ackq = ackq;
}

/* fentry/kprobe mode: the listener is an argument; the outcome is read when
 * tcp_conn_request returns. */
static __always_inline void syn_at_listener(const struct sock *sk)
{
	struct lw_listener_key k;
	key_from_sk(&k, sk);
	struct lw_listener_stats *st = find_listener(&k);
	if (!st) {
		count(LW_C_UNATTRIBUTED_SYN);
		return;
	}
	__sync_fetch_and_add(&st->syns, 1);
	if (!st->sk)
		st->sk = (__u64)sk;
	syn_outcome(st, sk);
}

SEC("fexit/tcp_conn_request")
int BPF_PROG(lw_fexit_conn_request, struct request_sock_ops *rsk_ops, void *af_ops,
	     struct sock *sk, struct sk_buff *skb)
{
	syn_at_listener(sk);
	return 0;
}

#define KP_CONN_REQUEST (1ULL << 62)

SEC("kprobe/tcp_conn_request")
int BPF_KPROBE(lw_kp_conn_request, void *rsk_ops, void *af_ops, struct sock *sk)
{
	kp_save(KP_CONN_REQUEST, (__u64)sk, 0, 0);
	return 0;
}

SEC("kretprobe/tcp_conn_request")
int BPF_KRETPROBE(lw_krp_conn_request)
{
	struct kp_args a;
	if (kp_take(KP_CONN_REQUEST, &a) == 0)
		syn_at_listener((const struct sock *)a.sk);
	return 0;
}

/* Tracepoint mode: every SYN a listener handles (accepted, cookie or
 * dropped) ends in consume_skb() inside tcp_rcv_state_process; nothing else
 * fires per SYN. The skb carries no socket, so the listener is found from
 * the headers and the route's device namespace. */
SEC("tp_btf/consume_skb")
int BPF_PROG(lw_tp_consume, struct sk_buff *skb, void *location)
{
	if ((__u64)location < cfg_rsp_lo || (__u64)location >= cfg_rsp_hi)
		return 0;

	unsigned char *head = skb->head;
	__u16 nh = skb->network_header;
	__u16 th = skb->transport_header;
	/* IPv4 header without options or the IPv6 header, then the TCP ports
	 * and flags, in one read. */
	__u8 h[40 + 14];
	__u32 off = (__u16)(th - nh);
	if (off != 20 && off != 40)
		return 0; /* IP options or IPv6 extension headers: not a plain SYN */
	if (bpf_probe_read_kernel(h, sizeof(h), head + nh))
		return 0;
	const __u8 *tcp = off == 20 ? &h[20] : &h[40];
	if ((tcp[13] & 0x12) != 0x02) /* SYN without ACK */
		return 0;

	struct lw_listener_key k = {};
	if ((h[0] >> 4) == 4 && off == 20) {
		k.family = AF_INET;
		__builtin_memcpy(k.addr, &h[16], 4); /* daddr */
	} else if ((h[0] >> 4) == 6 && off == 40) {
		k.family = AF_INET6;
		__builtin_memcpy(k.addr, &h[24], 16); /* daddr */
	} else {
		return 0;
	}
	k.port = ((__u16)tcp[2] << 8) | tcp[3];
	struct dst_entry *dst = (void *)(skb->_skb_refdst & ~1UL);
	k.netns = BPF_CORE_READ(dst, dev, nd_net.net, ns.inum);
	struct lw_listener_stats *st = find_listener(&k);
	if (!st) {
		count(LW_C_UNATTRIBUTED_SYN);
		return 0;
	}
	__sync_fetch_and_add(&st->syns, 1);
	syn_outcome(st, (const struct sock *)st->sk);
	return 0;
}

/* ---- drops after the SYN --------------------------------------------------- */

/* The final ACK (or a cookie ACK) of a connection the full accept queue
 * cannot take is freed with the listener as rx_sk (6.11+; reason
 * TCP_LISTEN_OVERFLOW since 6.15, NO_SOCKET from cookie_v4_check). Reason
 * numbers differ per kernel: resolved by name. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(lw_tp_kfree, struct sk_buff *skb, void *location, enum skb_drop_reason reason,
	     struct sock *rx_sk)
{
	if (!rx_sk || rx_sk->__sk_common.skc_state != TCP_LISTEN)
		return 0;
	if (rx_sk->sk_protocol != IPPROTO_TCP)
		return 0;
	struct lw_listener_key k;
	key_from_btf_sk(&k, rx_sk);
	struct lw_listener_stats *st = find_listener(&k);
	if (!st)
		return 0;
	__u32 drops = rx_sk->sk_drops.counter;
	__u32 d = drops - st->last_drops;
	st->last_drops = drops;
	if (!st->sk)
		st->sk = (__u64)rx_sk;
	if (!d)
		return 0; /* not a listen drop (e.g. a stray segment) */
	bool full = rx_sk->sk_ack_backlog > rx_sk->sk_max_ack_backlog;
	/* 6.15+ names the final-ACK overflow; 6.11 to 6.14 report it as
	 * NOT_SPECIFIED (with the queue full). */
	__u32 nosock = bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NO_SOCKET);
	__u32 overflow = bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED);
	bool named = bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_TCP_LISTEN_OVERFLOW);
	if (named)
		overflow = bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_TCP_LISTEN_OVERFLOW);
	if (reason == overflow && (named || full)) {
		__sync_fetch_and_add(&st->drops[LW_DROP_ACCEPTQ_ACK], 1);
	} else if (full && reason == nosock) {
		__sync_fetch_and_add(&st->drops[LW_DROP_ACCEPTQ_COOKIE_ACK], 1);
	} else {
		/* One drop, counted twice in sk_drops (tcp_listendrop and the
		 * discard path): it is still one ListenDrop. */
		__sync_fetch_and_add(&st->drops[LW_DROP_OTHER], 1);
	}
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(lw_tp_synack, const struct sock *sk, const struct request_sock *req)
{
	struct lw_listener_key k;
	key_from_btf_sk(&k, sk);
	struct lw_listener_stats *st = find_listener(&k);
	if (st)
		__sync_fetch_and_add(&st->synack_retrans, 1);
	return 0;
}

/* ---- accept -------------------------------------------------------------- */

static __always_inline void accepted(const struct sock *child, const struct sock *listener)
{
	__u64 key = (__u64)child;
	struct lw_event *e = bpf_ringbuf_reserve(&lw_events, sizeof(*e), 0);
	struct lw_conn *c = bpf_map_lookup_elem(&lw_conns, &key);
	struct lw_listener_key k;
	__u64 t_synack = 0, t_est = 0;
	__u32 flags = 0, ackq = 0;

	if (c) {
		k = c->listener;
		t_synack = c->t_synack;
		t_est = c->t_est;
		flags = c->flags;
		ackq = c->ackq;
		bpf_map_delete_elem(&lw_conns, &key);
	} else if (listener) {
		key_from_sk(&k, listener);
	} else {
		key_from_sk(&k, child);
	}

	struct lw_listener_stats *st = find_listener(&k);
	if (st) {
		__sync_fetch_and_add(&st->accepted, 1);
		if (!st->pid)
			set_owner(st);
		flags &= ~LW_F_NO_LISTENER;
	} else {
		count(LW_C_UNATTRIBUTED_ACCEPT);
		flags |= LW_F_NO_LISTENER;
	}

	if (!e) {
		count(LW_C_RINGBUF_LOST);
		return;
	}
	e->t_synack = t_synack;
	e->t_est = t_est;
	e->t_acc = bpf_ktime_get_ns();
	e->listener = k;
	__builtin_memset(e->raddr, 0, sizeof(e->raddr));
	if (BPF_CORE_READ(child, __sk_common.skc_family) == AF_INET) {
		__u32 a = BPF_CORE_READ(child, __sk_common.skc_daddr);
		__builtin_memcpy(e->raddr, &a, 4);
	} else {
		BPF_CORE_READ_INTO(&e->raddr, child, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	e->rport = bpf_ntohs(BPF_CORE_READ(child, __sk_common.skc_dport));
	e->flags = flags;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->ackq = ackq;
	submit(e);
}

/* The socket behind a file descriptor of the current task, if it is TCP
 * (an MPTCP socket is unwrapped to the TCP socket all TCP hooks report).
 * The task's fd table is reached with plain loads through its BTF type;
 * only the array slot and the file's private data need a probe read. */
static __always_inline const struct sock *sock_of_fd(long fd)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct fdtable *fdt = t->files->fdt;
	if (fd < 0 || fd >= fdt->max_fds)
		return NULL;
	struct file **fds = fdt->fd;
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return NULL;
	struct socket *so = BPF_CORE_READ(f, private_data);
	if (!so || BPF_CORE_READ(so, file) != f)
		return NULL;
	const struct sock *sk = BPF_CORE_READ(so, sk);
	if (!sk)
		return NULL;
	/* Only stream sockets are accepted; of those only inet ones carry
	 * these protocol numbers. */
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	if (bpf_core_type_exists(struct mptcp_sock) && proto == IPPROTO_MPTCP) {
		sk = BPF_CORE_READ((struct mptcp_sock *)sk, first);
		if (!sk)
			return NULL;
		proto = BPF_CORE_READ(sk, sk_protocol);
	}
	return proto == IPPROTO_TCP ? sk : NULL;
}

#define EMFILE 24
#define ENFILE 23

/* accept() failed for want of a file descriptor: the connection stays in
 * the queue. The listening fd is the syscall's first argument, still in
 * the saved user registers. */
static __always_inline void accept_failed(long err)
{
	__u32 which = err == -EMFILE ? LW_AERR_EMFILE : LW_AERR_ENFILE;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return;
	const struct sock *sk = sock_of_fd(regs->di);
	if (!sk)
		return;
	struct lw_listener_key k;
	key_from_sk(&k, sk);
	struct lw_listener_stats *st = find_listener(&k);
	if (st)
		__sync_fetch_and_add(&st->accept_errors[which], 1);
}

static __always_inline int on_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret < 0) {
		if (ctx->ret == -EMFILE || ctx->ret == -ENFILE)
			accept_failed(ctx->ret);
		return 0;
	}
	if (!cfg_tp_accept)
		return 0;
	const struct sock *child = sock_of_fd(ctx->ret);
	if (child)
		accepted(child, NULL);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int lw_tp_accept4(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int lw_tp_accept(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx);
}

/* fexit sees accept(2), io_uring and in-kernel acceptors alike. The
 * signature changed in 6.10 (struct proto_accept_arg), but the listener is
 * the first argument in both and bpf_get_func_ret reads the return value
 * whatever the arity. */
SEC("fexit/inet_csk_accept")
int lw_fexit_accept(__u64 *ctx)
{
	__u64 ret = 0;
	if (bpf_get_func_ret(ctx, &ret) || !ret)
		return 0; /* non-blocking accept with an empty queue */
	accepted((const struct sock *)ret, (const struct sock *)ctx[0]);
	return 0;
}

SEC("kprobe/inet_csk_accept")
int BPF_KPROBE(lw_kp_accept, struct sock *sk)
{
	kp_save(KP_ACCEPT, (__u64)sk, 0, 0);
	return 0;
}

SEC("kretprobe/inet_csk_accept")
int BPF_KRETPROBE(lw_krp_accept, struct sock *child)
{
	struct kp_args a;
	if (kp_take(KP_ACCEPT, &a) == 0 && child)
		accepted(child, (const struct sock *)a.sk);
	return 0;
}
