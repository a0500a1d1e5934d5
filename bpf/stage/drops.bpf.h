/* Drops after the SYN, and SYN-ACK retransmits. */
#ifndef LW_STAGE_DROPS_H
#define LW_STAGE_DROPS_H

/* The final ACK (or a cookie ACK) of a connection the full accept queue
 * cannot take is freed with the listener as rx_sk (6.11+; reason
 * TCP_LISTEN_OVERFLOW since 6.15, NO_SOCKET from cookie_v4_check). Reason
 * numbers differ per kernel: resolved by name.
 *
 * What moved the listener's sk_drops is accounted per packet, not read as
 * "everything since the last look": two copies of one final ACK on two
 * CPUs (a retransmission crossing the original) each bump sk_drops before
 * either is freed, and the first free would otherwise take both for its
 * own and the second find nothing. Each freed packet claims the increments
 * it made (added to the slot's baseline); what no packet claims stays for
 * the next one that made an increment it cannot name.
 * - freed in tcp_v4_rcv/tcp_v6_rcv: the discard added the packet to
 *   sk_drops (its segments), and a final-ACK overflow also called
 *   tcp_listendrop first;
 * - freed elsewhere (cookie_v4_check, the listener's own reset): only a
 *   failed tcp_v4_syn_recv_sock's tcp_listendrop, if any. */
static __always_inline bool at(__u64 loc, __u64 lo, __u64 hi)
{
	return loc >= lo && loc < hi;
}

SEC("tp_btf/kfree_skb")
int BPF_PROG(lw_tp_kfree, struct sk_buff *skb, void *location, enum skb_drop_reason reason,
	     struct sock *rx_sk)
{
	if (!rx_sk || rx_sk->__sk_common.skc_state != TCP_LISTEN)
		return 0;
	if (rx_sk->sk_protocol != IPPROTO_TCP)
		return 0;
	__u64 loc = (__u64)location;
	bool in_rcv = at(loc, cfg_rcv4_lo, cfg_rcv4_hi) || at(loc, cfg_rcv6_lo, cfg_rcv6_hi);
	/* A bad checksum is freed in tcp_v4_rcv without touching sk_drops. */
	if (in_rcv && reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_TCP_CSUM))
		return 0;
	struct lw_listener_key k;
	key_from_btf_sk(&k, rx_sk);
	struct lw_listener_stats *st = listener_entry(&k);
	if (!st)
		return 0;
	__u32 drops = rx_sk->sk_drops.counter;
	bool full = rx_sk->sk_ack_backlog > rx_sk->sk_max_ack_backlog;
	/* 6.15+ names the final-ACK overflow; 6.11 to 6.14 report it as
	 * NOT_SPECIFIED (with the queue full). */
	__u32 nosock = bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NO_SOCKET);
	__u32 overflow = bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_NOT_SPECIFIED);
	bool named = bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_TCP_LISTEN_OVERFLOW);
	if (named)
		overflow = bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_TCP_LISTEN_OVERFLOW);
	__u32 why, claim;
	if (in_rcv) {
		claim = skb_segs(skb);
		if (reason != overflow || !(named || full))
			why = LW_DROP_MAX; /* a discard, not a listen drop */
		else {
			why = LW_DROP_ACCEPTQ_ACK;
			claim += 1; /* tcp_listendrop */
		}
	} else if (full && reason == nosock) {
		why = LW_DROP_ACCEPTQ_COOKIE_ACK;
		claim = 1;
	} else {
		/* Answered by the listener itself: a listen drop only if one is
		 * left unclaimed, e.g. the second copy of a final ACK that
		 * overflowed too and then found its request already dropped by
		 * the first (tcp_check_req's req_stolen), looked up again. */
		why = full ? LW_DROP_ACCEPTQ_ACK : LW_DROP_OTHER;
		claim = 1;
	}
	struct sock_base b;
	/* A socket first seen here: this packet's increments are the ones
	 * that moved it. */
	if (!sock_base(st, (__u64)rx_sk, drops - claim, 0, &b))
		return 0;
	if (!in_rcv && why != LW_DROP_ACCEPTQ_COOKIE_ACK && (__s32)(drops - *b.drops) <= 0)
		return 0; /* nothing unclaimed: not a listen drop (a stray segment) */
	__sync_fetch_and_add(b.drops, claim);
	if (why == LW_DROP_MAX)
		return 0;
	struct lw_peer p = {};
	peer_from_skb(skb, &p);
	drop(st, &k, why, 1, &p, rx_sk->sk_ack_backlog);
	return 0;
}

SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(lw_tp_synack, const struct sock *sk, const struct request_sock *req)
{
	struct lw_listener_key k;
	key_from_btf_sk(&k, sk);
	struct lw_listener_stats *st = listener_entry(&k);
	if (st)
		__sync_fetch_and_add(&st->synack_retrans, 1);
	return 0;
}

#endif
