/* Listener identity and lookup, counters, the ring buffer: shared by every stage. */
#ifndef LW_LISTENER_H
#define LW_LISTENER_H

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

/* The handshake -> accept join: lw_conn_slots, then lw_conns. A slot is
 * found by the child's connection hash (sk_hash, set when the child entered
 * the established table, before any hook sees it: the verifier allows no
 * arithmetic on a socket pointer), and owned by the child's address. Its
 * lock is taken and released with atomic operations, which order the
 * writes of a timeline before the release on every architecture. A reader
 * that finds the slot locked takes the slow path: the LRU. */
static __always_inline struct lw_conn_slot *slot_of(__u32 hash)
{
	__u32 idx = hash & (LW_CONN_SLOTS - 1);
	return bpf_map_lookup_elem(&lw_conn_slots, &idx);
}

static __always_inline bool slot_lock(struct lw_conn_slot *s)
{
	return s->busy == 0 && __sync_val_compare_and_swap(&s->busy, 0, 1) == 0;
}

static __always_inline void slot_unlock(struct lw_conn_slot *s)
{
	__sync_lock_test_and_set(&s->busy, 0);
}

/* A slot held this long (ns) by a child nobody accepted. A child that
 * failed in the queue keeps its timeline for accept(); if its listener
 * then closes, no state change says it is gone. Such a slot is taken over
 * and its timeline moved to lw_conns (kept, and evictable there). */
#define LW_SLOT_STALE_NS (10ULL * 1000000000ULL)

static __always_inline bool slot_stale(const struct lw_conn_slot *s, const struct lw_conn *c)
{
	return s->sk && c->t_est > s->conn.t_est + LW_SLOT_STALE_NS;
}

static __always_inline void conn_put(__u64 child, __u32 hash, const struct lw_conn *c)
{
	struct lw_conn_slot *s = slot_of(hash);
	/* Free, or left by a socket freed at this address whose close was
	 * not seen: ours. */
	if (s && (s->sk == 0 || s->sk == child || slot_stale(s, c)) && slot_lock(s)) {
		bool mine = s->sk == 0 || s->sk == child;
		bool stale = !mine && slot_stale(s, c);
		if (stale) {
			__u64 old = s->sk;
			struct lw_conn oc = s->conn;
			bpf_map_update_elem(&lw_conns, &old, &oc, BPF_ANY);
		}
		if (mine || stale) {
			s->sk = child;
			s->conn = *c;
		}
		slot_unlock(s);
		if (mine || stale)
			return;
	}
	bpf_map_update_elem(&lw_conns, &child, c, BPF_ANY);
}

/* Takes the child's timeline out of the join; false when it is not there. */
static __always_inline bool conn_take(__u64 child, __u32 hash, struct lw_conn *out)
{
	struct lw_conn_slot *s = slot_of(hash);
	if (s && s->sk == child && slot_lock(s)) {
		bool mine = s->sk == child;
		if (mine) {
			*out = s->conn;
			s->sk = 0;
		}
		slot_unlock(s);
		if (mine)
			return true;
	}
	struct lw_conn *c = bpf_map_lookup_elem(&lw_conns, &child);
	if (!c)
		return false;
	*out = *c;
	bpf_map_delete_elem(&lw_conns, &child);
	return true;
}

static __always_inline void conn_forget(__u64 child, __u32 hash)
{
	struct lw_conn_slot *s = slot_of(hash);
	if (s && s->sk == child && slot_lock(s)) {
		bool mine = s->sk == child;
		if (mine)
			s->sk = 0;
		slot_unlock(s);
		if (mine)
			return;
	}
	bpf_map_delete_elem(&lw_conns, &child);
}

/* How long after its close began a listening socket's own packets and timers
 * still count (listener_entry, closing_live). */
#define LW_CLOSING_NS 1000000000ULL

/* Whether the entry's socket whose close has begun (closing_sk) may still be
 * handed SYNs by the kernel: its state reads TCP_LISTEN (stored after the
 * state-change tracepoint), within LW_CLOSING_NS. Forgotten once closed.
 * Tracepoint mode only (a typed read of a socket address: 6.3+). */
static __always_inline bool closing_live(struct lw_listener_stats *st)
{
	__u64 csk = st->closing_sk;
	if (!csk)
		return false;
	const struct sock *sk = RDONLY(struct sock, csk);
	if (sk->__sk_common.skc_state == TCP_LISTEN && bpf_ktime_get_ns() - st->closing_at < LW_CLOSING_NS)
		return true;
	/* Unless another close replaced it meanwhile. */
	__sync_val_compare_and_swap(&st->closing_sk, csk, 0);
	return false;
}

