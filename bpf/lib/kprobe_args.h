/* kprobe mode: an entry probe saves the arguments its return probe needs. */
#ifndef LW_KPROBE_ARGS_H
#define LW_KPROBE_ARGS_H

/* kprobe mode only: arguments saved at entry for the return probe. */
struct kp_args {
	__u64 sk;
	__u64 skb;
	__u64 req;
	__u64 own_req;
};

/* accept() sleeps and may return on another CPU: its entry and return
 * probes meet by thread. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct kp_args);
} lw_kp_args SEC(".maps");

/* tcp_conn_request and tcp_v{4,6}_syn_recv_sock run in softirq only (a
 * listener's packets are never put on a socket backlog), where nothing
 * sleeps, migrates or nests: their entry and return probes meet by CPU,
 * one slot per function. Not by thread: a softirq runs in whatever task
 * it interrupted, on an idle CPU the idle task, whose pid is 0 on every
 * CPU, so two CPUs handling packets from idle took each other's
 * arguments. */
enum kp_slot {
	KP_SLOT_SYN_RECV,
	KP_SLOT_CONN_REQUEST,
	KP_SLOTS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KP_SLOTS);
	__type(key, __u32);
	__type(value, struct kp_args);
} lw_kp_cpu SEC(".maps");

static __always_inline void kp_save_cpu(__u32 slot, __u64 sk, __u64 skb, __u64 req, __u64 own_req)
{
	struct kp_args *a = bpf_map_lookup_elem(&lw_kp_cpu, &slot);
	if (!a)
		return;
	a->sk = sk;
	a->skb = skb;
	a->req = req;
	a->own_req = own_req;
}

/* Takes the slot's arguments and empties it, so that a return probe whose
 * entry run was skipped (or that saved nothing: the v4-mapped case of
 * tcp_v6_syn_recv_sock) never reads an earlier call's. */
static __always_inline int kp_take_cpu(__u32 slot, struct kp_args *out)
{
	struct kp_args *a = bpf_map_lookup_elem(&lw_kp_cpu, &slot);
	if (!a || !a->sk)
		return -1;
	*out = *a;
	a->sk = 0;
	return 0;
}

/* Bit 63 (never set in a pid_tgid) marks accept's entry. */
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

#endif
