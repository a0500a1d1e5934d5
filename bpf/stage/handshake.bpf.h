/* Handshake: the final ACK creates the child (and the registry's tracepoint program). */
#ifndef LW_STAGE_HANDSHAKE_H
#define LW_STAGE_HANDSHAKE_H

/* listener: the listening socket when the hook has it, else 0 (the
 * registry's is used); queued: whether the child is already counted in
 * the accept queue. */
static __always_inline void handshake_done(__u64 child, __u32 hash, struct lw_listener_key *k,
					   __u64 t_synack, __u64 t_est, __u32 flags,
					   const struct sock *listener, bool queued)
{
	__u32 ackq = 0;
	struct lw_listener_stats *st = listener ? listener_entry(k) : find_listener(k);
	if (!st) {
		count(LW_C_UNATTRIBUTED_HANDSHAKE);
		flags |= LW_F_NO_LISTENER;
	} else {
		__sync_fetch_and_add(&st->handshakes, 1);
	}
	/* Without the accept stage no program takes the timeline: kept, it
	 * would fill the join's slots and then churn its LRU on every
	 * handshake (twice this program's time, `make bench`). */
	if (!cfg_join)
		return;
	if (st) {
		/* Tracepoint mode does not name the child's listener: the
		 * group's first socket is right for a single socket. */
		if (!listener)
			listener = (const struct sock *)st->socks[0];
		if (listener && cfg_rdonly_cast)
			ackq = RDONLY(struct sock, listener)->sk_ack_backlog + (queued ? 0 : 1);
		else if (listener)
			ackq = BPF_CORE_READ(listener, sk_ack_backlog) + (queued ? 0 : 1);
	}
	struct lw_conn c = {
		.t_synack = t_synack,
		.t_est = t_est,
		.flags = flags | LW_F_HANDSHAKE,
		.ackq = ackq,
	};
	c.listener = *k;
	conn_put(child, hash, &c);
}

/* When the final ACK was processed: tcp_rcv_state_process refreshed the
 * child's TCP clock (tcp_clock_cache: ktime_get_ns(), the clock of
 * bpf_ktime_get_ns) before it changed the state: 0.19 us before this
 * program's own read at the median, 0.28 at p99 (6.18, 32,517 handshakes).
 * Reading it is a load from a line the kernel just wrote, where a clock
 * read of our own costs ~120 ns per connection here (kvm-clock). */
static __always_inline __u64 ack_time(const struct tcp_sock *tp)
{
	__u64 t = 0;
	if (bpf_core_field_exists(tp->tcp_clock_cache)) {
		if (cfg_rdonly_cast)
			t = RDONLY(struct tcp_sock, tp)->tcp_clock_cache;
		else
			t = BPF_CORE_READ(tp, tcp_clock_cache);
	}
	return t ? t : bpf_ktime_get_ns();
}

/* Tracepoint mode: the child just went SYN_RECV -> ESTABLISHED. No hook
 * exposes the request sock here, so the SYN-ACK time is derived from the
 * RTT the kernel measured against req->snt_synack: within ~2us unless the
 * SYN-ACK was retransmitted (then total_rto_time, in ms, 6.7+). */
static __always_inline void child_established(const struct sock *sk)
{
	struct lw_listener_key k;
	key_from_btf_sk(&k, sk);
	if (!cfg_join) { /* counted, no timeline: nothing reads the times */
		handshake_done((__u64)sk, 0, &k, 0, 0, 0, NULL, true);
		return;
	}
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u64 now = ack_time(tp);
	__u64 t_synack = 0;
	__u32 flags = 0;
	/* The verifier types sk as struct sock: tcp_sock fields are read
	 * through a cast, else the helper. */
	__u32 retrans, srtt;
	if (cfg_rdonly_cast) {
		const struct tcp_sock *t = RDONLY(struct tcp_sock, sk);
		retrans = t->total_retrans;
		srtt = t->srtt_us;
	} else {
		retrans = BPF_CORE_READ(tp, total_retrans);
		srtt = BPF_CORE_READ(tp, srtt_us);
	}
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
	handshake_done((__u64)sk, sk->__sk_common.skc_hash, &k, t_synack, now, flags, NULL, true);
}

/* A child whose listener closes dies in the accept queue and is never
 * accepted: its timeline would stay in lw_conns until evicted (or hold its
 * slot). The listener's close disconnects it with sk_err still 0. A child
 * that fails on its own in the queue (the client reset it, or it timed
 * out: sk_err is set before the state changes) is still handed to
 * accept(), which then needs its timeline and listener (the dead child
 * has lost its port): kept. Only a child that was never accepted has no
 * struct socket; accepted sockets closing (which keep theirs until
 * orphaned) cost one load here. */
