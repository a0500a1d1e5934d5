package monitoring

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const root = ".."

// TestCommittedFilesAreGenerated: deploy/ holds exactly what
// cmd/mkmonitoring writes (run make dashboards after editing this package).
func TestCommittedFilesAreGenerated(t *testing.T) {
	files, err := Files()
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range files {
		got, err := os.ReadFile(filepath.Join(root, path))
		if err != nil {
			t.Errorf("%s: %v (run make dashboards)", path, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what cmd/mkmonitoring generates: run make dashboards and commit", path)
		}
	}
}

// strict decodes YAML as the API server would: unknown or duplicate
// fields fail.
func strict(t *testing.T, y []byte, v any) {
	t.Helper()
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	strictErrs, err := sigsjson.UnmarshalStrict(j, v)
	if err != nil || len(strictErrs) > 0 {
		t.Fatalf("decode: %v %v", err, strictErrs)
	}
}

// TestPrometheusRuleIsTheRulesFile: the PrometheusRule's groups are the
// plain rules file's, field by field, read back from the committed files.
func TestPrometheusRuleIsTheRulesFile(t *testing.T) {
	plain, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/listenwatch.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var rf RuleFile
	strict(t, plain, &rf)
	var pr monitoringv1.PrometheusRule
	strict(t, manifest, &pr)
	if pr.Kind != "PrometheusRule" || pr.APIVersion != "monitoring.coreos.com/v1" {
		t.Fatalf("kind %s/%s", pr.APIVersion, pr.Kind)
	}
	var back RuleFile
	for _, g := range pr.Spec.Groups {
		bg := Group{Name: g.Name}
		for _, r := range g.Rules {
			br := Rule{Record: r.Record, Alert: r.Alert, Expr: r.Expr.String(), Labels: r.Labels, Annotations: r.Annotations}
			if r.For != nil {
				br.For = string(*r.For)
			}
			bg.Rules = append(bg.Rules, br)
		}
		back.Groups = append(back.Groups, bg)
	}
	if !reflect.DeepEqual(rf, back) {
		t.Fatalf("the PrometheusRule and the rules file differ:\n%+v\n%+v", rf, back)
	}
	if len(rf.Groups) != 2 || len(rf.Groups[1].Rules) < 8 {
		t.Fatalf("want recording and alerting groups with at least 8 alerts: %+v", rf.Groups)
	}
}

var heading = regexp.MustCompile(`(?m)^#{1,6} +(.+?) *$`)

// slug is GitHub's anchor for a heading: lower case, spaces to dashes,
// punctuation other than - and _ dropped.
func slug(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		}
	}
	return b.String()
}

// TestRunbookAnchors: every alert has severity, summary, description and
// a runbook_url pointing at a section of docs/oncall.md that exists, and
// names the listener, the pod (per-listener alerts) and a knob.
func TestRunbookAnchors(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(root, "docs/oncall.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, m := range heading.FindAllStringSubmatch(string(doc), -1) {
		anchors[slug(m[1])] = true
	}
	alerts := 0
	for _, g := range Rules().Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			u := r.Annotations["runbook_url"]
			base, anchor, ok := strings.Cut(u, "#")
			if !ok || base != RunbookBase || !anchors[anchor] {
				t.Errorf("%s: runbook_url %q: no section with that anchor in docs/oncall.md", r.Alert, u)
			}
			if r.Labels["severity"] != "warning" && r.Labels["severity"] != "critical" {
				t.Errorf("%s: severity %q", r.Alert, r.Labels["severity"])
			}
			if r.For == "" {
				t.Errorf("%s: no for: it would fire on one evaluation", r.Alert)
			}
			d := r.Annotations["description"]
			if r.Annotations["summary"] == "" || !strings.Contains(d, "Knob:") || !strings.Contains(d, "{{ $labels.instance }}") {
				t.Errorf("%s: summary and description must name the node and a knob: %q", r.Alert, d)
			}
			if strings.Contains(r.Expr, "netns") && (!strings.Contains(d, "$labels.pod") || !strings.Contains(d, "$labels.port")) {
				t.Errorf("%s: a per-listener alert must name the listener and the pod: %q", r.Alert, d)
			}
		}
	}
	if alerts < 8 {
		t.Fatalf("%d alerts", alerts)
	}
}

// TestDashboard: the variables a user on 1 or 1,000 nodes needs, every
// panel described, rates over $__rate_interval, every query filtered by
// the variables, rows in the order of the on-call questions.
func TestDashboard(t *testing.T) {
	b, err := DashboardJSON()
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Type        string `json:"type"`
			Title       string `json:"title"`
			Description string `json:"description"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
	}
	if want := []string{"datasource", "cluster", "job", "instance", "namespace", "pod", "listener"}; !reflect.DeepEqual(vars, want) {
		t.Errorf("variables %v, want %v", vars, want)
	}
	var rows []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			rows = append(rows, p.Title)
			continue
		}
		if len(p.Description) < 40 || !strings.Contains(p.Description, "Bad") {
			t.Errorf("panel %q: its description must say what it shows and when it is bad: %q", p.Title, p.Description)
		}
	}
	if want := []string{"Overview", "Latency", "Queues", "Drops and defences", "Diagnosis", "Agent"}; !reflect.DeepEqual(rows, want) {
		t.Errorf("rows %v, want %v", rows, want)
	}
	panels, err := Panels(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range panels {
		if len(p.Queries) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Queries {
			if strings.Contains(q, "rate(") && !strings.Contains(q, "[$__rate_interval]") {
				t.Errorf("panel %q: a rate not over $__rate_interval: %s", p.Title, q)
			}
			if !strings.Contains(q, `instance=~"$instance"`) {
				t.Errorf("panel %q: a query not filtered by the node: %s", p.Title, q)
			}
		}
	}
}
