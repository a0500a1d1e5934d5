/* kprobe mode: an entry probe saves the arguments its return probe needs. */
#ifndef LW_KPROBE_ARGS_H
#define LW_KPROBE_ARGS_H

/* kprobe mode only: arguments saved at entry for the return probe. */
struct kp_args {
	__u64 sk;
	__u64 req;
	__u64 own_req;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct kp_args);
} lw_kp_args SEC(".maps");

/* Entry and return probe meet by thread. Bit 63 (never set in a pid_tgid)
 * keeps accept apart from a syn_recv_sock run by a softirq on the same
 * thread while it sleeps in accept. */
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
