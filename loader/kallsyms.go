package loader

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// errNoSymbol: kallsyms lists addresses, but not this function.
var errNoSymbol = errors.New("no such kernel function")

// symbolRange returns the address of a kernel text symbol and of the next
// text symbol after it: the bounds of the function's code.
func symbolRange(path, name string) (lo, hi uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	lo, hi, err = parseSymbolRange(f, name)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", path, err)
	}
	return lo, hi, nil
}

// parseSymbolRange is symbolRange on the text of /proc/kallsyms.
func parseSymbolRange(r io.Reader, name string) (lo, hi uint64, err error) {
	var addrs []uint64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// "ffffffff81a0b2c0 T tcp_rcv_state_process"
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) < 3 || (fields[1] != "t" && fields[1] != "T") {
			continue
		}
		a, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil {
			continue
		}
		// A module's symbols carry its name: "... t tcp_v6_rcv [ipv6]".
		if fields[2] == name && (len(fields) == 3 || len(fields) == 4 && strings.HasPrefix(fields[3], "[")) {
			lo = a
		}
		addrs = append(addrs, a)
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if lo == 0 {
		if len(addrs) == 0 || slices.Max(addrs) == 0 {
			return 0, 0, fmt.Errorf("no address for %s (kernel.kptr_restrict hides addresses from this user?)", name)
		}
		return 0, 0, fmt.Errorf("%w: %s", errNoSymbol, name)
	}
	for _, a := range addrs {
		if a > lo && (hi == 0 || a < hi) {
			hi = a
		}
	}
	if hi == 0 {
		return 0, 0, fmt.Errorf("no symbol after %s", name)
	}
	return lo, hi, nil
}