/* The entry at k: open (closing false), or one whose closing socket still
 * takes SYNs (closing true). A closed listener keeps its entry (its final
 * counters stay readable until it listens again or is evicted) but takes no
 * traffic: network namespace inodes are reused, so a dead namespace's
 * 127.0.0.1:P would otherwise capture the SYNs of a new namespace's [::]:P. */
static __always_inline struct lw_listener_stats *listener_at(const struct lw_listener_key *k, bool closing)
{
	struct lw_listener_stats *st = bpf_map_lookup_elem(&lw_listeners, k);
	if (!st)
		return NULL;
	if (!closing)
		return st->sockets > 0 ? st : NULL;
	return closing_live(st) ? st : NULL;
}

/* The listener a packet or child to (netns, family, addr, port) belongs to:
 * the specific address first, then the wildcard, then, for IPv4, a
 * dual-stack IPv6 wildcard; the kernel's own preference order. With
 * closing, the same among the listeners whose close has begun. */
static __always_inline struct lw_listener_stats *
find_listener_in(struct lw_listener_key *k, bool closing)
{
	struct lw_listener_stats *st = listener_at(k, closing);
	if (st)
		return st;
	__u8 saved[16];
	__builtin_memcpy(saved, k->addr, 16);
	__builtin_memset(k->addr, 0, 16);
	st = listener_at(k, closing);
	if (st)
		return st;
	if (k->family == AF_INET) {
		k->family = AF_INET6;
		st = listener_at(k, closing);
		if (st)
			return st;
		k->family = AF_INET;
	}
	/* Not found: keep the key as the packet or socket said. */
	__builtin_memcpy(k->addr, saved, 16);
	return NULL;
}

static __always_inline struct lw_listener_stats *find_listener(struct lw_listener_key *k)
{
	return find_listener_in(k, false);
}

/* The entry of a listening socket, k being the socket's own key. Its close
 * runs listener_down from the state-change tracepoint, which the kernel fires
 * before it stores TCP_CLOSE, and a request sock's timer or a packet that
 * found it listening just before acts microseconds later: SYN-ACK
 * retransmits and drops the kernel counts after listenwatch saw the close
 * (1 or 2 of a few hundred retransmits when the close lands among them:
 * TestSynackRetransmitsAtClose). They count on the entry the close just
 * marked. The capture find_listener guards against (a dead namespace's
 * entry taking the packets of a new namespace with its inode) cannot happen
 * with the socket's own key: a listening socket with that key in the new
 * namespace made the entry open at its listen(). The time limit keeps a
 * socket whose listen() was missed from counting on a stale entry. */
static __always_inline struct lw_listener_stats *listener_entry(struct lw_listener_key *k)
{
	struct lw_listener_stats *st = bpf_map_lookup_elem(&lw_listeners, k);
	/* No socket and no close time: the close between its count and its
	 * clock read (or a listen() between its reset and its count). */
	if (st && (st->sockets > 0 || !st->closed_at || bpf_ktime_get_ns() - st->closed_at < LW_CLOSING_NS))
		return st;
	return find_listener(k);
}

/* The group's slots: a listening socket is added at listen() (or when first
 * seen) and removed at close. A group larger than LW_GROUP_MAX has sockets
 * without a slot: their SYN-time drops are not classified in tracepoint
 * mode (the drops counted in the other modes and by the ACK hooks are). */
static __always_inline int group_slot(const struct lw_listener_stats *st, __u64 sk)
{
	for (int i = 0; i < LW_GROUP_MAX; i++)
		if (st->socks[i] == sk)
			return i;
	return -1;
}

/* Adds n to the increments of a listening socket's sk_drops that packets
 * have claimed (drops.bpf.h): its group slot's baseline, or its lw_socks
 * entry beyond the group's slots. */
static __always_inline void sock_claim(struct lw_listener_stats *st, __u64 sk, __u32 n)
{
	int i = group_slot(st, sk);
	if (i >= 0) {
		__sync_fetch_and_add(&st->sock_drops[i & (LW_GROUP_MAX - 1)], n);
		return;
	}
	if (sk == st->closing_sk) {
		__sync_fetch_and_add(&st->closing_drops, n);
		return;
	}
	struct lw_sock *s = bpf_map_lookup_elem(&lw_socks, &sk);
	if (s)
		__sync_fetch_and_add(&s->last_drops, n);
}

/* Adds sk to the group, with drops and qlen as its baseline (fresh) unless
 * it is there already. Returns its slot, or -1 when the group is full. */
static __always_inline int group_add(struct lw_listener_stats *st, __u64 sk, __u32 drops, __u32 qlen,
				     bool *fresh)
{
	int free = -1;
	*fresh = false;
	for (int i = 0; i < LW_GROUP_MAX; i++) {
		if (st->socks[i] == sk)
			return i;
		if (!st->socks[i] && free < 0)
			free = i;
	}
	if (free < 0)
		return -1;
	free &= LW_GROUP_MAX - 1;
	/* The baseline before the socket: a SYN reaches the socket only
	 * after listen() hashed it, after this. */
	st->sock_drops[free] = drops;
	st->sock_qlen[free] = qlen;
	st->socks[free] = sk;
	*fresh = true;
	return free;
}

