/* Registry: listen() and close() of listeners. */
#ifndef LW_STAGE_REGISTRY_H
#define LW_STAGE_REGISTRY_H

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
	/* A new socket at the address of one that closed. */
	if (st->closing_sk == (__u64)sk)
		st->closing_sk = 0;
	st->backlog = sk->sk_max_ack_backlog;
	/* Its drop count from here on is followed: the baseline is now, also
	 * for a socket that was already in the group. */
	__u64 key = (__u64)sk;
	__u32 drops = sk->sk_drops.counter;
	bool fresh;
	int i = group_add(st, key, drops, 0, &fresh);
	if (i >= 0) {
		st->sock_drops[i & (LW_GROUP_MAX - 1)] = drops;
		st->sock_qlen[i & (LW_GROUP_MAX - 1)] = 0;
	} else {
		struct lw_sock init = { .last_drops = drops };
		bpf_map_update_elem(&lw_socks, &key, &init, BPF_ANY);
	}
	/* listen(2) runs this in process context: its second argument is the
	 * backlog the application asked for, before the somaxconn cap. */
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (regs && LW_SYSCALL_NR(regs) == LW_NR_LISTEN)
		st->req_backlog = LW_SYSCALL_ARG2(regs);
	set_owner(st);
	add_owner(st, st->pid);
}

static __always_inline void listener_down(const struct sock *sk)
{
	struct lw_listener_key k;
	key_from_btf_sk(&k, sk);
	struct lw_listener_stats *st = bpf_map_lookup_elem(&lw_listeners, &k);
	if (st) {
		/* Its baseline to the closing slot before the entry says
		 * closed: a SYN on another CPU finds it in one or the other. */
		closing_start(st, (__u64)sk);
		group_del(st, (__u64)sk); /* never read a freed socket's queues */
		/* The last socket closing starts the entry's retention: user
		 * space forgets it once its final counters have been read for
		 * a while. */
		if (st->sockets > 0 && __sync_fetch_and_add(&st->sockets, -1) == 1)
			st->closed_at = bpf_ktime_get_ns();
	}
	__u64 key = (__u64)sk;
	bpf_map_delete_elem(&lw_socks, &key);
}

#endif
