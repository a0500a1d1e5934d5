// Package deploy holds the Kubernetes manifests (a kustomize base and two
// Prometheus Operator variants); its test renders them with kustomize's
// own library, as `kubectl apply -k` does, and decodes every object
// strictly into the API's Go types.
package deploy

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/listenwatch/listenwatch/loader"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// render runs kustomize on a directory and returns its objects as YAML.
func render(t *testing.T, dir string) [][]byte {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	var out [][]byte
	for _, r := range rm.Resources() {
		b, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// strict decodes YAML into v as the API server's strict field validation
// does (case-sensitive; unknown and duplicate fields are errors): a typo
// such as readOnlyRootFileSystem would otherwise be dropped without a word.
// encoding/json would not do: it matches field names case-insensitively.
func strict(doc []byte, v any) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	serrs, err := kjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(serrs...)
}

// decode returns the typed object for one rendered document.
func decode(t *testing.T, doc []byte) any {
	t.Helper()
	var meta struct{ Kind string }
	if err := yaml.Unmarshal(doc, &meta); err != nil {
		t.Fatal(err)
	}
	var v any
	switch meta.Kind {
	case "DaemonSet":
		v = &appsv1.DaemonSet{}
	case "ServiceAccount":
		v = &corev1.ServiceAccount{}
	case "Service":
		v = &corev1.Service{}
	case "Namespace":
		v = &corev1.Namespace{}
	case "ServiceMonitor":
		v = &monitoringv1.ServiceMonitor{}
	case "PodMonitor":
		v = &monitoringv1.PodMonitor{}
	default:
		t.Fatalf("no Go type for kind %q: add it to this test", meta.Kind)
	}
	if err := strict(doc, v); err != nil {
		t.Fatalf("%s does not decode strictly: %v\n%s", meta.Kind, err, doc)
	}
	return v
}

func TestManifestsDecodeStrictly(t *testing.T) {
	for dir, kinds := range map[string][]string{
		".":              {"DaemonSet", "Namespace", "Service", "ServiceAccount"},
		"servicemonitor": {"DaemonSet", "Namespace", "Service", "ServiceAccount", "ServiceMonitor"},
		"podmonitor":     {"DaemonSet", "Namespace", "PodMonitor", "Service", "ServiceAccount"},
	} {
		var got []string
		for _, doc := range render(t, dir) {
			v := decode(t, doc)
			got = append(got, strings.TrimPrefix(fmt.Sprintf("%T", v), "*"))
		}
		var short []string
		for _, g := range got {
			short = append(short, g[strings.LastIndexByte(g, '.')+1:])
		}
		slices.Sort(short)
		if !slices.Equal(short, kinds) {
			t.Errorf("%s renders %v, want %v", dir, short, kinds)
		}
	}
}

// The decoder used above does reject an unknown field.
func TestStrictRejectsUnknownFields(t *testing.T) {
	for _, doc := range []string{
		"apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nautomountServiceAcountToken: false\n",
		"apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nautomountServiceAccountTOKEN: false\n", // case
		"apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\nmetadata: {name: y}\n",                 // duplicate
	} {
		if err := strict([]byte(doc), &corev1.ServiceAccount{}); err == nil {
			t.Errorf("accepted: %q", doc)
		}
	}
}

// TestDaemonSetPrivileges: the capabilities granted are exactly the ones
// TestLeastPrivilege proved (loader.Capabilities), nothing runs privileged,
// and the rest of the hardening is in place.
func TestDaemonSetPrivileges(t *testing.T) {
	var ds *appsv1.DaemonSet
	var sa *corev1.ServiceAccount
	for _, doc := range render(t, ".") {
		switch v := decode(t, doc).(type) {
		case *appsv1.DaemonSet:
			ds = v
		case *corev1.ServiceAccount:
			sa = v
		}
	}
	if ds == nil || sa == nil {
		t.Fatal("no DaemonSet or ServiceAccount in deploy/")
	}
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	var want, add []string
	for _, cp := range loader.Capabilities {
		want = append(want, strings.TrimPrefix(cp.Name, "CAP_"))
	}
	for _, a := range sc.Capabilities.Add {
		add = append(add, string(a))
	}
	slices.Sort(want)
	slices.Sort(add)
	if !slices.Equal(add, want) {
		t.Errorf("capabilities added %v, proven set %v", add, want)
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("capabilities dropped %v, want [ALL]", sc.Capabilities.Drop)
	}
	for name, ok := range map[string]bool{
		"not privileged":                 sc.Privileged != nil && !*sc.Privileged,
		"no privilege escalation":        sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation,
		"read-only root filesystem":      sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem,
		"seccomp RuntimeDefault":         pod.SecurityContext.SeccompProfile != nil && pod.SecurityContext.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault,
		"no service account token (pod)": pod.AutomountServiceAccountToken != nil && !*pod.AutomountServiceAccountToken,
		"no service account token (sa)":  sa.AutomountServiceAccountToken != nil && !*sa.AutomountServiceAccountToken,
		"readiness on /healthz":          c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path == "/healthz",
		"memory limit":                   !c.Resources.Limits.Memory().IsZero(),
		"memory request":                 !c.Resources.Requests.Memory().IsZero(),
		"image as make image tags it":    c.Image == imageFromMakefile(t),
	} {
		if !ok {
			t.Errorf("DaemonSet: %s: no", name)
		}
	}
}

// imageFromMakefile is the IMAGE `make image` writes by default.
func imageFromMakefile(t *testing.T) string {
	b, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^IMAGE\s*\?=\s*(\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no IMAGE ?= in the Makefile")
	}
	return string(m[1])
}
