package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/listenwatch/listenwatch/loader"
)

// Set at link time by the Makefile (-X main.version=... etc.); a plain
// `go build` falls back to what the Go toolchain recorded.
var (
	version   = "dev"
	commit    = ""
	buildDate = ""
)

func buildInfo() (ver, rev, date string) {
	ver, rev, date = version, commit, buildDate
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if rev == "" {
					rev = s.Value
				}
			case "vcs.time":
				if date == "" {
					date = s.Value
				}
			}
		}
	}
	return ver, rev, date
}

// printVersion is `listenwatch version`: what a bug report needs, like
// node_exporter's --version, plus what the kernel offers.
func printVersion(w io.Writer) {
	ver, rev, date := buildInfo()
	fmt.Fprintf(w, "listenwatch, version %s (revision: %s)\n", ver, orUnknown(rev))
	fmt.Fprintf(w, "  build date:  %s\n", orUnknown(date))
	fmt.Fprintf(w, "  go version:  %s\n", runtime.Version())
	fmt.Fprintf(w, "  platform:    %s/%s\n", runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "  kernel:      %s\n", loader.KernelRelease())
	if err := loader.CheckBTF(loader.BTFPath); err != nil {
		fmt.Fprintf(w, "  BTF:         no (%v)\n", err)
	} else {
		fmt.Fprintf(w, "  BTF:         %s\n", loader.BTFPath)
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
