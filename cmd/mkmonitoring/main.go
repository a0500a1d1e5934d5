// Command mkmonitoring writes the dashboard and the rules that
// package monitoring defines under deploy/ (make dashboards).
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/listenwatch/listenwatch/monitoring"
)

func main() {
	root := "."
	if len(os.Args) > 2 {
		fmt.Fprintln(os.Stderr, "usage: mkmonitoring [repository root]")
		os.Exit(2)
	}
	if len(os.Args) == 2 {
		root = os.Args[1]
	}
	files, err := monitoring.Files()
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkmonitoring: %v\n", err)
		os.Exit(1)
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "mkmonitoring: %v\n", err)
			os.Exit(1)
		}
		if err := os.WriteFile(full, files[p], 0o644); err != nil {
			fmt.Fprintf(os.Stderr, "mkmonitoring: %v\n", err)
			os.Exit(1)
		}
		fmt.Println(p)
	}
}
