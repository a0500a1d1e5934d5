/* Types shared between the BPF programs and Go. bpf2go generates the Go side
 * from these with -type, so nothing here is mirrored by hand. */
#ifndef LISTENWATCH_H
#define LISTENWATCH_H

/* A listener's identity: what an SRE calls "the listener". Sockets of one
 * SO_REUSEPORT group share it, so they share one entry; a restarted service
 * keeps its series. addr holds 4 bytes for AF_INET, 16 for AF_INET6. */
struct lw_listener_key {
	__u32 netns;
	__u16 port; /* host order */
	__u16 family;
	__u8 addr[16];
};

/* Why a listener refused a connection; each maps to kernel counters. */
enum lw_drop {
	LW_DROP_ACCEPTQ_SYN = 0,    /* SYN while the accept queue was full (ListenOverflows) */
	LW_DROP_ACCEPTQ_ACK,        /* final ACK while the accept queue was full (ListenOverflows) */
	LW_DROP_ACCEPTQ_COOKIE_ACK, /* cookie ACK while the accept queue was full (ListenOverflows) */
	LW_DROP_SYNQ_FULL,          /* SYN dropped, SYN queue full, no cookies (TCPReqQFullDrop) */
	LW_DROP_OTHER,              /* any other ListenDrops on this listener */
	LW_DROP_MAX,
};

enum lw_accept_err {
	LW_AERR_EMFILE = 0, /* per-process fd limit (RLIMIT_NOFILE) */
	LW_AERR_ENFILE,     /* system-wide file limit (fs.file-max) */
	LW_AERR_MAX,
};

/* Bounds of the per-listener arrays, shared with Go (the generated array
 * types carry them). */
enum lw_limits {
	LW_GROUP_MAX = 8,  /* sockets of an SO_REUSEPORT group followed one by one */
	LW_OWNERS_MAX = 4, /* processes remembered per listener */
	/* Drop records per listener per second (about: CPUs racing at a
	 * second's edge may add a few); the rest are counted, not sent. */
	LW_DROP_EVENTS_PER_SEC = 100,
	/* Slots of the join's fast level (lw_conn_slots), a power of two:
	 * 256 cache lines, 16 KiB, which the kernel allocates from its
	 * direct map (up to 32 KiB), so that a slot costs no TLB miss. A
	 * one-off experiment measured 3,650 ns of BPF time per connection
	 * with 256 slots against 4,200 with 32,768 (2 MiB, vmalloc'd). */
	LW_CONN_SLOTS = 256,
};

/* What a ring-buffer record is. */
enum lw_kind {
	LW_K_ACCEPT = 0, /* a connection returned by accept() */
	LW_K_DROP,       /* a refused connection attempt (rate-limited) */
};

/* Per-listener counters, written with atomic adds by every stage and read by
 * the exporter at scrape time.
 *
 * Laid out by who writes what, per connection: the SYN and handshake
 * programs (on the CPU that receives the packets) and the accept program
 * (on the application's CPU) each keep their own cache lines, with fields
 * written only on failures, or never, between them and before them (the
 * hash key just before the value is read by every lookup). A field written
 * per connection beside one another CPU reads per connection moves the
 * line between the CPUs on every connection: `make bench-bpf` total 0.987
 * [0.980, 0.993] against the layout by topic (README, Performance). */
struct lw_listener_stats {
	/* Cold: written on failures only. */
	__s64 sockets;    /* listening sockets with this identity now */
	__u64 drops[LW_DROP_MAX];
	__u64 cookies_sent;   /* SYNs answered with a SYN cookie */
	__u64 synack_retrans; /* SYN-ACKs retransmitted */

	/* The SYN and handshake programs': written per connection. */
	__u64 syns;       /* SYNs received by the listener */
	__u64 handshakes; /* children created by a completed handshake */
	/* Per slot of socks: the socket's SYN-queue length and drop count
	 * (sk_drops, as far as claimed: drops.bpf.h) when last looked at, so
	 * that a change is attributed to the socket it happened on. Kept
	 * here, not in a map of their own: the SYN program reads them with
	 * the entry it already holds (one hash lookup less per SYN: its
	 * program ~20% faster here). */
	__u32 sock_qlen[LW_GROUP_MAX];
	__u32 last_qlen;  /* SYN-queue length of the socket that took the last SYN */
	__u32 last_ackq;  /* accept-queue length of the socket that took the last SYN */
	__u64 socks[LW_GROUP_MAX]; /* its listening sockets (struct sock *), 0: free slot */
	__u32 sock_drops[LW_GROUP_MAX];
	/* A socket whose close has begun (listener_down ran: its slot is
	 * gone) while the kernel may still hand it packets; 0: none. Read
	 * per SYN, written at close. */
	__u64 closing_sk;

