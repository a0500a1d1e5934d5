package main

import (
	"io"
	"strings"
	"testing"
)

// FuzzParseArgs: any command line is accepted or refused with one line.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{"run", "run --hook-mode=kprobe", "run --disable-stage=syn,accept",
		"run --ringbuf-size=4096", "run --metrics-addr=:0 --diagnosis-interval=2s", "frob", "run --path.procfs=/proc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		_, err := parseArgs(strings.Fields(line), io.Discard)
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("%q: error is not one line: %q", line, err)
		}
	})
}
