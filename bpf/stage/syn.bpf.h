/* SYN: a SYN reaches a listener, and what became of it. */
#ifndef LW_STAGE_SYN_H
#define LW_STAGE_SYN_H

/* What became of a SYN, seen on one listening socket. A SYN that is
 * refused has no drop event (it is consumed); what shows is the socket's
 * drop count, bumped by tcp_listendrop(). Drop events on the socket refresh
 * last_drops, so the change since then is this SYN's. With the accept queue
 * full it was a listen overflow; else with the SYN queue full, a SYN-queue
 * drop. Each socket of an SO_REUSEPORT group is followed on its own: its
 * own drop count against its own queues. */
struct syn_seen {
	__u32 n[LW_DROP_MAX]; /* drops, by reason: counted, not yet recorded */
	__u32 ackq;     /* accept-queue length at the drop */
	bool dropped;   /* the socket's drop count moved */
	bool grew;      /* its SYN queue grew: the SYN was queued there */
	bool full_same; /* its SYN queue is full and did not grow */
};

/* The queue state of a listening socket that syn_on_socket reads. */
struct sock_queues {
	__u32 drops; /* sk_drops */
	__u32 qlen;  /* SYN-queue length */
	__u32 ackq;  /* accept-queue length */
	__u32 max;   /* sk_max_ack_backlog */
};

/* For a socket pointer the verifier knows only as a number (kretprobe). */
static __always_inline struct sock_queues queues_read(const struct sock *sk)
{
	struct sock_queues q = {
		.drops = BPF_CORE_READ(sk, sk_drops.counter),
		.qlen = BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_accept_queue.qlen.counter),
		.ackq = BPF_CORE_READ(sk, sk_ack_backlog),
		.max = BPF_CORE_READ(sk, sk_max_ack_backlog),
	};
	return q;
}

static __always_inline struct syn_seen syn_on_socket(struct lw_listener_stats *st, struct sock_base b,
						     struct sock_queues q)
{
	struct syn_seen r = {};
	__u32 drops = q.drops, qlen = q.qlen, ackq = q.ackq, max = q.max;
	if (b.fresh)
		return r; /* first sight: its current values are the baseline */
	/* Increments of sk_drops no packet has claimed yet (drops.bpf.h). A
	 * SYN makes at most one (tcp_listendrop) and claims one: more means
	 * other packets' increments not claimed yet (another CPU refusing a
	 * SYN between our reads, a final ACK not yet freed), which claim
	 * their own. Below zero: a packet claimed an increment still to
	 * come (the discard after syn_recv_sock returns, kprobe mode). A
	 * SYN queue that grew took this SYN: nothing to claim then. */
	__s32 d = (__s32)(drops - *b.drops);
	r.grew = qlen > *b.qlen;
	r.full_same = qlen > max && !r.grew;
	*b.qlen = qlen;
	if (d > 0 && !r.grew) {
		__sync_fetch_and_add(b.drops, 1);
		__u32 why = LW_DROP_OTHER;
		if (ackq > max)
			why = LW_DROP_ACCEPTQ_SYN;
		else if (qlen > max)
			why = LW_DROP_SYNQ_FULL;
		drop_count(st, why, 1);
		r.n[why] = 1;
		r.ackq = ackq;
		r.dropped = true;
	}
	if (r.dropped || r.grew) {
		st->last_qlen = qlen;
		st->last_ackq = ackq;
	}
	return r;
}

/* The drop records of what syn_on_socket counted: after the loop over the
 * group, so that the record code is not repeated per socket. */
static __always_inline void syn_records(struct lw_listener_stats *st, const struct lw_listener_key *k,
					const struct syn_seen *r, const struct lw_peer *p)
{
	if (!r->dropped)
		return;
	for (int i = 0; i < LW_DROP_MAX; i++)
		if (r->n[i])
			drop_record(st, k, i, r->n[i], p, r->ackq);
}

/* A SYN that left a full SYN queue without growing it, and was not
 * dropped, was answered with a cookie (inferred: exact unless requests
 * expired in between). */
static __always_inline void syn_cookie(struct lw_listener_stats *st, struct syn_seen r)
{
	if (!r.dropped && !r.grew && r.full_same)
		__sync_fetch_and_add(&st->cookies_sent, 1);
}

/* fentry/kprobe mode: the listener is an argument; the outcome is read when
 * tcp_conn_request returns. */
static __always_inline void syn_at_listener(const struct sock *sk, const struct lw_peer *p)
{
	struct lw_listener_key k;
	key_from_sk(&k, sk);
	struct lw_listener_stats *st = listener_entry(&k);
	if (!st) {
		count(LW_C_UNATTRIBUTED_SYN);
		return;
	}
	__sync_fetch_and_add(&st->syns, 1);
	struct sock_queues q = queues_read(sk);
	struct sock_base b;
	if (!sock_base(st, (__u64)sk, q.drops, q.qlen, &b))
		return;
	struct syn_seen r = syn_on_socket(st, b, q);
	syn_records(st, &k, &r, p);
	syn_cookie(st, r);
}

SEC("fexit/tcp_conn_request")
int BPF_PROG(lw_fexit_conn_request, struct request_sock_ops *rsk_ops, void *af_ops,
	     struct sock *sk, struct sk_buff *skb)
{
	struct lw_peer p = {};
	peer_from_skb(skb, &p);
	syn_at_listener(sk, &p);
	return 0;
}

SEC("kprobe/tcp_conn_request")
int BPF_KPROBE(lw_kp_conn_request, void *rsk_ops, void *af_ops, struct sock *sk)
{
	kp_save_cpu(KP_SLOT_CONN_REQUEST, (__u64)sk, 0, 0, 0);
	return 0;
}

