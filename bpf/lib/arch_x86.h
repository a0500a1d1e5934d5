/* x86-64: every read of a saved register, in one place. Another
 * architecture gets a header of its own with the same names. */
#ifndef LW_ARCH_X86_H
#define LW_ARCH_X86_H

/* listen(2)'s syscall number, and the syscall number, first and second
 * arguments as saved at syscall entry (struct pt_regs). */
#define LW_NR_LISTEN 50
#define LW_SYSCALL_NR(regs) ((regs)->orig_ax)
#define LW_SYSCALL_ARG1(regs) ((regs)->di)
#define LW_SYSCALL_ARG2(regs) ((regs)->si)

/* A kprobe's sixth argument, which BPF_KPROBE of this libbpf cannot name. */
#define KP_PARM6(ctx) ((ctx)->r9)

#endif
