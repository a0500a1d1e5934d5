/* Seed: the listeners that existed before the agent started. The loader
 * opens this iterator inside each network namespace (iter/tcp walks the
 * sockets of the namespace that opens it) and registers what it reads. */
#ifndef LW_STAGE_SEED_H
#define LW_STAGE_SEED_H

SEC("iter/tcp")
int lw_iter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc || skc->skc_state != TCP_LISTEN)
		return 0;
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	const struct sock *sk = (const struct sock *)tp;
	struct lw_seed rec;
	__builtin_memset(&rec, 0, sizeof(rec)); /* padding too: all of it is written out */
	key_from_btf_sk(&rec.key, sk);
	rec.backlog = sk->sk_max_ack_backlog;
	rec.ino = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
	rec.sk = (__u64)sk;
	/* Its drop count from here on is followed like a new socket's: the
	 * loader writes it as the baseline of the socket's slot; a socket
	 * beyond the group's slots has it here. */
	rec.drops = sk->sk_drops.counter;
	struct lw_sock init = { .last_drops = rec.drops };
	bpf_map_update_elem(&lw_socks, &rec.sk, &init, BPF_NOEXIST);
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

#endif