SEC("kretprobe/tcp_conn_request")
int BPF_KRETPROBE(lw_krp_conn_request)
{
	struct kp_args a;
	if (kp_take_cpu(KP_SLOT_CONN_REQUEST, &a) == 0)
		syn_at_listener((const struct sock *)a.sk, NULL); /* the skb is not kept */
	return 0;
}

/* Tracepoint mode: syn_on_socket for one socket of the group, at a socket
 * address kept in the entry, its outcome added to all. */
static __always_inline void syn_on_any(struct lw_listener_stats *st, __u64 sk, struct sock_base b,
				       struct syn_seen *all)
{
	/* A socket address from a map is a number to the verifier: cast
	 * (free, inlined) so its fields are plain loads, not a helper call
	 * each. */
	const struct inet_connection_sock *icsk = RDONLY(struct inet_connection_sock, sk);
	const struct sock *bsk = &icsk->icsk_inet.sk;
	struct sock_queues q = {
		.drops = bsk->sk_drops.counter,
		.qlen = icsk->icsk_accept_queue.qlen.counter,
		.ackq = bsk->sk_ack_backlog,
		.max = bsk->sk_max_ack_backlog,
	};
	struct syn_seen r = syn_on_socket(st, b, q);
	for (int j = 0; j < LW_DROP_MAX; j++)
		all->n[j] += r.n[j];
	if (r.dropped)
		all->ackq = r.ackq;
	all->dropped |= r.dropped;
	all->grew |= r.grew;
	all->full_same |= r.full_same;
}

/* Tracepoint mode, a SYN that found no open listener, taken by the socket
 * of st whose close has begun (find_listener_in with closing). A socket
 * closing while others of its group stay open is not looked at: a SYN it
 * refuses in that window is not counted. */
static __always_inline void syn_closing(struct lw_listener_stats *st, const struct lw_listener_key *k,
					const struct lw_peer *p)
{
	__sync_fetch_and_add(&st->syns, 1);
	struct syn_seen r = {};
	struct sock_base b = {
		.drops = &st->closing_drops,
		.qlen = &st->closing_qlen,
	};
	/* Read once: another CPU's SYN may have found it closed since. */
	__u64 sk = st->closing_sk;
	if (sk)
		syn_on_any(st, sk, b, &r);
	syn_records(st, k, &r, p);
	syn_cookie(st, r);
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

	/* This program loads only on 6.3+ (consume_skb's location): the
	 * typed casts are always there. The headers are read through them:
	 * plain loads, not a helper call. */
	unsigned char *head = skb->head;
	__u16 nh = skb->network_header;
	__u16 th = skb->transport_header;
	__u16 proto = skb->protocol;
	__u32 off = (__u16)(th - nh);
	/* IP options or IPv6 extension headers: not a plain SYN. */
	bool v4 = proto == bpf_htons(ETH_P_IP) && off == 20;
	if (!v4 && !(proto == bpf_htons(ETH_P_IPV6) && off == 40))
		return 0;
	const union tcp_word_hdr *tcp = RDONLY(union tcp_word_hdr, head + th);
	/* The fourth word: data offset, flags, window. SYN without ACK. */
	if (((bpf_ntohl(tcp->words[3]) >> 16) & 0x12) != 0x02)
		return 0;

	struct lw_listener_key k = {};
	struct lw_peer p = {};
	if (v4) {
		const struct iphdr *ip = RDONLY(struct iphdr, head + nh);
		__u32 d = ip->daddr, sa = ip->saddr;
		k.family = AF_INET;
		__builtin_memcpy(k.addr, &d, 4);
		__builtin_memcpy(p.addr, &sa, 4);
	} else {
		const struct ipv6hdr *ip6 = RDONLY(struct ipv6hdr, head + nh);
		__u32 d[4], sa[4];
		for (int i = 0; i < 4; i++) {
			d[i] = ip6->daddr.in6_u.u6_addr32[i];
			sa[i] = ip6->saddr.in6_u.u6_addr32[i];
		}
		k.family = AF_INET6;
		__builtin_memcpy(k.addr, d, 16);
		__builtin_memcpy(p.addr, sa, 16);
	}
	p.family = k.family;
	p.port = bpf_ntohs(tcp->hdr.source);
	k.port = bpf_ntohs(tcp->hdr.dest);
	const struct dst_entry *dst = RDONLY(struct dst_entry, skb->_skb_refdst & ~1UL);
	k.netns = dst->dev->nd_net.net->ns.inum;
	struct lw_listener_stats *st = find_listener(&k);
	if (!st) {
		/* None open: a listener whose close has begun still takes
		 * the SYNs that found it listening (a refused one is a drop
		 * the kernel counts). Its own path: merged into the group's,
		 * the verifier's paths would multiply past its limit. */
		st = find_listener_in(&k, true);
		if (st)
			syn_closing(st, &k, &p);
		else
			count(LW_C_UNATTRIBUTED_SYN);
		return 0;
	}
	__sync_fetch_and_add(&st->syns, 1);
	/* The packet does not say which socket of the group took it: look at
	 * each; the one whose drop count moved or whose queue grew did. */
	struct syn_seen all = {};
	for (int i = 0; i < LW_GROUP_MAX; i++) {
		__u64 sk = st->socks[i];
		if (!sk)
			continue;
		struct sock_base b = {
			.drops = &st->sock_drops[i],
			.qlen = &st->sock_qlen[i],
		};
		syn_on_any(st, sk, b, &all);
	}
	syn_records(st, &k, &all, &p);
	syn_cookie(st, all);
	return 0;
}

#endif