static __always_inline void child_closed(const struct sock *sk)
{
	if (sk->sk_socket || sk->sk_err)
		return;
	conn_forget((__u64)sk, sk->__sk_common.skc_hash);
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
	else if (cfg_join && newstate == TCP_CLOSE && (oldstate == TCP_ESTABLISHED || oldstate == TCP_CLOSE_WAIT))
		what = 4;
	else
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (what == 1)
		listener_up(sk);
	else if (what == 2)
		listener_down(sk);
	else if (what == 3)
		child_established(sk);
	else
		child_closed(sk);
	return 0;
}

/* Kernels without the kfree_skb rx_sk argument (before 6.11): a NULL child
 * with a full accept queue is the final-ACK (or cookie-ACK) overflow. */
static __always_inline void ack_overflow(const struct sock *listener, const struct sk_buff *skb,
					 const struct request_sock *req)
{
	__u32 ackq = BPF_CORE_READ(listener, sk_ack_backlog);
	__u32 max = BPF_CORE_READ(listener, sk_max_ack_backlog);
	if (ackq <= max)
		return; /* allocation failure: counted as other at the next SYN */
	struct lw_listener_key k;
	key_from_sk(&k, listener);
	struct lw_listener_stats *st = listener_entry(&k);
	if (!st)
		return;
	/* The request sock holds the client. An IPv4 client of a dual-stack
	 * listener has only the IPv4 address set (the family is the
	 * listener's): an empty IPv6 address means IPv4. */
	struct lw_peer p = { .family = AF_INET6 };
	if (BPF_CORE_READ(req, __req_common.skc_family) == AF_INET6)
		BPF_CORE_READ_INTO(&p.addr, req, __req_common.skc_v6_daddr.in6_u.u6_addr8);
	__u64 w[2];
	__builtin_memcpy(w, p.addr, 16);
	if (!w[0] && !w[1]) {
		__u32 a = BPF_CORE_READ(req, __req_common.skc_daddr);
		__builtin_memcpy(p.addr, &a, 4);
		p.family = AF_INET;
	}
	p.port = bpf_ntohs(BPF_CORE_READ(req, __req_common.skc_dport));
	/* A cookie's request sock was made for this ACK: no SYN-ACK time. */
	bool cookie = !BPF_CORE_READ((struct tcp_request_sock *)req, snt_synack);
	drop(st, &k, cookie ? LW_DROP_ACCEPTQ_COOKIE_ACK : LW_DROP_ACCEPTQ_ACK, 1, &p, ackq);
	/* Claims this packet's increments of sk_drops (drops.bpf.h), so that
	 * the next SYN does not take them for its own: tcp_listendrop's, made
	 * before we return. For a request sock, its caller then discards the
	 * packet (sk_drops_add, then the free in tcp_v{4,6}_rcv; a cookie ACK
	 * is freed without one by cookie_v4_check's caller): claimed when
	 * that happens (lw_tp_discard, same CPU), not now, so that a SYN
	 * refused on another CPU meanwhile finds its own increment
	 * unclaimed. Where the loader found no address for tcp_v4_rcv (no
	 * kallsyms), it is claimed now, as before. */
	__u32 claim = 1;
	if (!cookie && cfg_rcv4_hi) {
		__u32 zero = 0;
		struct lw_discard *d = bpf_map_lookup_elem(&lw_discard_cpu, &zero);
		if (d) {
			d->skb = (__u64)skb;
			d->seq_ack = skb_seq_ack(skb);
			d->sk = (__u64)listener;
			d->key = k;
		}
	} else if (!cookie) {
		claim = 2;
		/* With tcp_abort_on_overflow, tcp_check_req then drops the
		 * request. A second copy of the ACK that overflowed at the same
		 * time on another CPU finds it already gone (req_stolen): it is
		 * looked up again, not discarded. One discard per request: the
		 * first copy here claims it. */
		const struct net *net = BPF_CORE_READ(listener, __sk_common.skc_net.net);
		if (BPF_CORE_READ_BITFIELD_PROBED(&net->ipv4, sysctl_tcp_abort_on_overflow)) {
			struct lw_req_key rk = {
				.req = (__u64)req,
				.isn = BPF_CORE_READ((struct tcp_request_sock *)req, snt_isn),
			};
			__u8 one = 1;
			if (bpf_map_update_elem(&lw_abort_reqs, &rk, &one, BPF_NOEXIST))
				claim = 1;
		}
	}
	sock_claim(st, (__u64)listener, claim);
}

