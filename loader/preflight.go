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

// ErrPrivileges means the process cannot load BPF programs.
var ErrPrivileges = errors.New("missing privileges: " + privilegeAdvice)

// privilegeAdvice is the one wording of what loading BPF needs.
const privilegeAdvice = "run as root, or with CAP_BPF and CAP_PERFMON (and CAP_SYS_RESOURCE on kernels before 5.11)"

// CheckBTF fails, in one line, when path (normally BTFPath) is missing.
func CheckBTF(path string) error {
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%w (%s missing)", ErrNoBTF, path)
	}
	return nil
}

// CheckPrivileges fails, in one line, when the capabilities in status (the
// text of /proc/self/status) cannot load BPF. Unreadable input is not a
// verdict: the loader then reports the kernel's own refusal.
func CheckPrivileges(status string) error {
	const capSysAdmin, capPerfmon, capBPF = 21, 38, 39
	for _, line := range strings.Split(status, "\n") {
		hex, ok := strings.CutPrefix(line, "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return nil
		}
		has := func(c uint) bool { return caps&(1<<c) != 0 }
		if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) {
			return nil
		}
		return ErrPrivileges
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
