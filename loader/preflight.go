package loader

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// BTFPath is where the kernel describes its own types; without it no
// CO-RE program can load.
const BTFPath = "/sys/kernel/btf/vmlinux"

// ErrNoBTF means the kernel does not describe its own types: CO-RE cannot work.
var ErrNoBTF = errors.New("kernel has no BTF: listenwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8+; most distributions since 2021)")

// ErrPrivileges means the process lacks a capability the agent needs.
var ErrPrivileges = errors.New("missing privileges")

// privilegeAdvice is the one wording of what the agent needs.
const privilegeAdvice = "run as root, or with the capabilities of deploy/ (CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_SYSLOG)"

// Capability is one Linux capability the agent needs, and why.
type Capability struct {
	Bit  uint
	Name string
	Why  string
}

// Capabilities is the exact set the agent needs, found by experiment
// (integration TestLeastPrivilege runs the agent with exactly this set,
// then with each one removed). CAP_BPF and CAP_PERFMON are not in it:
// CAP_SYS_ADMIN, needed for setns anyway, already allows everything they
// do (the kernel's bpf_capable() and perfmon_capable()).
var Capabilities = []Capability{
	{21, "CAP_SYS_ADMIN", "load and attach BPF programs, enter every network namespace (existing listeners, sysctls for the diagnosis) and mount tracefs when the host has not"},
	{19, "CAP_SYS_PTRACE", "count the open file descriptors of processes that own listeners (EMFILE diagnosis) and find their network namespaces"},
	{2, "CAP_DAC_READ_SEARCH", "read /proc/<pid>/fd of owners running as other users"},
	{34, "CAP_SYSLOG", "read kernel symbol addresses in /proc/kallsyms, which place the SYN hook in tracepoint mode"},
}

// CheckPrivileges fails, in one line naming every missing capability and
// what it is for, when the capabilities in status (the text of
// /proc/self/status) are not all of Capabilities. Unreadable input is not
// a verdict: the loader then reports the kernel's own refusal.
func CheckPrivileges(status string) error {
	for _, line := range strings.Split(status, "\n") {
		hex, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return nil
		}
		var missing []string
		for _, c := range Capabilities {
			if caps&(1<<c.Bit) == 0 {
				missing = append(missing, c.Name+" (to "+c.Why+")")
			}
		}
		if len(missing) == 0 {
			return nil
		}
		return fmt.Errorf("%w: %s; %s", ErrPrivileges, strings.Join(missing, ", "), privilegeAdvice)
	}
	return nil
}

// CheckBTF fails, in one line, when path (normally BTFPath) is missing.
func CheckBTF(path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%w (%s missing)", ErrNoBTF, path)
	}
	return nil
}

// privilegeHint adds the advice to a kernel refusal that looks like one of
// privileges.
func privilegeHint(err error) string {
	if errors.Is(err, os.ErrPermission) && os.Geteuid() != 0 {
		return " (" + privilegeAdvice + ")"
	}
	return ""
}

// KernelRelease is uname -r, or "unknown".
func KernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