/* fentry/kprobe mode: syn_recv_sock returns the child (NULL when the accept
 * queue is full or allocation failed); the request sock has the exact
 * SYN-ACK time, zero for a cookie. */
static __always_inline void syn_recv_done(const struct sock *listener, const struct sk_buff *skb,
					  const struct request_sock *req,
					  const bool *own_req, const struct sock *child)
{
	if (!child) {
		if (!cfg_kfree_drops)
			ack_overflow(listener, skb, req);
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
	handshake_done((__u64)child, BPF_CORE_READ(child, __sk_common.skc_hash), &k, t_synack,
		       cfg_join ? bpf_ktime_get_ns() : 0, flags, listener, false);
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
	syn_recv_done((void *)ctx[0], (void *)ctx[1], (void *)ctx[2], (void *)ctx[5], (void *)child);
	return 0;
}

SEC("fexit/tcp_v6_syn_recv_sock")
int lw_fexit_syn_recv6(__u64 *ctx)
{
	__u64 child = 0;
	if (v4_mapped((void *)ctx[1]))
		return 0;
	bpf_get_func_ret(ctx, &child);
	syn_recv_done((void *)ctx[0], (void *)ctx[1], (void *)ctx[2], (void *)ctx[5], (void *)child);
	return 0;
}

SEC("kprobe/tcp_v4_syn_recv_sock")
int lw_kp_syn_recv4(struct pt_regs *ctx)
{
	kp_save_cpu(KP_SLOT_SYN_RECV, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), KP_PARM6(ctx));
	return 0;
}

SEC("kprobe/tcp_v6_syn_recv_sock")
int lw_kp_syn_recv6(struct pt_regs *ctx)
{
	if (!v4_mapped((const struct sk_buff *)PT_REGS_PARM2(ctx)))
		kp_save_cpu(KP_SLOT_SYN_RECV, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), KP_PARM6(ctx));
	return 0;
}

/* One return probe serves both: the v4-mapped case saved nothing at the v6
 * entry, and the inner v4 return consumed its own entry. */
SEC("kretprobe/tcp_v4_syn_recv_sock")
int BPF_KRETPROBE(lw_krp_syn_recv4, struct sock *child)
{
	struct kp_args a;
	if (kp_take_cpu(KP_SLOT_SYN_RECV, &a) == 0)
		syn_recv_done((void *)a.sk, (void *)a.skb, (void *)a.req, (void *)a.own_req, child);
	return 0;
}

SEC("kretprobe/tcp_v6_syn_recv_sock")
int BPF_KRETPROBE(lw_krp_syn_recv6, struct sock *child)
{
	struct kp_args a;
	if (kp_take_cpu(KP_SLOT_SYN_RECV, &a) == 0)
		syn_recv_done((void *)a.sk, (void *)a.skb, (void *)a.req, (void *)a.own_req, child);
	return 0;
}

/* Kernels before 6.11, fentry/kprobe handshake: the discard of a final ACK
 * that overflowed (ack_overflow). Runs on every kfree_skb: one per-CPU
 * lookup and a compare before anything else. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(lw_tp_discard, struct sk_buff *skb, void *location)
{
	__u32 zero = 0;
	struct lw_discard *d = bpf_map_lookup_elem(&lw_discard_cpu, &zero);
	if (!d || d->skb != (__u64)skb)
		return 0;
	d->skb = 0;
	/* Freed elsewhere: the second copy of an ACK whose request the first
	 * copy's overflow dropped (tcp_abort_on_overflow, req_stolen) is
	 * looked up again and answered by the listener: not discarded. */
	__u64 loc = (__u64)location;
	if (!(loc >= cfg_rcv4_lo && loc < cfg_rcv4_hi) && !(loc >= cfg_rcv6_lo && loc < cfg_rcv6_hi))
		return 0;
	/* The same memory, another packet: the overflowing one went
	 * elsewhere (consumed, or freed on another CPU) and its note stayed. */
	if (skb_seq_ack(skb) != d->seq_ack)
		return 0;
	struct lw_listener_key k = d->key; /* the listener's own */
	struct lw_listener_stats *st = listener_entry(&k);
	if (!st)
		return 0;
	sock_claim(st, d->sk, skb_segs(skb));
	return 0;
}

#endif
