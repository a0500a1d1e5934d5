// Command mkimage builds listenwatch's OCI image without a daemon or a
// builder: the static binary for each architecture, FROM scratch, as one
// multi-platform OCI archive (`make image`). Import it with
// `ctr -n k8s.io images import`, copy it with skopeo (oci-archive:).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/listenwatch/listenwatch/internal/ociimage"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := fs.String("o", "bin/listenwatch-image.tar", "OCI archive to write")
	name := fs.String("name", "localhost/listenwatch:dev", "image name (the archive's ref)")
	archs := fs.String("arch", "amd64,arm64", "GOARCH list, comma-separated")
	ver := fs.String("version", "dev", "version (label and binary)")
	rev := fs.String("revision", "", "git revision (label and binary)")
	created := fs.String("created", "", "RFC 3339 creation time (default: the revision's commit time, for reproducible digests)")
	source := fs.String("source", "https://github.com/listenwatch/listenwatch", "org.opencontainers.image.source")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	at := time.Unix(0, 0).UTC()
	if *created != "" {
		t, err := time.Parse(time.RFC3339, *created)
		if err != nil {
			return fmt.Errorf("-created %q: %v", *created, err)
		}
		at = t
	}
	tmp, err := os.MkdirTemp("", "mkimage")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	labels := map[string]string{
		"org.opencontainers.image.title":       "listenwatch",
		"org.opencontainers.image.description": "eBPF tracer of the TCP connection lifecycle on listening sockets: per-listener drops and latencies as Prometheus metrics",
		"org.opencontainers.image.source":      *source,
		"org.opencontainers.image.version":     *ver,
		"org.opencontainers.image.revision":    *rev,
		"org.opencontainers.image.created":     at.Format(time.RFC3339),
		"org.opencontainers.image.licenses":    "Apache-2.0",
	}
	var imgs []ociimage.Image
	for _, arch := range strings.Split(*archs, ",") {
		bin := filepath.Join(tmp, "listenwatch-"+arch)
		ldflags := fmt.Sprintf("-s -w -X main.version=%s -X main.commit=%s -X main.buildDate=%s", *ver, *rev, at.Format(time.RFC3339))
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", bin, "./cmd/listenwatch")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build %s: %w", arch, err)
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			return err
		}
		imgs = append(imgs, ociimage.Image{
			Name: *name, Arch: arch, Created: at, Labels: labels,
			Entrypoint: []string{"/listenwatch"}, Cmd: []string{"run"},
			Files: []ociimage.File{{Path: "listenwatch", Mode: 0o755, Data: data}},
		})
	}
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	if err := ociimage.Write(f, imgs...); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Printf("mkimage: wrote %s (%s, %s)\n", *out, *name, *archs)
	return nil
}
