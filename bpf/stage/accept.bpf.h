/* Accept: accept() returns the child, or fails for want of a descriptor. */
#ifndef LW_STAGE_ACCEPT_H
#define LW_STAGE_ACCEPT_H

static __always_inline void accepted(const struct sock *child, const struct sock *listener)
{
	struct lw_event *e = bpf_ringbuf_reserve(&lw_events, sizeof(*e), 0);
	struct lw_conn c;
	struct lw_listener_key k;
	__u64 t_synack = 0, t_est = 0;
	__u32 flags = 0, ackq = 0;

	/* The child's identity, as plain loads where the kernel allows. */
	__u32 hash, daddr;
	__u16 family, rport;
	if (cfg_rdonly_cast) {
		const struct sock *ch = RDONLY(struct sock, child);
		hash = ch->__sk_common.skc_hash;
		family = ch->__sk_common.skc_family;
		daddr = ch->__sk_common.skc_daddr;
		rport = ch->__sk_common.skc_dport;
	} else {
		hash = BPF_CORE_READ(child, __sk_common.skc_hash);
		family = BPF_CORE_READ(child, __sk_common.skc_family);
		daddr = BPF_CORE_READ(child, __sk_common.skc_daddr);
		rport = BPF_CORE_READ(child, __sk_common.skc_dport);
	}
	/* The task's own field: a load where the JIT inlines the current
	 * task (6.18 on x86-64), where bpf_get_current_pid_tgid is a call. */
	__u32 tgid = bpf_get_current_task_btf()->tgid;

	if (conn_take((__u64)child, hash, &c)) {
		k = c.listener;
		t_synack = c.t_synack;
		t_est = c.t_est;
		flags = c.flags;
		ackq = c.ackq;
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
		add_owner(st, tgid);
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
	if (family == AF_INET)
		__builtin_memcpy(e->raddr, &daddr, 4);
	else
		BPF_CORE_READ_INTO(&e->raddr, child, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	e->rport = bpf_ntohs(rport);
	e->flags = flags;
	e->pid = tgid;
	e->ackq = ackq;
	e->kind = LW_K_ACCEPT;
	e->reason = 0;
	e->count = 1;
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
	if (cfg_rdonly_cast) {
		/* The verifier allows no variable index into the fd array: its
		 * slot is read as a struct that is exactly one pointer (a plain
		 * load, where the helper costs ~150 ns here). */
		f = (struct file *)RDONLY(struct llist_node, &fds[fd])->next;
	} else {
		bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	}
	if (!f)
		return NULL;
	const struct sock *sk;
	__u16 proto;
	/* Only stream sockets are accepted; of those only inet ones carry
	 * these protocol numbers. */
	if (cfg_rdonly_cast) {
		const struct socket *so = RDONLY(struct socket, RDONLY(struct file, f)->private_data);
		if (!so || so->file != f)
			return NULL;
		sk = so->sk;
		if (!sk)
			return NULL;
		proto = sk->sk_protocol;
		if (bpf_core_type_exists(struct mptcp_sock) && proto == IPPROTO_MPTCP) {
			sk = RDONLY(struct mptcp_sock, sk)->first;
			if (!sk)
				return NULL;
			proto = sk->sk_protocol;
		}
	} else {
		struct socket *so = BPF_CORE_READ(f, private_data);
		if (!so || BPF_CORE_READ(so, file) != f)
			return NULL;
		sk = BPF_CORE_READ(so, sk);
		if (!sk)
			return NULL;
		proto = BPF_CORE_READ(sk, sk_protocol);
		if (bpf_core_type_exists(struct mptcp_sock) && proto == IPPROTO_MPTCP) {
			sk = BPF_CORE_READ((struct mptcp_sock *)sk, first);
			if (!sk)
				return NULL;
			proto = BPF_CORE_READ(sk, sk_protocol);
		}
	}
	return proto == IPPROTO_TCP ? sk : NULL;
}

#define EMFILE 24
#define ENFILE 23

/* accept() returned err < 0. For want of a file descriptor (EMFILE,
 * ENFILE) the connection stays in the queue: counted per listener. The
 * listening fd is the syscall's first argument, still in the saved user
 * registers. */
static __always_inline void accept_failed(int err)
{
	if (err != -EMFILE && err != -ENFILE)
		return;
	__u32 which = err == -EMFILE ? LW_AERR_EMFILE : LW_AERR_ENFILE;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return;
	const struct sock *sk = sock_of_fd(LW_SYSCALL_ARG1(regs));
	if (!sk)
		return;
	struct lw_listener_key k;
	key_from_sk(&k, sk);
	struct lw_listener_stats *st = listener_entry(&k);
	if (st)
		__sync_fetch_and_add(&st->accept_errors[which], 1);
}

static __always_inline int on_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret < 0) {
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

/* fentry/kprobe mode, accept failures: __sys_accept4 serves accept(2) and
 * accept4(2) and returns the new fd or the error (EMFILE from
 * get_unused_fd_flags, ENFILE from the file allocation). Hooking it instead
 * of the syscall tracepoints spares every other syscall on the node the
 * kernel's slow syscall path, which any syscall tracepoint turns on for
 * every thread. The return is an int: the upper half of the register is
 * not part of it. */
SEC("fexit/__sys_accept4")
int lw_fexit_accept_err(__u64 *ctx)
{
	__u64 ret = 0;
	if (bpf_get_func_ret(ctx, &ret) == 0)
		accept_failed((int)ret);
	return 0;
}

SEC("kretprobe/__sys_accept4")
int BPF_KRETPROBE(lw_krp_accept_err, long ret)
{
	accept_failed((int)ret);
	return 0;
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

/* kprobe mode: accept() grafts the child onto its new struct socket
 * (sock_graft, inet_accept), and sock_graft calls security_sock_graft with
 * bottom halves disabled (inside write_lock_bh). A kprobe there runs where
 * no softirq can interrupt it. The pair on inet_csk_accept below runs in
 * process context with bottom halves enabled, and the kernel drops every
 * kprobe hit on a CPU while one of its handlers runs there: packets
 * handled by a softirq that interrupted the accept programs lost their
 * SYN and handshake probes (TestPacketsOnIdleCPUs). No listener here: the
 * join has it, else the child's own address and port. An MPTCP socket is
 * unwrapped to its first subflow, the TCP socket the other hooks saw. */
SEC("kprobe/security_sock_graft")
int BPF_KPROBE(lw_kp_graft, struct sock *sk)
{
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	if (bpf_core_type_exists(struct mptcp_sock) && proto == IPPROTO_MPTCP) {
		sk = BPF_CORE_READ((struct mptcp_sock *)sk, first);
		if (!sk)
			return 0;
		proto = BPF_CORE_READ(sk, sk_protocol);
	}
	if (proto != IPPROTO_TCP)
		return 0;
	accepted(sk, NULL);
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

#endif
