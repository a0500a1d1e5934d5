/* arm64: every read of a saved register, in one place (the x86-64 twin is
 * arch_x86.h). bpf/vmlinux.h is x86-64's: pt_regs is declared here in
 * arm64's layout under a CO-RE flavor name (the ___lw_arm64 suffix is
 * dropped when fields are matched against the running kernel's BTF), and
 * user_pt_regs, which libbpf's PT_REGS_PARM macros read on arm64 and
 * x86's BTF lacks, is declared as the kernel's UAPI has it. */
#ifndef LW_ARCH_ARM64_H
#define LW_ARCH_ARM64_H

struct user_pt_regs {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
};

struct pt_regs___lw_arm64 {
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
	__u64 orig_x0;
	__s32 syscallno;
} __attribute__((preserve_access_index));

/* listen(2)'s number in the generic syscall table arm64 uses. */
#define LW_NR_LISTEN 201
#define LW_SYSCALL_NR(regs) (((struct pt_regs___lw_arm64 *)(regs))->syscallno)
/* x0 is overwritten by the return value: at syscall exit the first
 * argument survives only in orig_x0. */
#define LW_SYSCALL_ARG1(regs) (((struct pt_regs___lw_arm64 *)(regs))->orig_x0)
#define LW_SYSCALL_ARG2(regs) (((struct pt_regs___lw_arm64 *)(regs))->regs[1])

#define KP_PARM6(ctx) (((struct user_pt_regs *)(ctx))->regs[5])

#endif