	/* Cold. */
	__u64 closing_at;    /* ns, CLOCK_MONOTONIC: when closing_sk's close began */
	__u32 closing_drops; /* closing_sk's baseline, as a slot's (sock_drops) */
	__u32 closing_qlen;  /* and its SYN-queue length (sock_qlen) */
	__u64 accept_errors[LW_AERR_MAX];
	__u64 closed_at;   /* ns, CLOCK_MONOTONIC: when the last socket closed; 0 while open */
	__u32 backlog;     /* sk_max_ack_backlog: the effective backlog */
	__u32 req_backlog; /* the backlog listen() asked for; 0 if unknown */
	/* Drop records: sent in the current one-second window, and the drops
	 * not sent as records (over the rate limit, or the ring buffer full),
	 * by reason. Records' counts + drops_unreported == drops, exactly. */
	__u32 drop_window_sent;
	__u64 drop_window; /* the window: CLOCK_MONOTONIC seconds */
	__u64 drops_unreported[LW_DROP_MAX];

	/* The accept program's: written and read per accept. */
	__u64 accepted; /* children returned by accept() */
	__u32 pid;      /* process that called listen() or accept() */
	/* Processes that called listen() or accept() on it (tgids, 0: free),
	 * the oldest replaced when full: workers of a pre-fork server, every
	 * process of an SO_REUSEPORT group. */
	__u32 owners[LW_OWNERS_MAX];
	__u32 owner_next; /* the slot replaced next when all are taken */
	char comm[16];
};

/* The same, for a socket of a group larger than LW_GROUP_MAX (no slot):
 * kept in lw_socks, keyed by the socket's address. */
struct lw_sock {
	__u32 last_drops; /* sk_drops at the last SYN or drop seen */
	__u32 last_qlen;  /* SYN-queue length at the last SYN seen */
};

/* Per-connection timeline kept in the kernel between handshake and accept. */
struct lw_conn {
	__u64 t_synack; /* ns, CLOCK_MONOTONIC, SYN-ACK sent; 0 when unknown */
	__u64 t_est;    /* ns, handshake complete */
	struct lw_listener_key listener;
	__u32 flags;
	__u32 ackq; /* accept-queue length with this child queued; 0 if unknown */
};

/* A slot of the join array: one cache line. sk: the child it holds (its
 * struct sock address), 0 when free; busy: 1 while a program reads or
 * writes the slot, taken and released with atomic operations. */
struct lw_conn_slot {
	__u64 sk;
	__u32 busy;
	__u32 pad;
	struct lw_conn conn;
};

enum lw_flag {
	LW_F_SYN_EXACT = 1 << 0,     /* t_synack from req->snt_synack */
	LW_F_SYN_SRTT = 1 << 1,      /* t_synack = t_est - srtt/8 (no retransmit) */
	LW_F_SYN_RTO = 1 << 2,       /* t_synack = t_est - total_rto_time (ms precision) */
	LW_F_COOKIE = 1 << 3,        /* child made from a SYN cookie: no SYN-ACK time */
	LW_F_HANDSHAKE = 1 << 4,     /* the handshake stage was seen: t_est valid */
	LW_F_NO_LISTENER = 1 << 5,   /* listener identity could not be resolved */
};

/* One record per accepted connection (LW_K_ACCEPT), or per refused attempt
 * (LW_K_DROP, rate-limited per listener). The client address is carried for
 * trace and tests, never used as a metric label. */
struct lw_event {
	__u64 t_synack; /* ns, CLOCK_MONOTONIC, SYN-ACK sent; 0 when unknown */
	__u64 t_est;    /* 0 when the handshake stage was not seen */
	__u64 t_acc;
	struct lw_listener_key listener;
	__u8 raddr[16]; /* client address, 4 bytes used for AF_INET */
	__u32 flags;
	__u32 pid;
	__u32 ackq;  /* accept-queue length when the child was queued (drop: at the drop); 0 if unknown */
	__u16 rport; /* client port, host order; 0 when unknown */
	__u8 kind;   /* enum lw_kind */
	__u8 reason; /* drop: enum lw_drop */
	__u32 count; /* drop: drops this record stands for (several at once on one socket) */
};

/* One listening socket found by the seed iterator, written to the
 * iterator's seq file: the listeners that predate the agent, with the same
 * fields new ones get from listen(). */
struct lw_seed {
	struct lw_listener_key key;
	__u64 ino;     /* the socket's inode: its owner is the process holding it */
	__u64 sk;      /* the socket (struct sock *), for the group's slots */
	__u32 backlog; /* sk_max_ack_backlog */
	__u32 drops;   /* sk_drops: the slot's baseline */
};

/* Global counters (per-CPU array), summed by the exporter. */
enum lw_counter {
	LW_C_RINGBUF_LOST = 0,        /* bpf_ringbuf_reserve failed: event lost */
	LW_C_UNATTRIBUTED_SYN,        /* SYN whose listener is not in the registry */
	LW_C_UNATTRIBUTED_HANDSHAKE,
	LW_C_UNATTRIBUTED_ACCEPT,
	LW_C_MAX,
};

#endif