static __always_inline void group_del(struct lw_listener_stats *st, __u64 sk)
{
	for (int i = 0; i < LW_GROUP_MAX; i++)
		if (st->socks[i] == sk)
			st->socks[i] = 0;
}

/* listener_down: the socket leaves the group, and its baseline moves to the
 * entry's closing slot, for the SYNs and drops the kernel still hands it
 * until it stores TCP_CLOSE (a SYN refused then was one drop short). One
 * closing socket per entry: the latest. closing_sk is written last, so a
 * reader that sees it sees its baseline. */
static __always_inline void closing_start(struct lw_listener_stats *st, __u64 sk)
{
	__u32 drops, qlen;
	int i = group_slot(st, sk);
	if (i >= 0) {
		drops = st->sock_drops[i & (LW_GROUP_MAX - 1)];
		qlen = st->sock_qlen[i & (LW_GROUP_MAX - 1)];
	} else {
		struct lw_sock *s = bpf_map_lookup_elem(&lw_socks, &sk);
		if (!s)
			return;
		drops = s->last_drops;
		qlen = s->last_qlen;
	}
	st->closing_sk = 0;
	st->closing_drops = drops;
	st->closing_qlen = qlen;
	st->closing_at = bpf_ktime_get_ns();
	__sync_lock_test_and_set(&st->closing_sk, sk); /* an exchange: ordered after the baseline */
}

/* Where a listening socket's drop count and SYN-queue length were last
 * seen: its slot in the group, else (a group larger than LW_GROUP_MAX) its
 * lw_socks entry. fresh: seen for the first time, the baseline is its
 * current values. */
struct sock_base {
	__u32 *drops;
	__u32 *qlen;
	bool fresh;
};

static __always_inline bool sock_base(struct lw_listener_stats *st, __u64 sk, __u32 drops, __u32 qlen,
				      struct sock_base *b)
{
	/* Closing: its baseline, and not added back (a slot would outlive
	 * the socket). */
	if (sk == st->closing_sk) {
		b->drops = &st->closing_drops;
		b->qlen = &st->closing_qlen;
		b->fresh = false;
		return true;
	}
	int i = group_add(st, sk, drops, qlen, &b->fresh);
	if (i >= 0) {
		b->drops = &st->sock_drops[i & (LW_GROUP_MAX - 1)];
		b->qlen = &st->sock_qlen[i & (LW_GROUP_MAX - 1)];
		return true;
	}
	struct lw_sock *s = bpf_map_lookup_elem(&lw_socks, &sk);
	if (!s) {
		struct lw_sock init = { .last_drops = drops, .last_qlen = qlen };
		bpf_map_update_elem(&lw_socks, &sk, &init, BPF_NOEXIST);
		b->fresh = true;
		s = bpf_map_lookup_elem(&lw_socks, &sk);
		if (!s)
			return false;
	}
	b->drops = &s->last_drops;
	b->qlen = &s->last_qlen;
	return true;
}

static __always_inline void set_owner(struct lw_listener_stats *st)
{
	st->pid = bpf_get_current_pid_tgid() >> 32;
	bpf_get_current_comm(st->comm, sizeof(st->comm));
}

/* Remembers the current process among the listener's owners: no write when
 * it is already there (the common case on every accept). */
static __always_inline void add_owner(struct lw_listener_stats *st, __u32 tgid)
{
	int free = -1;
	for (int i = 0; i < LW_OWNERS_MAX; i++) {
		if (st->owners[i] == tgid)
			return;
		if (!st->owners[i] && free < 0)
			free = i;
	}
	if (free < 0)
		free = __sync_fetch_and_add(&st->owner_next, 1);
	st->owners[free & (LW_OWNERS_MAX - 1)] = tgid;
}

static __always_inline void submit(struct lw_event *e)
{
	/* A wake-up per record costs 6-8x the program's own time; the reader
	 * polls, and is woken only once this CPU has sent cfg_wakeup_records
	 * since it last woke it (sized by the loader so that all CPUs
	 * together stay under a quarter of the ring). Counted per CPU: no
	 * shared cache line and no helper call, where asking the ring for
	 * its backlog was one of each. A preempted accept program may lose
	 * a count here: a wake-up a little early or late, nothing else. */
	__u32 zero = 0;
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u32 *n = bpf_map_lookup_elem(&lw_unwoken, &zero);
	if (n && ++*n >= cfg_wakeup_records) {
		*n = 0;
		flags = BPF_RB_FORCE_WAKEUP;
	}
	bpf_ringbuf_submit(e, flags);
}

