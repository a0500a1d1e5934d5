/* Drops after the SYN, and SYN-ACK retransmits. */
#ifndef LW_STAGE_DROPS_H
#define LW_STAGE_DROPS_H

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
	struct sock_base b;
	/* A socket first seen here: this drop is the one that moved it. */
	if (!sock_base(st, (__u64)rx_sk, drops - 1, 0, &b))
		return 0;
	__u32 d = drops - *b.drops;
	*b.drops = drops;
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
	__u32 why = LW_DROP_OTHER;
	if (reason == overflow && (named || full))
		why = LW_DROP_ACCEPTQ_ACK;
	else if (full && reason == nosock)
		why = LW_DROP_ACCEPTQ_COOKIE_ACK;
	/* else: one drop, counted twice in sk_drops (tcp_listendrop and the
	 * discard path); it is still one ListenDrop. */
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
	struct lw_listener_stats *st = find_listener(&k);
	if (st)
		__sync_fetch_and_add(&st->synack_retrans, 1);
	return 0;
}

#endif
