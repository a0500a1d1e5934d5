package integration

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestImage builds the image as `make image` does (amd64 only, to save a
// cross build), checks its config (entrypoint, OCI labels), unpacks its
// layer into a root directory and runs the binary from there: it must
// attach and serve metrics.
func TestImage(t *testing.T) {
	needGo(t)
	dir := t.TempDir()
	archive := filepath.Join(dir, "image.tar")
	cmd := exec.Command("go", "run", "./cmd/mkimage", "-arch", "amd64", "-o", archive,
		"-name", "localhost/listenwatch:test", "-version", "v0.0.0-test", "-revision", "abc123", "-created", "2026-01-02T03:04:05Z")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v: %s", err, out)
	}
	blobs := readArchive(t, archive)
	// index.json names one image index; it lists the platforms.
	type indexJSON struct {
		Manifests []struct {
			MediaType   string            `json:"mediaType"`
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
			Platform    struct{ Architecture string }
		} `json:"manifests"`
	}
	var top, index indexJSON
	mustJSON(t, blobs["index.json"], &top)
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != "application/vnd.oci.image.index.v1+json" ||
		top.Manifests[0].Annotations["io.containerd.image.name"] != "localhost/listenwatch:test" {
		t.Fatalf("index.json: %s", blobs["index.json"])
	}
	mustJSON(t, blob(t, blobs, top.Manifests[0].Digest), &index)
	if len(index.Manifests) != 1 || index.Manifests[0].Platform.Architecture != "amd64" {
		t.Fatalf("image index: %+v", index)
	}
	var manifest struct {
		Config struct{ Digest string }
		Layers []struct{ Digest string }
	}
	mustJSON(t, blob(t, blobs, index.Manifests[0].Digest), &manifest)
	var config struct {
		Architecture string
		Config       struct {
			Entrypoint, Cmd []string
			Labels          map[string]string
		}
	}
	mustJSON(t, blob(t, blobs, manifest.Config.Digest), &config)
	if strings.Join(config.Config.Entrypoint, " ") != "/listenwatch" || strings.Join(config.Config.Cmd, " ") != "run" {
		t.Errorf("entrypoint %v cmd %v, want /listenwatch run", config.Config.Entrypoint, config.Config.Cmd)
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.version":  "v0.0.0-test",
		"org.opencontainers.image.revision": "abc123",
		"org.opencontainers.image.source":   "https://github.com/listenwatch/listenwatch",
		"org.opencontainers.image.created":  "2026-01-02T03:04:05Z",
	} {
		if got := config.Config.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}

	// Unpack the only layer: a FROM scratch image is one file.
	root := filepath.Join(dir, "rootfs")
	if len(manifest.Layers) != 1 {
		t.Fatalf("%d layers, want 1", len(manifest.Layers))
	}
	zr, err := gzip.NewReader(strings.NewReader(string(blob(t, blobs, manifest.Layers[0].Digest))))
	if err != nil {
		t.Fatal(err)
	}
	files := untar(t, zr)
	if len(files) != 1 || files["listenwatch"] == nil {
		t.Fatalf("layer holds %d files, want only listenwatch", len(files))
	}
	os.MkdirAll(root, 0o755)
	bin := filepath.Join(root, "listenwatch")
	if err := os.WriteFile(bin, files["listenwatch"], 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "version").CombinedOutput(); err != nil || !strings.Contains(string(out), "version v0.0.0-test (revision: abc123)") {
		t.Errorf("listenwatch version from the image: %v: %s", err, out)
	}

	addr := startAgent(t, bin)
	eventually(t, settle, func() (bool, string) {
		body, err := get("http://" + addr + "/metrics")
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(body, `listenwatch_hook_info{mode="`) && strings.Contains(body, "listenwatch_listener_syns_received_total"),
			"no hook_info or listener series in the image's agent metrics"
	})
	if body, err := get("http://" + addr + "/healthz"); err != nil || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz: %q %v", body, err)
	}
}

func get(url string) (string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}

func readArchive(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return untar(t, f)
}

func untar(t *testing.T, r io.Reader) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = b
	}
}

func blob(t *testing.T, blobs map[string][]byte, digest string) []byte {
	t.Helper()
	b, ok := blobs["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
	if !ok {
		t.Fatalf("blob %s missing from the archive", digest)
	}
	return b
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
}