/* The client of a refused connection, when the hook can see it. */
struct lw_peer {
	__u8 addr[16];
	__u16 port;   /* host order; 0: unknown */
	__u16 family; /* of addr: AF_INET uses 4 bytes */
};

/* The client of a packet, from its IPv4 (without options) or IPv6 header
 * and the TCP ports; left unknown for anything else. */
/* What tcp_v{4,6}_rcv adds to sk_drops when it discards a packet
 * (sk_drops_add): its segments, at least one. */
static __always_inline __u32 skb_segs(const struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u32 end = BPF_CORE_READ(skb, end);
	__u16 segs = BPF_CORE_READ((struct skb_shared_info *)(head + end), gso_segs);
	return segs ? segs : 1;
}

/* A TCP packet's sequence and acknowledgment numbers, as one word: tells a
 * packet from another that a freed skb's memory was reused for. */
static __always_inline __u64 skb_seq_ack(const struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u64 w = 0;
	bpf_probe_read_kernel(&w, sizeof(w), head + th + 4);
	return w;
}

static __always_inline void peer_from_skb(const struct sk_buff *skb, struct lw_peer *p)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u8 h[40 + 2];
	__u32 off = (__u16)(th - nh);
	if (off != 20 && off != 40)
		return;
	if (bpf_probe_read_kernel(h, sizeof(h), head + nh))
		return;
	if ((h[0] >> 4) == 4 && off == 20) {
		__builtin_memcpy(p->addr, &h[12], 4);
		p->port = ((__u16)h[20] << 8) | h[21];
		p->family = AF_INET;
	} else if ((h[0] >> 4) == 6 && off == 40) {
		__builtin_memcpy(p->addr, &h[8], 16);
		p->family = AF_INET6;
		/* the ports follow the 40-byte header: read apart */
		__u8 sp[2];
		if (!bpf_probe_read_kernel(sp, sizeof(sp), head + th))
			p->port = ((__u16)sp[0] << 8) | sp[1];
	}
}

/* A drop of n connection attempts on a listener, in two halves: the
 * counter (exact, every drop) and the record, sent only within
 * LW_DROP_EVENTS_PER_SEC per second per listener, so a flood costs a
 * counter add per packet and no more. What is not sent is counted by
 * reason: records + unreported == drops. */
static __always_inline void drop_count(struct lw_listener_stats *st, __u32 why, __u32 n)
{
	__sync_fetch_and_add(&st->drops[why < LW_DROP_MAX ? why : LW_DROP_OTHER], n);
}

static __always_inline void drop_record(struct lw_listener_stats *st, const struct lw_listener_key *k,
					__u32 why, __u32 n, const struct lw_peer *p, __u32 ackq)
{
	if (why >= LW_DROP_MAX)
		why = LW_DROP_OTHER;
	__u64 now = bpf_ktime_get_ns();
	__u64 sec = now / 1000000000;
	if (st->drop_window != sec) {
		/* Two CPUs at a second's edge may both reset: a few more
		 * records that second, never a wrong count. */
		st->drop_window = sec;
		st->drop_window_sent = 0;
	}
	if (__sync_fetch_and_add(&st->drop_window_sent, 1) >= LW_DROP_EVENTS_PER_SEC) {
		__sync_fetch_and_add(&st->drops_unreported[why], n);
		return;
	}
	struct lw_event *e = bpf_ringbuf_reserve(&lw_events, sizeof(*e), 0);
	if (!e) {
		count(LW_C_RINGBUF_LOST);
		__sync_fetch_and_add(&st->drops_unreported[why], n);
		return;
	}
	e->t_synack = 0;
	e->t_est = 0;
	e->t_acc = now;
	e->listener = *k;
	__builtin_memset(e->raddr, 0, sizeof(e->raddr));
	e->rport = 0;
	if (p && p->port) {
		/* The record's address has the listener's family: an IPv4
		 * client of a dual-stack listener is written v4-mapped. */
		if (p->family == AF_INET && k->family == AF_INET6) {
			e->raddr[10] = 0xff;
			e->raddr[11] = 0xff;
			__builtin_memcpy(&e->raddr[12], p->addr, 4);
		} else {
			__builtin_memcpy(e->raddr, p->addr, 16);
		}
		e->rport = p->port;
	}
	e->flags = 0;
	e->pid = 0;
	e->ackq = ackq;
	e->kind = LW_K_DROP;
	e->reason = why;
	e->count = n;
	submit(e);
}

static __always_inline void drop(struct lw_listener_stats *st, const struct lw_listener_key *k,
				 __u32 why, __u32 n, const struct lw_peer *p, __u32 ackq)
{
	drop_count(st, why, n);
	drop_record(st, k, why, n, p, ackq);
}

#endif
