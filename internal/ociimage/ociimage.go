// Package ociimage writes a single-layer OCI image archive (an OCI layout
// in a tar, as `ctr images import` and skopeo read it) from files given in
// memory: enough for a static binary FROM scratch, with no daemon, no
// registry and no builder installed. Output is deterministic: the same
// inputs give the same digests.
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"
)

// File is one file of the image's only layer.
type File struct {
	Path string // without a leading slash: "listenwatch"
	Mode int64
	Data []byte
}

// Image describes what to write.
type Image struct {
	Name       string // e.g. localhost/listenwatch:dev (the index's ref annotation)
	Arch       string // GOARCH: amd64, arm64
	Entrypoint []string
	Cmd        []string
	User       string            // "" for root
	Labels     map[string]string // OCI labels (org.opencontainers.image.*)
	Files      []File
	Created    time.Time // fixed by the caller for reproducible digests
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// layer returns the gzipped layer tar and the digest of the uncompressed
// tar (the config's diff_id).
func layer(files []File, mtime time.Time) (gz []byte, diffID string, err error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	files = append([]File(nil), files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		h := &tar.Header{Name: f.Path, Mode: f.Mode, Size: int64(len(f.Data)), ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestSpeed)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return z.Bytes(), digest(raw.Bytes()), nil
}

// Write writes an OCI layout archive to w holding one image per platform
// (amd64 and arm64 of the same program) under one name.
func Write(w io.Writer, imgs ...Image) error {
	if len(imgs) == 0 {
		return fmt.Errorf("ociimage: no image")
	}
	tw := tar.NewWriter(w)
	created := imgs[0].Created.UTC()
	put := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), ModTime: created, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	blob := func(b []byte) string { return "blobs/sha256/" + digest(b)[len("sha256:"):] }
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	var manifests []descriptor
	for _, img := range imgs {
		if img.Arch == "" || img.Name == "" || img.Name != imgs[0].Name {
			return fmt.Errorf("ociimage: every image needs an arch and the same name")
		}
		gz, diffID, err := layer(img.Files, created)
		if err != nil {
			return fmt.Errorf("ociimage: layer: %w", err)
		}
		config, _ := json.Marshal(map[string]any{
			"created":      created.Format(time.RFC3339),
			"architecture": img.Arch,
			"os":           "linux",
			"config": map[string]any{
				"Entrypoint": img.Entrypoint,
				"Cmd":        img.Cmd,
				"User":       img.User,
				"Labels":     img.Labels,
			},
			"rootfs": map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		})
		manifest, _ := json.Marshal(map[string]any{
			"schemaVersion": 2,
			"mediaType":     "application/vnd.oci.image.manifest.v1+json",
			"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(config), Size: int64(len(config))},
			"layers":        []descriptor{{MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: digest(gz), Size: int64(len(gz))}},
			"annotations":   img.Labels,
		})
		for _, b := range [][]byte{gz, config, manifest} {
			if err := put(blob(b), b); err != nil {
				return fmt.Errorf("ociimage: %w", err)
			}
		}
		manifests = append(manifests, descriptor{
			MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest(manifest), Size: int64(len(manifest)),
			Platform: &platform{Architecture: img.Arch, OS: "linux"},
		})
	}
	// One image, many platforms: the platforms' manifests go in an image
	// index blob, and index.json names that one index (a descriptor per
	// platform there would make as many images of one name, and importers
	// that take only their own platform's blobs fail on the others).
	platforms, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
	})
	if err := put(blob(platforms), platforms); err != nil {
		return err
	}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "manifests": []descriptor{{
		MediaType: "application/vnd.oci.image.index.v1+json", Digest: digest(platforms), Size: int64(len(platforms)),
		Annotations: map[string]string{
			"io.containerd.image.name":          imgs[0].Name,
			"org.opencontainers.image.ref.name": imgs[0].Name,
		},
	}}})
	if err := put("index.json", index); err != nil {
		return err
	}
	return tw.Close()
}
